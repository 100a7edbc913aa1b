#include "core/safetensors.h"

#include <bit>
#include <cmath>
#include <cstring>
#include <limits>
#include <random>
#include <string>
#include <vector>

#include <gtest/gtest.h>

#include "test_util.h"

namespace hanse {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

template <class T>
std::string BytesOf(const std::vector<T>& v) {
  std::string s(v.size() * sizeof(T), '\0');
  if (!v.empty()) std::memcpy(s.data(), v.data(), s.size());
  return s;
}

template <class T>
std::vector<T> ValuesOf(std::span<const std::byte> b) {
  std::vector<T> v(b.size() / sizeof(T));
  if (!v.empty()) std::memcpy(v.data(), b.data(), v.size() * sizeof(T));
  return v;
}

std::string Le64(uint64_t n) {
  std::string s(8, '\0');
  for (int i = 0; i < 8; ++i) s[static_cast<size_t>(i)] = static_cast<char>((n >> (8 * i)) & 0xff);
  return s;
}

// A raw file: length prefix, header text as given, data bytes.
std::string Raw(const std::string& header, const std::string& data) { return Le64(header.size()) + header + data; }

// ---- round trips ----

OwnedTensor SampleTensor(DType dtype) {
  OwnedTensor t;
  t.name = std::string("t.") + DTypeName(dtype);
  t.dtype = dtype;
  t.shape = {2, 3};
  switch (dtype) {
    case DType::kF32:
      t.bytes = BytesOf(std::vector<float>{0.5f, -1.25f, 3e-8f, 1e30f, -0.0f, 7.0f});
      break;
    case DType::kF16:
    case DType::kBF16: {
      std::vector<uint16_t> v;
      for (float f : {0.5f, -1.25f, 2.0f, 100.0f, -0.0f, 7.0f})
        v.push_back(dtype == DType::kF16 ? F32ToF16(f) : F32ToBF16(f));
      t.bytes = BytesOf(v);
      break;
    }
    case DType::kI64:
      t.bytes = BytesOf(std::vector<int64_t>{0, -1, std::numeric_limits<int64_t>::max(),
                                             std::numeric_limits<int64_t>::min(), 42, 1ll << 40});
      break;
    case DType::kI32:
      t.bytes = BytesOf(std::vector<int32_t>{0, -1, std::numeric_limits<int32_t>::max(),
                                             std::numeric_limits<int32_t>::min(), 42, 7});
      break;
  }
  return t;
}

class SafetensorsRoundTrip : public ::testing::TestWithParam<DType> {};

TEST_P(SafetensorsRoundTrip, BytesShapesAndDTypeSurviveMemoryAndFile) {
  std::vector<OwnedTensor> in = {SampleTensor(GetParam())};
  OwnedTensor scalar = SampleTensor(GetParam());
  scalar.name = "scalar";
  scalar.shape = {};
  scalar.bytes.resize(DTypeSize(GetParam()));
  in.push_back(scalar);
  auto bytes = SerializeSafetensors(in, {{"k", "v"}});
  ASSERT_OK(bytes.status());

  TempDir dir;
  ASSERT_OK(WriteSafetensorsFile(dir / "m.safetensors", in, {{"k", "v"}}));
  EXPECT_EQ(testing::ReadFile(dir / "m.safetensors"), *bytes);

  auto from_mem = SafetensorsFile::FromBytes(*bytes);
  ASSERT_OK(from_mem.status());
  auto from_file = SafetensorsFile::Open(dir / "m.safetensors");
  ASSERT_OK(from_file.status());
  for (const SafetensorsFile* f : {from_mem->get(), from_file->get()}) {
    ASSERT_EQ(f->tensors().size(), 2u);
    for (const OwnedTensor& t : in) {
      const TensorInfo* info = f->Find(t.name);
      ASSERT_NE(info, nullptr) << t.name;
      EXPECT_EQ(info->dtype, t.dtype);
      EXPECT_EQ(info->shape, t.shape);
      EXPECT_EQ(info->numel() * DTypeSize(t.dtype), t.bytes.size());
      auto data = f->Data(*info);
      EXPECT_EQ(std::string(reinterpret_cast<const char*>(data.data()), data.size()), t.bytes);
    }
    EXPECT_EQ(f->metadata().at("k"), "v");
    EXPECT_EQ(f->data_offset() % 8, 0u);
  }
}

INSTANTIATE_TEST_SUITE_P(AllDTypes, SafetensorsRoundTrip,
                         ::testing::Values(DType::kF32, DType::kF16, DType::kBF16, DType::kI64, DType::kI32),
                         [](const ::testing::TestParamInfo<DType>& i) { return std::string(DTypeName(i.param)); });

TEST(Safetensors, DTypeNamesParseBack) {
  for (DType d : {DType::kF32, DType::kF16, DType::kBF16, DType::kI64, DType::kI32}) {
    auto p = ParseDType(DTypeName(d));
    ASSERT_OK(p.status());
    EXPECT_EQ(*p, d);
  }
  EXPECT_EQ(ParseDType("F64").status().code(), Code::kInvalidArgument);
  EXPECT_EQ(ParseDType("f32").status().code(), Code::kInvalidArgument);
}

TEST(Safetensors, HeaderIsPaddedWithSpacesAndKeepsOrderAndMetadata) {
  std::vector<OwnedTensor> in = {
      {"z.last_name_first", DType::kF32, {1}, BytesOf(std::vector<float>{1})},
      {"a.second", DType::kI64, {2}, BytesOf(std::vector<int64_t>{1, 2})},
      {"m.empty", DType::kF16, {0, 3}, ""},
      {"b.third", DType::kF16, {3}, BytesOf(std::vector<uint16_t>{1, 2, 3})},
  };
  std::map<std::string, std::string> meta = {{"format", "pt"}, {"note", "tab\there \"quoted\" \xc3\xa9"}};
  auto bytes = SerializeSafetensors(in, meta);
  ASSERT_OK(bytes.status());
  uint64_t n = 0;
  std::memcpy(&n, bytes->data(), 8);  // the test runs on little-endian hosts only
  EXPECT_EQ(n % 8, 0u);
  std::string header = bytes->substr(8, n);
  for (size_t i = header.rfind('}') + 1; i < header.size(); ++i) EXPECT_EQ(header[i], ' ');
  // __metadata__ first, then tensors in the given order with contiguous offsets.
  size_t pm = header.find("\"__metadata__\""), pz = header.find("\"z.last_name_first\""),
         pa = header.find("\"a.second\""), pe = header.find("\"m.empty\""), pb = header.find("\"b.third\"");
  ASSERT_NE(pm, std::string::npos);
  EXPECT_LT(pm, pz);
  EXPECT_LT(pz, pa);
  EXPECT_LT(pa, pe);
  EXPECT_LT(pe, pb);
  EXPECT_NE(header.find("\"data_offsets\":[4,20]"), std::string::npos) << header;
  EXPECT_NE(header.find("\"data_offsets\":[20,20]"), std::string::npos) << header;
  EXPECT_NE(header.find("\"data_offsets\":[20,26]"), std::string::npos) << header;

  auto f = SafetensorsFile::FromBytes(*bytes);
  ASSERT_OK(f.status());
  EXPECT_EQ(f->get()->metadata(), meta);
  // tensors() is in offset order.
  ASSERT_EQ(f->get()->tensors().size(), 4u);
  EXPECT_EQ(f->get()->tensors()[0].name, "z.last_name_first");
  EXPECT_EQ(f->get()->tensors()[3].name, "b.third");
  EXPECT_EQ(f->get()->Find("nope"), nullptr);
  EXPECT_TRUE(f->get()->Data(*f->get()->Find("m.empty")).empty());
}

TEST(Safetensors, EmptyModelRoundTrips) {
  auto bytes = SerializeSafetensors({});
  ASSERT_OK(bytes.status());
  auto f = SafetensorsFile::FromBytes(*bytes);
  ASSERT_OK(f.status());
  EXPECT_TRUE(f->get()->tensors().empty());
}

TEST(SafetensorsWriter, StreamsTensorsInPiecesAcrossBoundaries) {
  std::string out;
  auto sink = [&out](std::span<const std::byte> b) {
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
    return Status::Ok();
  };
  std::vector<float> a = {1, 2, 3};
  std::vector<int32_t> b = {4, 5};
  auto w = SafetensorsWriter::Begin({{"a", DType::kF32, {3}}, {"zero", DType::kI64, {0}}, {"b", DType::kI32, {2}}},
                                    {{"m", "1"}}, sink);
  ASSERT_OK(w.status());
  std::string all = BytesOf(a) + BytesOf(b);
  auto span = std::as_bytes(std::span<const char>(all.data(), all.size()));
  ASSERT_OK((*w)->Write(span.first(5)));
  ASSERT_OK((*w)->Write(span.subspan(5, 10)));  // crosses from "a" over "zero" into "b"
  EXPECT_EQ((*w)->Finish().code(), Code::kFailedPrecondition);
  ASSERT_OK((*w)->Write(span.subspan(15)));
  ASSERT_OK((*w)->Finish());
  EXPECT_EQ(out.size(), (*w)->total_size());
  auto f = SafetensorsFile::FromBytes(out);
  ASSERT_OK(f.status());
  EXPECT_EQ(ValuesOf<float>(f->get()->Data(*f->get()->Find("a"))), a);
  EXPECT_EQ(ValuesOf<int32_t>(f->get()->Data(*f->get()->Find("b"))), b);
}

TEST(SafetensorsWriter, RefusesExtraBytesWithoutPassingThemOn) {
  std::string out;
  auto w = SafetensorsWriter::Begin({{"a", DType::kF32, {1}}}, {}, [&out](std::span<const std::byte> b) {
    out.append(reinterpret_cast<const char*>(b.data()), b.size());
    return Status::Ok();
  });
  ASSERT_OK(w.status());
  size_t header_size = out.size();
  std::string five(5, 'x');
  EXPECT_EQ((*w)->Write(std::as_bytes(std::span<const char>(five.data(), 5))).code(), Code::kInvalidArgument);
  EXPECT_EQ(out.size(), header_size);
}

TEST(SafetensorsWriter, FinishNamesTheIncompleteTensor) {
  auto w = SafetensorsWriter::Begin({{"a", DType::kF32, {1}}, {"b.bias", DType::kF32, {2}}}, {},
                                    [](std::span<const std::byte>) { return Status::Ok(); });
  ASSERT_OK(w.status());
  std::string bytes(8, '\0');
  ASSERT_OK((*w)->Write(std::as_bytes(std::span<const char>(bytes.data(), bytes.size()))));
  Status st = (*w)->Finish();
  EXPECT_EQ(st.code(), Code::kFailedPrecondition);
  EXPECT_NE(st.message().find("'b.bias' received 4 of 8 bytes"), std::string::npos) << st.ToString();
}

TEST(SafetensorsWriter, RefusesBadSpecs) {
  auto ok_sink = [](std::span<const std::byte>) { return Status::Ok(); };
  EXPECT_EQ(SafetensorsWriter::Begin({{"a", DType::kF32, {1}}, {"a", DType::kF32, {1}}}, {}, ok_sink).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(SafetensorsWriter::Begin({{"a", DType::kF32, {-1}}}, {}, ok_sink).status().code(), Code::kInvalidArgument);
  EXPECT_EQ(SafetensorsWriter::Begin({{"__metadata__", DType::kF32, {1}}}, {}, ok_sink).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(SafetensorsWriter::Begin({{"a", DType::kF32, {1ll << 62, 8}}}, {}, ok_sink).status().code(),
            Code::kInvalidArgument);
  EXPECT_EQ(SafetensorsWriter::Begin({{"bad\xff utf8", DType::kF32, {1}}}, {}, ok_sink).status().code(),
            Code::kInvalidArgument);
  auto r = SerializeSafetensors({{"w", DType::kF32, {2, 3}, std::string(12, '\0')}});
  EXPECT_EQ(r.status().code(), Code::kInvalidArgument);
  EXPECT_NE(r.status().message().find("'w'"), std::string::npos);
}

TEST(SafetensorsWriter, SinkErrorsPropagate) {
  int calls = 0;
  auto w = SafetensorsWriter::Begin({{"a", DType::kF32, {1}}}, {}, [&calls](std::span<const std::byte>) {
    return ++calls == 1 ? Status::Ok() : Status::Io("disk full");
  });
  ASSERT_OK(w.status());
  std::string four(4, '\0');
  EXPECT_EQ((*w)->Write(std::as_bytes(std::span<const char>(four.data(), 4))).code(), Code::kIo);
}

TEST(Safetensors, WriteFileIsAtomicAndLeavesNoTempOnError) {
  TempDir dir;
  std::vector<OwnedTensor> good = {{"a", DType::kF32, {1}, std::string(4, '\1')}};
  ASSERT_OK(WriteSafetensorsFile(dir / "m.safetensors", good));
  std::string before = testing::ReadFile(dir / "m.safetensors");
  std::vector<OwnedTensor> bad = {{"a", DType::kF32, {2}, std::string(4, '\1')}};
  EXPECT_EQ(WriteSafetensorsFile(dir / "m.safetensors", bad).code(), Code::kInvalidArgument);
  EXPECT_EQ(testing::ReadFile(dir / "m.safetensors"), before);
  int entries = 0;
  for (auto& e : fs::directory_iterator(dir.path())) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

TEST(Safetensors, OpenOfMissingFileIsNotFound) {
  TempDir dir;
  auto f = SafetensorsFile::Open(dir / "absent.safetensors");
  EXPECT_EQ(f.status().code(), Code::kNotFound);
  EXPECT_NE(f.status().message().find("absent.safetensors"), std::string::npos);
}

// ---- negative matrix: every malformation is refused with a message naming it ----

struct Malformed {
  const char* label;
  std::string bytes;
  std::vector<std::string> expect_in_message;
};

std::string F32Data(size_t n) { return std::string(4 * n, '\0'); }

std::vector<Malformed> MalformedCases() {
  const std::string ok_entry = R"("dtype":"F32","shape":[2],"data_offsets":[0,8])";
  std::vector<Malformed> c;
  c.push_back({"empty_file", "", {"shorter than the 8-byte"}});
  c.push_back({"seven_bytes", std::string(7, '\0'), {"7 bytes", "shorter than the 8-byte"}});
  c.push_back({"header_length_beyond_file", Le64(100) + "{}", {"header length 100 beyond the end of the file"}});
  c.push_back({"header_length_max_u64", Le64(~0ull) + "{}", {"beyond the end of the file"}});
  c.push_back({"bad_json", Raw("{\"w\": {", ""), {"not valid JSON"}});
  c.push_back({"trailing_garbage_in_header", Raw("{} x", ""), {"not valid JSON"}});
  c.push_back({"invalid_utf8", Raw("{\"w\xff\": 1}", ""), {"not valid JSON"}});
  c.push_back({"header_is_array", Raw("[1, 2]", ""), {"not a JSON object but array"}});
  c.push_back({"header_is_string", Raw("\"hi\"", ""), {"not a JSON object but string"}});
  c.push_back({"entry_not_object", Raw(R"({"w": [1]})", ""), {"tensor 'w'", "not an object"}});
  c.push_back({"unknown_dtype", Raw(R"({"w":{"dtype":"F64","shape":[1],"data_offsets":[0,8]}})", F32Data(2)),
               {"tensor 'w'", "unsupported dtype 'F64'"}});
  c.push_back({"dtype_not_string", Raw(R"({"w":{"dtype":4,"shape":[1],"data_offsets":[0,4]}})", F32Data(1)),
               {"tensor 'w'", "dtype is not a string"}});
  c.push_back({"missing_dtype", Raw(R"({"w":{"shape":[1],"data_offsets":[0,4]}})", F32Data(1)),
               {"tensor 'w'", "missing dtype"}});
  c.push_back({"missing_shape", Raw(R"({"w":{"dtype":"F32","data_offsets":[0,4]}})", F32Data(1)),
               {"tensor 'w'", "missing shape"}});
  c.push_back({"missing_offsets", Raw(R"({"w":{"dtype":"F32","shape":[1]}})", F32Data(1)),
               {"tensor 'w'", "missing data_offsets"}});
  c.push_back({"unknown_key", Raw(R"({"w":{"dtype":"F32","shape":[1],"data_offsets":[0,4],"x":1}})", F32Data(1)),
               {"tensor 'w'", "unknown key 'x'"}});
  c.push_back({"shape_not_list", Raw(R"({"w":{"dtype":"F32","shape":2,"data_offsets":[0,8]}})", F32Data(2)),
               {"tensor 'w'", "shape is not a list"}});
  c.push_back({"shape_negative", Raw(R"({"w":{"dtype":"F32","shape":[-2],"data_offsets":[0,8]}})", F32Data(2)),
               {"tensor 'w'", "shape [-2] is not a list of non-negative integers"}});
  c.push_back({"shape_float", Raw(R"({"w":{"dtype":"F32","shape":[2.0],"data_offsets":[0,8]}})", F32Data(2)),
               {"tensor 'w'", "non-negative integers"}});
  c.push_back({"shape_string", Raw(R"({"w":{"dtype":"F32","shape":["2"],"data_offsets":[0,8]}})", F32Data(2)),
               {"tensor 'w'", "non-negative integers"}});
  c.push_back({"shape_dim_above_int64",
               Raw(R"({"w":{"dtype":"F32","shape":[18446744073709551615],"data_offsets":[0,8]}})", F32Data(2)),
               {"tensor 'w'", "non-negative integers"}});
  c.push_back({"shape_product_overflow",
               Raw(R"({"w":{"dtype":"F32","shape":[4294967296,4294967296],"data_offsets":[0,8]}})", F32Data(2)),
               {"tensor 'w'", "overflows"}});
  c.push_back({"shape_times_dtype_overflow",
               Raw(R"({"w":{"dtype":"I64","shape":[2305843009213693952],"data_offsets":[0,8]}})", F32Data(2)),
               {"tensor 'w'", "overflows"}});
  c.push_back({"offsets_one_element", Raw(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0]}})", F32Data(2)),
               {"tensor 'w'", "data_offsets [0] is not [begin, end]"}});
  c.push_back({"offsets_three_elements",
               Raw(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8,8]}})", F32Data(2)),
               {"tensor 'w'", "is not [begin, end]"}});
  c.push_back({"offsets_negative", Raw(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[-8,0]}})", F32Data(2)),
               {"tensor 'w'", "is not [begin, end]"}});
  c.push_back({"offsets_not_list", Raw(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":"0-8"}})", F32Data(2)),
               {"tensor 'w'", "is not [begin, end]"}});
  c.push_back({"offsets_reversed", Raw(R"({"w":{"dtype":"F32","shape":[0],"data_offsets":[8,0]}})", F32Data(2)),
               {"tensor 'w'", "data_offsets [8, 0] has begin after end"}});
  c.push_back({"offsets_out_of_bounds", Raw(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})", F32Data(1)),
               {"tensor 'w'", "data_offsets [0, 8] out of bounds of the data section (4 bytes)"}});
  c.push_back({"offsets_huge", Raw(R"({"w":{"dtype":"F32","shape":[2],"data_offsets":[18446744073709551608,18446744073709551615]}})", F32Data(2)),
               {"tensor 'w'", "out of bounds"}});
  c.push_back({"size_mismatch",
               Raw(R"({"fc1.weight":{"dtype":"F32","shape":[2,3],"data_offsets":[0,12]}})", F32Data(3)),
               {"tensor 'fc1.weight': data_offsets [0, 12] hold 12 bytes but shape [2, 3] x F32 needs 24"}});
  c.push_back({"overlap",
               Raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})",
                   F32Data(3)),
               {"tensor 'b': data_offsets [4, 12] overlap tensor 'a' [0, 8]"}});
  c.push_back({"same_offsets_twice",
               Raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[0,8]}})",
                   F32Data(2)),
               {"overlap tensor 'a' [0, 8]"}});
  c.push_back({"hole",
               Raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[12,20]}})",
                   F32Data(5)),
               {"tensor 'b'", "leave a hole: bytes [8, 12)"}});
  c.push_back({"hole_at_start", Raw(R"({"a":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}})", F32Data(3)),
               {"tensor 'a'", "leave a hole: bytes [0, 4)"}});
  c.push_back({"trailing_data", Raw("{" + std::string("\"a\":{") + ok_entry + "}}", F32Data(3)),
               {"tensors cover 8 bytes but the data section holds 12"}});
  c.push_back({"data_without_tensors", Raw("{}", F32Data(1)), {"tensors cover 0 bytes but the data section holds 4"}});
  c.push_back({"duplicate_tensor_name",
               Raw("{\"w\":{" + ok_entry + "},\"w\":{" + ok_entry + "}}", F32Data(2)),
               {"duplicate tensor name 'w'"}});
  c.push_back({"duplicate_key_in_entry",
               Raw(R"({"w":{"dtype":"F32","dtype":"F32","shape":[2],"data_offsets":[0,8]}})", F32Data(2)),
               {"duplicate key 'dtype' in 'w'"}});
  c.push_back({"duplicate_metadata_key", Raw(R"({"__metadata__":{"k":"a","k":"b"}})", ""),
               {"duplicate key 'k' in '__metadata__'"}});
  c.push_back({"metadata_not_object", Raw(R"({"__metadata__":["a"]})", ""), {"__metadata__ is not an object"}});
  c.push_back({"metadata_value_not_string", Raw(R"({"__metadata__":{"epochs":3}})", ""),
               {"__metadata__ key 'epochs' is not a string"}});
  c.push_back({"metadata_value_object", Raw(R"({"__metadata__":{"nested":{"a":"b"}}})", ""),
               {"__metadata__ key 'nested' is not a string"}});
  c.push_back({"control_chars_in_name_are_escaped",
               Raw("{\"w\\n\":{\"dtype\":\"F64\",\"shape\":[1],\"data_offsets\":[0,8]}}", F32Data(2)),
               {"tensor 'w\\x0a'"}});
  return c;
}

