#include "core/sha256.h"

#include <string>

#include <gtest/gtest.h>

namespace hanse {
namespace {

TEST(Sha256, MatchesKnownVectors) {
  EXPECT_EQ(Sha256Hex(std::string_view("")), "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  EXPECT_EQ(Sha256Hex(std::string_view("abc")), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
  EXPECT_EQ(Sha256Hex(std::string_view("abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq")),
            "248d6a61d20638b8e5c026930c3e6039a33ce45964ff2167f6ecedd419db06c1");
}

TEST(Sha256, MillionAsIncrementallyMatchesKnownVector) {
  Sha256 h;
  std::string chunk(1000, 'a');
  for (int i = 0; i < 1000; ++i) h.Update(chunk);
  EXPECT_EQ(h.Finish(), "cdc76e5c9914fb9281a1c7e284d73e67f1809a48a497200e046d39ccc7112cd0");
}

TEST(Sha256, IncrementalEqualsOneShotForAnySplit) {
  std::string data;
  for (int i = 0; i < 3000; ++i) data.push_back(static_cast<char>(i * 31 + 7));
  const std::string expected = Sha256Hex(data);
  for (size_t split : {size_t{0}, size_t{1}, size_t{63}, size_t{64}, size_t{65}, size_t{2999}, size_t{3000}}) {
    Sha256 h;
    h.Update(std::string_view(data).substr(0, split));
    h.Update(std::as_bytes(std::span<const char>(data.data() + split, data.size() - split)));
    EXPECT_EQ(h.Finish(), expected) << "split at " << split;
  }
}

TEST(Sha256, FinishResetsForANewStream) {
  Sha256 h;
  h.Update(std::string_view("garbage"));
  (void)h.Finish();
  h.Update(std::string_view("abc"));
  EXPECT_EQ(h.Finish(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(Sha256, MovedHasherKeepsState) {
  Sha256 a;
  a.Update(std::string_view("ab"));
  Sha256 b = std::move(a);
  b.Update(std::string_view("c"));
  EXPECT_EQ(b.Finish(), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

}  // namespace
}  // namespace hanse