class SafetensorsMalformed : public ::testing::TestWithParam<Malformed> {};

TEST_P(SafetensorsMalformed, IsRefusedWithANamedReason) {
  const Malformed& m = GetParam();
  auto f = SafetensorsFile::FromBytes(m.bytes);
  ASSERT_FALSE(f.ok()) << m.label << " was accepted";
  EXPECT_EQ(f.status().code(), Code::kCorruption);
  for (const std::string& want : m.expect_in_message)
    EXPECT_NE(f.status().message().find(want), std::string::npos)
        << "message lacks \"" << want << "\": " << f.status().ToString();

  // The same bytes from a file: same verdict, and the message names the file.
  TempDir dir;
  testing::WriteFile(dir / "bad.safetensors", m.bytes);
  auto g = SafetensorsFile::Open(dir / "bad.safetensors");
  ASSERT_FALSE(g.ok());
  EXPECT_EQ(g.status().code(), Code::kCorruption);
  EXPECT_NE(g.status().message().find("bad.safetensors"), std::string::npos) << g.status().ToString();
}

INSTANTIATE_TEST_SUITE_P(Matrix, SafetensorsMalformed, ::testing::ValuesIn(MalformedCases()),
                         [](const ::testing::TestParamInfo<Malformed>& i) { return std::string(i.param.label); });

TEST(Safetensors, AcceptsWhatTheFormatAllows) {
  // Whitespace-padded header, null metadata, zero-size tensors anywhere, keys in any order.
  std::string header =
      R"({"b":{"data_offsets":[8,12],"shape":[1],"dtype":"I32"},"__metadata__":null,)"
      R"("a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"e":{"dtype":"BF16","shape":[3,0],"data_offsets":[12,12]}}   )";
  auto f = SafetensorsFile::FromBytes(Raw(header, F32Data(3)));
  ASSERT_OK(f.status());
  ASSERT_EQ(f->get()->tensors().size(), 3u);
  EXPECT_EQ(f->get()->tensors()[0].name, "a");
  EXPECT_EQ(f->get()->tensors()[1].name, "b");
  EXPECT_EQ(f->get()->tensors()[2].name, "e");
  EXPECT_TRUE(f->get()->metadata().empty());
}

// Every truncation and many single-byte corruptions of a valid file are either
// refused or (for corruptions inside tensor data) accepted with in-bounds views;
// under ASan/UBSan this doubles as a small fuzz run.
TEST(Safetensors, TruncationsAndByteFlipsNeverReadOutOfBounds) {
  std::vector<OwnedTensor> in = {SampleTensor(DType::kF32), SampleTensor(DType::kI64), SampleTensor(DType::kBF16)};
  auto good = SerializeSafetensors(in, {{"a", "b"}});
  ASSERT_OK(good.status());
  for (size_t len = 0; len < good->size(); ++len) {
    auto f = SafetensorsFile::FromBytes(good->substr(0, len));
    EXPECT_FALSE(f.ok()) << "truncated to " << len << " bytes was accepted";
  }
  std::mt19937 rng(7);
  for (int i = 0; i < 3000; ++i) {
    std::string bad = *good;
    size_t at = rng() % bad.size();
    bad[at] = static_cast<char>(rng());
    auto f = SafetensorsFile::FromBytes(bad);
    if (!f.ok()) continue;
    uint64_t sum = 0;
    for (const TensorInfo& t : f->get()->tensors()) {
      auto d = f->get()->Data(t);
      ASSERT_EQ(d.size(), t.nbytes());
      for (std::byte b : d) sum += static_cast<uint8_t>(b);
    }
    (void)sum;
  }
}

// ---- dtype conversions ----

TEST(Conversions, BF16KnownValuesAndRounding) {
  EXPECT_EQ(F32ToBF16(1.0f), 0x3F80);
  EXPECT_EQ(F32ToBF16(-2.0f), 0xC000);
  EXPECT_EQ(BF16ToF32(0x3F80), 1.0f);
  // Exactly halfway between 0x3F80 and 0x3F81: ties go to the even one.
  EXPECT_EQ(F32ToBF16(std::bit_cast<float>(0x3F808000u)), 0x3F80);
  EXPECT_EQ(F32ToBF16(std::bit_cast<float>(0x3F818000u)), 0x3F82);
  EXPECT_EQ(F32ToBF16(std::bit_cast<float>(0x3F808001u)), 0x3F81);
  EXPECT_EQ(F32ToBF16(std::numeric_limits<float>::max()), 0x7F80);  // rounds up to inf
  EXPECT_EQ(F32ToBF16(std::numeric_limits<float>::infinity()), 0x7F80);
  EXPECT_EQ(F32ToBF16(-std::numeric_limits<float>::infinity()), 0xFF80);
  // NaNs stay NaN, even when the payload lives only in the low 16 bits.
  for (uint32_t nan : {0x7FC00000u, 0x7F800001u, 0xFF800001u, 0x7FFFFFFFu}) {
    uint16_t b = F32ToBF16(std::bit_cast<float>(nan));
    EXPECT_TRUE(std::isnan(BF16ToF32(b))) << std::hex << nan;
    EXPECT_EQ(b & 0x8000, (nan >> 16) & 0x8000);
  }
}

TEST(Conversions, BF16RoundTripsEveryNonNaNValueExactly) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    float f = BF16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(BF16ToF32(F32ToBF16(f))));
      continue;
    }
    ASSERT_EQ(F32ToBF16(f), h) << std::hex << h;
  }
}

TEST(Conversions, F16KnownValuesAndRounding) {
  EXPECT_EQ(F32ToF16(1.0f), 0x3C00);
  EXPECT_EQ(F32ToF16(-2.0f), 0xC000);
  EXPECT_EQ(F32ToF16(0.1f), 0x2E66);
  EXPECT_EQ(F32ToF16(65504.0f), 0x7BFF);
  EXPECT_EQ(F32ToF16(65519.0f), 0x7BFF);
  EXPECT_EQ(F32ToF16(65520.0f), 0x7C00);  // halfway to 65536: ties to even is infinity
  EXPECT_EQ(F32ToF16(1e10f), 0x7C00);
  EXPECT_EQ(F32ToF16(-1e10f), 0xFC00);
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -24)), 0x0001);   // smallest subnormal
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -25)), 0x0000);   // half of it: tie to even (0)
  EXPECT_EQ(F32ToF16(std::ldexp(1.5f, -25)), 0x0001);
  EXPECT_EQ(F32ToF16(std::ldexp(3.0f, -25)), 0x0002);   // 1.5 x smallest: tie to even (2)
  EXPECT_EQ(F32ToF16(std::ldexp(1.0f, -14)), 0x0400);   // smallest normal
  EXPECT_EQ(F32ToF16(std::ldexp(1023.5f, -24)), 0x0400);  // subnormal rounding up into the normals
  EXPECT_EQ(F32ToF16(-0.0f), 0x8000);
  EXPECT_EQ(F32ToF16(1e-30f), 0x0000);
  EXPECT_EQ(F16ToF32(0x7BFF), 65504.0f);
  EXPECT_EQ(F16ToF32(0x0001), std::ldexp(1.0f, -24));
  EXPECT_EQ(F16ToF32(0x7C00), std::numeric_limits<float>::infinity());
  EXPECT_TRUE(std::signbit(F16ToF32(0x8000)));
  for (uint32_t nan : {0x7FC00000u, 0x7F800001u, 0xFF800001u}) {
    uint16_t h = F32ToF16(std::bit_cast<float>(nan));
    EXPECT_TRUE(std::isnan(F16ToF32(h))) << std::hex << nan;
    EXPECT_EQ(h & 0x8000, (nan >> 16) & 0x8000);
  }
}

TEST(Conversions, F16RoundTripsEveryNonNaNValueExactly) {
  for (uint32_t h = 0; h <= 0xFFFF; ++h) {
    float f = F16ToF32(static_cast<uint16_t>(h));
    if (std::isnan(f)) {
      EXPECT_TRUE(std::isnan(F16ToF32(F32ToF16(f)))) << std::hex << h;
      continue;
    }
    ASSERT_EQ(F32ToF16(f), h) << std::hex << h;
  }
}

// Nearest-even against a brute-force reference: the two neighbouring halves of
// a float are found by search, and the closer one (even on ties) must win.
TEST(Conversions, F16RoundingMatchesBruteForceOnRandomFloats) {
  // Finite, non-negative halves in increasing order of value (0x0000..0x7BFF).
  std::mt19937 rng(11);
  std::uniform_real_distribution<float> exp(-26.0f, 16.5f);
  for (int i = 0; i < 20000; ++i) {
    float f = std::ldexp(1.0f + static_cast<float>(rng() % 1000000) / 1000000.0f, static_cast<int>(exp(rng)));
    if (f >= 65520.0f) continue;
    // Largest half <= f.
    uint32_t lo = 0, hi = 0x7BFF;
    while (lo < hi) {
      uint32_t mid = (lo + hi + 1) / 2;
      if (F16ToF32(static_cast<uint16_t>(mid)) <= f) lo = mid; else hi = mid - 1;
    }
    uint16_t below = static_cast<uint16_t>(lo);
    uint16_t want = below;
    if (F16ToF32(below) != f) {
      double up_val = below == 0x7BFF ? 65536.0 : F16ToF32(static_cast<uint16_t>(below + 1));
      double d_lo = static_cast<double>(f) - F16ToF32(below), d_hi = up_val - static_cast<double>(f);
      if (d_hi < d_lo || (d_hi == d_lo && (below & 1))) want = static_cast<uint16_t>(below + 1);
    }
    ASSERT_EQ(F32ToF16(f), want) << f;
    ASSERT_EQ(F32ToF16(-f), want | 0x8000) << -f;
  }
}

// ---- interop with an independent (numpy) implementation ----

class SafetensorsInterop : public ::testing::Test {
 protected:
  void SetUp() override {
    script_ = testing::SourceDir() / "tests" / "core" / "safetensors_interop.py";
    ASSERT_TRUE(fs::exists(script_)) << script_;
    if (!fs::exists("/usr/bin/python3")) GTEST_SKIP() << "/usr/bin/python3 not installed";
    auto probe = testing::Run({"/usr/bin/python3", "-c", "import numpy"}, dir_ / "probe.log",
                              std::chrono::seconds(60));
    if (probe.exit_code != 0) GTEST_SKIP() << "/usr/bin/python3 lacks numpy: " << probe.output;
  }
  TempDir dir_;
  fs::path script_;
};

TEST_F(SafetensorsInterop, ReadsAFileWrittenTheReferenceWay) {
  auto run = testing::Run({"/usr/bin/python3", script_.string(), "write", (dir_ / "ref.safetensors").string()},
                          dir_ / "write.log", std::chrono::seconds(60));
  ASSERT_EQ(run.exit_code, 0) << run.output;
  auto f = SafetensorsFile::Open(dir_ / "ref.safetensors");
  ASSERT_OK(f.status());
  const SafetensorsFile& st = **f;
  EXPECT_EQ(st.metadata(), (std::map<std::string, std::string>{
                               {"format", "pt"}, {"source", "numpy reference writer"}, {"city", "L\xc3\xbc" "beck"}}));
  ASSERT_EQ(st.tensors().size(), 5u);

  const TensorInfo* w = st.Find("layer.weight");
  ASSERT_NE(w, nullptr);
  EXPECT_EQ(w->dtype, DType::kF32);
  EXPECT_EQ(w->shape, (std::vector<int64_t>{2, 3}));
  EXPECT_EQ(ValuesOf<float>(st.Data(*w)), (std::vector<float>{-1.0f, -0.5f, 0.0f, 0.5f, 1.0f, 1.5f}));

  const TensorInfo* b = st.Find("layer.bias");
  ASSERT_NE(b, nullptr);
  EXPECT_EQ(ValuesOf<float>(st.Data(*b)), (std::vector<float>{1.5f, -2.25f, 3e-8f}));

  const TensorInfo* h = st.Find("half");
  ASSERT_NE(h, nullptr);
  EXPECT_EQ(h->dtype, DType::kF16);
  std::vector<float> halves;
  for (uint16_t v : ValuesOf<uint16_t>(st.Data(*h))) halves.push_back(F16ToF32(v));
  EXPECT_EQ(halves, (std::vector<float>{1.0f, -2.0f, 0.5f, 65504.0f, 0.0f}));

  const TensorInfo* s = st.Find("steps");
  ASSERT_NE(s, nullptr);
  EXPECT_EQ(s->dtype, DType::kI64);
  EXPECT_EQ(s->shape, (std::vector<int64_t>{2, 2}));
  EXPECT_EQ(ValuesOf<int64_t>(st.Data(*s)), (std::vector<int64_t>{0, 1, -1, 1ll << 40}));

  const TensorInfo* e = st.Find("empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->shape, (std::vector<int64_t>{0, 4}));
  EXPECT_TRUE(st.Data(*e).empty());
}

TEST_F(SafetensorsInterop, WritesAFileTheNumpyReaderAccepts) {
  // Keep in sync with expected_from_hanse() in safetensors_interop.py.
  std::vector<OwnedTensor> out = {
      {"conv.weight", DType::kF32, {2, 3}, BytesOf(std::vector<float>{0.25f, -1.0f, 2.0f, 3.5f, 1e-3f, -7.0f})},
      {"conv.half", DType::kF16, {3}, BytesOf(std::vector<uint16_t>{F32ToF16(0.5f), F32ToF16(-1.5f), F32ToF16(1024.0f)})},
      {"conv.bf16", DType::kBF16, {3}, BytesOf(std::vector<uint16_t>{F32ToBF16(1.0f), F32ToBF16(-2.0f), F32ToBF16(0.5f)})},
      {"counts", DType::kI64, {3}, BytesOf(std::vector<int64_t>{7, -3, 1ll << 50})},
      {"labels", DType::kI32, {2, 2}, BytesOf(std::vector<int32_t>{1, 2, 3, -4})},
  };
  std::map<std::string, std::string> meta = {
      {"writer", "hanse"}, {"round", "3"}, {"note", "quote \" and unicode \xc3\xa9"}};
  ASSERT_OK(WriteSafetensorsFile(dir_ / "hanse.safetensors", out, meta));
  auto run = testing::Run({"/usr/bin/python3", script_.string(), "check", (dir_ / "hanse.safetensors").string()},
                          dir_ / "check.log", std::chrono::seconds(60));
  EXPECT_EQ(run.exit_code, 0) << run.output;

  // The checker is not a rubber stamp: a file with a wrong value fails it.
  out[3].bytes = BytesOf(std::vector<int64_t>{7, -3, 1ll << 49});
  ASSERT_OK(WriteSafetensorsFile(dir_ / "wrong.safetensors", out, meta));
  run = testing::Run({"/usr/bin/python3", script_.string(), "check", (dir_ / "wrong.safetensors").string()},
                     dir_ / "check-wrong.log", std::chrono::seconds(60));
  EXPECT_EQ(run.exit_code, 1) << run.output;
  EXPECT_NE(run.output.find("counts"), std::string::npos) << run.output;
}

}  // namespace
}  // namespace hanse
