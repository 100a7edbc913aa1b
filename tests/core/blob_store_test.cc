#include "core/blob_store.h"

#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdio>
#include <filesystem>
#include <random>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "core/fsutil.h"
#include "core/sha256.h"
#include "test_util.h"

namespace hanse {
namespace {

namespace fs = std::filesystem;
using testing::TempDir;

std::span<const std::byte> AsBytes(const std::string& s) {
  return std::as_bytes(std::span<const char>(s.data(), s.size()));
}

std::string RandomBytes(size_t n, uint64_t seed) {
  std::mt19937_64 rng(seed);
  std::string s(n, '\0');
  for (size_t i = 0; i < n; i += 8) {
    uint64_t v = rng();
    for (size_t j = 0; j < 8 && i + j < n; ++j) s[i + j] = static_cast<char>(v >> (8 * j));
  }
  return s;
}

std::unique_ptr<BlobStore> OpenStore(const fs::path& root) {
  auto r = BlobStore::Open(root);
  if (!r.ok()) ADD_FAILURE() << r.status().ToString();
  return r.ok() ? std::move(r).value() : nullptr;
}

void FlipByte(const fs::path& p, size_t at) {
  std::string bytes = testing::ReadFile(p);
  ASSERT_LT(at, bytes.size());
  bytes[at] = static_cast<char>(bytes[at] ^ 0x01);
  fs::permissions(p, fs::perms::owner_write, fs::perm_options::add);
  testing::WriteFile(p, bytes);
}

// ---- fsutil ----

TEST(FsUtil, WriteFileAtomicReplacesContentAndLeavesNoTemp) {
  TempDir dir;
  fs::path p = dir / "f.bin";
  ASSERT_OK(WriteFileAtomic(p, std::string_view("first")));
  ASSERT_OK(WriteFileAtomic(p, std::string_view("second")));
  auto r = ReadWholeFile(p);
  ASSERT_OK(r.status());
  EXPECT_EQ(*r, "second");
  int entries = 0;
  for (auto& e : fs::directory_iterator(dir.path())) {
    (void)e;
    ++entries;
  }
  EXPECT_EQ(entries, 1);
}

TEST(FsUtil, ErrorsNameThePath) {
  TempDir dir;
  auto r = ReadWholeFile(dir / "missing.txt");
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.status().code(), Code::kNotFound);
  EXPECT_NE(r.status().message().find("missing.txt"), std::string::npos) << r.status().ToString();

  Status st = WriteFileAtomic(dir / "no-such-dir" / "f", std::string_view("x"));
  EXPECT_EQ(st.code(), Code::kIo);
  EXPECT_NE(st.message().find("no-such-dir"), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("No such file"), std::string::npos) << st.ToString();
}

// ---- blob store ----

TEST(BlobStore, PutThenGetReturnsBytesUnderTheirHash) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  std::string data = RandomBytes(10000, 1);
  auto h = store->Put(data);
  ASSERT_OK(h.status());
  EXPECT_EQ(*h, Sha256Hex(data));
  EXPECT_TRUE(store->Contains(*h));
  EXPECT_EQ(store->PathOf(*h), dir.path() / "blobs" / h->substr(0, 2) / *h);
  EXPECT_TRUE(fs::is_regular_file(store->PathOf(*h)));
  auto got = store->Get(*h);
  ASSERT_OK(got.status());
  EXPECT_EQ(*got, data);
  auto size = store->Size(*h);
  ASSERT_OK(size.status());
  EXPECT_EQ(*size, data.size());
  EXPECT_OK(store->Verify(*h));
}

TEST(BlobStore, PutIsIdempotent) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  auto a = store->Put(std::string_view("same bytes"));
  auto b = store->Put(std::string_view("same bytes"));
  ASSERT_OK(a.status());
  ASSERT_OK(b.status());
  EXPECT_EQ(*a, *b);
  int files = 0;
  for (auto& e : fs::recursive_directory_iterator(dir / "blobs"))
    if (e.is_regular_file()) ++files;
  EXPECT_EQ(files, 1);
}

TEST(BlobStore, EmptyBlobIsStorable) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  auto h = store->Put(std::string_view(""));
  ASSERT_OK(h.status());
  EXPECT_EQ(*h, "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
  auto got = store->Get(*h);
  ASSERT_OK(got.status());
  EXPECT_TRUE(got->empty());
}

TEST(BlobStore, VerifyAndGetDetectAFlippedByteAndNameThePath) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  auto h = store->Put(RandomBytes(3 << 20, 2));  // several hashing blocks
  ASSERT_OK(h.status());
  FlipByte(store->PathOf(*h), (3 << 20) - 5);
  Status st = store->Verify(*h);
  EXPECT_EQ(st.code(), Code::kCorruption);
  EXPECT_NE(st.message().find(store->PathOf(*h).string()), std::string::npos) << st.ToString();
  auto got = store->Get(*h);
  ASSERT_FALSE(got.ok());
  EXPECT_EQ(got.status().code(), Code::kCorruption);
  EXPECT_NE(got.status().message().find(store->PathOf(*h).string()), std::string::npos);
}

TEST(BlobStore, MissingBlobIsNotFound) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  std::string h = Sha256Hex(std::string_view("never stored"));
  EXPECT_FALSE(store->Contains(h));
  EXPECT_EQ(store->Get(h).status().code(), Code::kNotFound);
  EXPECT_EQ(store->Verify(h).code(), Code::kNotFound);
  EXPECT_EQ(store->Size(h).status().code(), Code::kNotFound);
  std::byte buf[4];
  EXPECT_EQ(store->ReadAt(h, 0, buf).status().code(), Code::kNotFound);
}

TEST(BlobStore, InvalidHashesAreRefusedBeforeAnyPathIsBuilt) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  const std::string valid = Sha256Hex(std::string_view("x"));
  std::string upper = valid;
  upper[0] = 'A';
  std::string traversal = "../../../../etc/passwd";
  traversal.resize(64, 'a');
  const std::vector<std::string> bad = {"", "abc", valid + "0", upper, traversal, valid.substr(0, 63) + "/",
                                        std::string(64, 'g'), valid.substr(0, 32) + std::string(1, '\0') + valid.substr(33)};
  for (const std::string& h : bad) {
    SCOPED_TRACE(h);
    EXPECT_FALSE(IsValidHash(h));
    EXPECT_FALSE(store->Contains(h));
    EXPECT_TRUE(store->PathOf(h).empty());
    EXPECT_EQ(store->Get(h).status().code(), Code::kInvalidArgument);
    EXPECT_EQ(store->Verify(h).code(), Code::kInvalidArgument);
    EXPECT_EQ(store->Size(h).status().code(), Code::kInvalidArgument);
    EXPECT_EQ(store->Remove(h).code(), Code::kInvalidArgument);
    EXPECT_EQ(store->AppendPartial(h, 0, AsBytes("data")).code(), Code::kInvalidArgument);
    EXPECT_EQ(store->CommitPartial(h).code(), Code::kInvalidArgument);
    EXPECT_EQ(store->DiscardPartial(h).code(), Code::kInvalidArgument);
    EXPECT_EQ(store->PartialSize(h), 0u);
  }
  EXPECT_TRUE(IsValidHash(valid));
  // Nothing was created outside the partial folder (which holds nothing either).
  EXPECT_TRUE(fs::is_empty(dir / "partial"));
}

TEST(BlobStore, ReadAtReadsRangesAndStopsAtTheEnd) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  std::string data = RandomBytes(1000, 3);
  auto h = store->Put(data);
  ASSERT_OK(h.status());
  std::vector<std::byte> buf(300);
  auto n = store->ReadAt(*h, 100, buf);
  ASSERT_OK(n.status());
  EXPECT_EQ(*n, 300u);
  EXPECT_EQ(std::string(reinterpret_cast<const char*>(buf.data()), 300), data.substr(100, 300));
  n = store->ReadAt(*h, 900, buf);
  ASSERT_OK(n.status());
  EXPECT_EQ(*n, 100u);
  n = store->ReadAt(*h, 1000, buf);
  ASSERT_OK(n.status());
  EXPECT_EQ(*n, 0u);
  EXPECT_EQ(store->ReadAt(*h, 1001, buf).status().code(), Code::kInvalidArgument);
}

TEST(BlobStore, RemoveDeletesAndIsIdempotent) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  auto h = store->Put(std::string_view("to remove"));
  ASSERT_OK(h.status());
  ASSERT_OK(store->Remove(*h));
  EXPECT_FALSE(store->Contains(*h));
  EXPECT_OK(store->Remove(*h));
}

TEST(BlobStore, PutFileStreamsAFileIn) {
  TempDir dir;
  auto store = OpenStore(dir / "store");
  ASSERT_TRUE(store);
  std::string data = RandomBytes((5 << 20) + 123, 4);  // not a multiple of the block
  testing::WriteFile(dir / "model.bin", data);
  auto h = store->PutFile(dir / "model.bin");
  ASSERT_OK(h.status());
  EXPECT_EQ(*h, Sha256Hex(data));
  EXPECT_OK(store->Verify(*h));
  EXPECT_TRUE(fs::is_empty(dir / "store" / "tmp"));
  EXPECT_EQ(store->PutFile(dir / "absent.bin").status().code(), Code::kNotFound);
}

TEST(BlobStore, PartialAppendResumeAndCommit) {
  TempDir dir;
  std::string data = RandomBytes(100000, 5);
  std::string h = Sha256Hex(data);
  {
    auto store = OpenStore(dir.path());
    ASSERT_TRUE(store);
    EXPECT_EQ(store->PartialSize(h), 0u);
    ASSERT_OK(store->AppendPartial(h, 0, AsBytes(data).first(30000)));
    ASSERT_OK(store->AppendPartial(h, 30000, AsBytes(data).subspan(30000, 20000)));
    EXPECT_EQ(store->PartialSize(h), 50000u);
    EXPECT_FALSE(store->Contains(h));
  }
  // A new store object (as after a restart) resumes from what is on disk.
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  uint64_t held = store->PartialSize(h);
  ASSERT_EQ(held, 50000u);
  ASSERT_OK(store->AppendPartial(h, held, AsBytes(data).subspan(held)));
  ASSERT_OK(store->CommitPartial(h));
  EXPECT_EQ(store->PartialSize(h), 0u);
  EXPECT_TRUE(store->Contains(h));
  auto got = store->Get(h);
  ASSERT_OK(got.status());
  EXPECT_EQ(*got, data);
  EXPECT_EQ(store->CommitPartial(h).code(), Code::kNotFound);
}

TEST(BlobStore, AppendAtTheWrongOffsetIsRefused) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  std::string data = RandomBytes(1000, 6);
  std::string h = Sha256Hex(data);
  Status st = store->AppendPartial(h, 10, AsBytes(data));
  EXPECT_EQ(st.code(), Code::kFailedPrecondition);
  ASSERT_OK(store->AppendPartial(h, 0, AsBytes(data).first(500)));
  // A duplicate (replayed) chunk and a gap are both refused; the partial is unchanged.
  EXPECT_EQ(store->AppendPartial(h, 0, AsBytes(data).first(500)).code(), Code::kFailedPrecondition);
  st = store->AppendPartial(h, 600, AsBytes(data).subspan(600));
  EXPECT_EQ(st.code(), Code::kFailedPrecondition);
  EXPECT_NE(st.message().find("holds 500 bytes"), std::string::npos) << st.ToString();
  EXPECT_EQ(store->PartialSize(h), 500u);
}

TEST(BlobStore, CommitOfMismatchingPartialDiscardsItAndNamesBothHashes) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  std::string data = RandomBytes(5000, 7);
  std::string h = Sha256Hex(data);
  std::string wrong = data;
  wrong[4000] ^= 0x20;
  ASSERT_OK(store->AppendPartial(h, 0, AsBytes(wrong)));
  Status st = store->CommitPartial(h);
  EXPECT_EQ(st.code(), Code::kCorruption);
  EXPECT_NE(st.message().find("expected hash " + h), std::string::npos) << st.ToString();
  EXPECT_NE(st.message().find("actual " + Sha256Hex(wrong)), std::string::npos) << st.ToString();
  EXPECT_FALSE(store->Contains(h));
  EXPECT_EQ(store->PartialSize(h), 0u);
  EXPECT_TRUE(fs::is_empty(dir / "partial"));
}

TEST(BlobStore, DiscardPartialRemovesIt) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  std::string h = Sha256Hex(std::string_view("whatever"));
  ASSERT_OK(store->AppendPartial(h, 0, AsBytes("what")));
  ASSERT_OK(store->DiscardPartial(h));
  EXPECT_EQ(store->PartialSize(h), 0u);
  EXPECT_OK(store->DiscardPartial(h));
}

TEST(BlobStore, WriterStreamsBytesOfUnknownHash) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  std::string data = RandomBytes((2 << 20) + 777, 8);
  auto w = store->NewWriter();
  ASSERT_OK(w.status());
  // Mixed write sizes: tiny, block-sized and larger than a block.
  size_t pos = 0;
  for (size_t len : {size_t{1}, size_t{10}, size_t{1} << 20, size_t{(1 << 20) + 5}, size_t{3}}) {
    ASSERT_OK((*w)->Write(AsBytes(data).subspan(pos, len)));
    pos += len;
  }
  ASSERT_OK((*w)->Write(AsBytes(data).subspan(pos)));
  auto h = (*w)->Finish();
  ASSERT_OK(h.status());
  EXPECT_EQ(*h, Sha256Hex(data));
  EXPECT_OK(store->Verify(*h));
  EXPECT_EQ((*w)->Write(AsBytes(data).first(1)).code(), Code::kFailedPrecondition);
  EXPECT_FALSE((*w)->Finish().ok());
  EXPECT_TRUE(fs::is_empty(dir / "tmp"));
}

TEST(BlobStore, AbandonedWriterLeavesNothing) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  {
    auto w = store->NewWriter();
    ASSERT_OK(w.status());
    ASSERT_OK((*w)->Write(AsBytes("partial content")));
  }
  EXPECT_TRUE(fs::is_empty(dir / "tmp"));
  EXPECT_TRUE(fs::is_empty(dir / "blobs"));
}

TEST(BlobStore, StrayTempFilesAreIgnored) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  std::string data = "complete";
  std::string h = Sha256Hex(data);
  // What a crash in the middle of a write leaves: temp files next to the final name.
  testing::WriteFile(store->PathOf(h).parent_path() / ("." + h + ".tmp-1-0-0"), "compl");
  testing::WriteFile(dir / "tmp" / ".blob.tmp-1-0-0", "comp");
  EXPECT_FALSE(store->Contains(h));
  EXPECT_EQ(store->Get(h).status().code(), Code::kNotFound);
  auto put = store->Put(data);
  ASSERT_OK(put.status());
  auto got = store->Get(h);
  ASSERT_OK(got.status());
  EXPECT_EQ(*got, data);
}

TEST(BlobStore, RemoveStaleTempsDeletesOnlyOldTempFiles) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  auto h = store->Put(std::string_view("keep me"));
  ASSERT_OK(h.status());
  std::string partial_hash = Sha256Hex(std::string_view("partial"));
  ASSERT_OK(store->AppendPartial(partial_hash, 0, AsBytes("part")));
  const fs::path fan = store->PathOf(*h).parent_path();
  const fs::path old_put = fan / ("." + *h + ".tmp-1-0-0");
  const fs::path old_writer = dir / "tmp" / ".blob.tmp-1-0-0";
  const fs::path fresh_writer = dir / "tmp" / ".blob.tmp-2-0-0";
  const fs::path not_a_temp = fan / "README";
  for (const fs::path& p : {old_put, old_writer, fresh_writer, not_a_temp}) testing::WriteFile(p, "x");
  const auto two_hours_ago = fs::file_time_type::clock::now() - std::chrono::hours(2);
  for (const fs::path& p : {old_put, old_writer, not_a_temp}) fs::last_write_time(p, two_hours_ago);

  auto removed = store->RemoveStaleTemps(std::chrono::hours(1));
  ASSERT_OK(removed.status());
  EXPECT_EQ(*removed, 2u);
  EXPECT_FALSE(fs::exists(old_put));
  EXPECT_FALSE(fs::exists(old_writer));
  EXPECT_TRUE(fs::exists(fresh_writer));
  EXPECT_TRUE(fs::exists(not_a_temp));
  EXPECT_OK(store->Verify(*h));
  EXPECT_EQ(store->PartialSize(partial_hash), 4u);
}

TEST(BlobStore, ConcurrentPutsOfSameAndDistinctBlobs) {
  TempDir dir;
  auto store = OpenStore(dir.path());
  ASSERT_TRUE(store);
  const std::string shared = RandomBytes(1 << 20, 20);
  std::vector<std::string> own;
  for (int t = 0; t < 4; ++t) own.push_back(RandomBytes(100000, 30 + static_cast<uint64_t>(t)));
  std::vector<Status> results(8);
  std::vector<std::thread> threads;
  for (int t = 0; t < 4; ++t) {
    threads.emplace_back([&, t] {
      for (int i = 0; i < 5; ++i) {
        auto a = store->Put(shared);
        auto b = store->Put(own[static_cast<size_t>(t)]);
        if (!a.ok()) results[static_cast<size_t>(2 * t)] = a.status();
        if (!b.ok()) results[static_cast<size_t>(2 * t + 1)] = b.status();
      }
    });
  }
  for (auto& th : threads) th.join();
  for (const Status& st : results) EXPECT_OK(st);
  EXPECT_OK(store->Verify(Sha256Hex(shared)));
  for (const std::string& o : own) EXPECT_OK(store->Verify(Sha256Hex(o)));
}

// ---- crash safety ----

// Every valid-hash file under blobs/ must be a complete blob; temp files are
// never visible through the API.
void ExpectStoreConsistent(const BlobStore& store, const fs::path& root) {
  for (auto& e : fs::recursive_directory_iterator(root / "blobs")) {
    if (!e.is_regular_file()) continue;
    std::string name = e.path().filename().string();
    if (!IsValidHash(name)) {
      EXPECT_FALSE(store.Contains(name));
      continue;
    }
    EXPECT_OK(store.Verify(name));
  }
}

enum class CrashMode { kPut, kWriter, kCommitPartial };

// Child: stores `data` by `mode` and exits 0. Runs in a forked copy of this
// (single-threaded) test process; only async-signal-unsafe code after fork is
// our own, which is fine because no other thread exists.
[[noreturn]] void ChildStore(const fs::path& root, const std::string& data, CrashMode mode) {
  auto store = BlobStore::Open(root);
  if (!store.ok()) _exit(2);
  Status st;
  switch (mode) {
    case CrashMode::kPut:
      st = (*store)->Put(data).status();
      break;
    case CrashMode::kWriter: {
      auto w = (*store)->NewWriter();
      if (!w.ok()) _exit(3);
      for (size_t pos = 0; pos < data.size() && st.ok(); pos += 300000)
        st = (*w)->Write(AsBytes(data).subspan(pos, std::min<size_t>(300000, data.size() - pos)));
      if (st.ok()) st = (*w)->Finish().status();
      break;
    }
    case CrashMode::kCommitPartial: {
      std::string h = Sha256Hex(data);
      uint64_t held = (*store)->PartialSize(h);
      for (uint64_t pos = held; pos < data.size() && st.ok(); pos += 1 << 20)
        st = (*store)->AppendPartial(h, pos, AsBytes(data).subspan(pos, std::min<size_t>(1 << 20, data.size() - pos)));
      if (st.ok()) st = (*store)->CommitPartial(h);
      break;
    }
  }
  _exit(st.ok() ? 0 : 4);
}

// Runs the child to completion once to learn how long a store takes here, then
// SIGKILLs children at random moments in [0, 1.3 x that]. The duration only
// spreads the kill points; nothing asserts on time.
void RunCrashLoop(CrashMode mode, int iterations) {
  TempDir dir;
  const std::string data = RandomBytes(24 << 20, 9 + static_cast<int>(mode));
  const std::string hash = Sha256Hex(data);

  auto t0 = std::chrono::steady_clock::now();
  {
    TempDir calib;
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) ChildStore(calib.path(), data, mode);
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    ASSERT_TRUE(WIFEXITED(st) && WEXITSTATUS(st) == 0) << "calibration child failed: " << st;
  }
  auto full_us = std::chrono::duration_cast<std::chrono::microseconds>(std::chrono::steady_clock::now() - t0).count();
  std::mt19937_64 rng(1234 + static_cast<int>(mode));
  int64_t max_delay_us = std::max<int64_t>(full_us * 13 / 10, 1000);

  int killed_before_done = 0, completed = 0;
  for (int i = 0; i < iterations; ++i) {
    SCOPED_TRACE("iteration " + std::to_string(i));
    {
      // Start each iteration without the blob so the next kill can hit a write.
      auto store = OpenStore(dir.path());
      ASSERT_TRUE(store);
      ASSERT_OK(store->Remove(hash));
    }
    pid_t pid = fork();
    ASSERT_GE(pid, 0);
    if (pid == 0) ChildStore(dir.path(), data, mode);
    std::this_thread::sleep_for(
        std::chrono::microseconds(std::uniform_int_distribution<int64_t>(0, max_delay_us)(rng)));
    kill(pid, SIGKILL);
    int st = 0;
    ASSERT_EQ(waitpid(pid, &st, 0), pid);
    if (WIFSIGNALED(st)) ++killed_before_done;
    if (WIFEXITED(st)) {
      ASSERT_EQ(WEXITSTATUS(st), 0);
      ++completed;
      // Keep the kill points inside the write on a machine slower or faster than the calibration run.
      max_delay_us = std::max<int64_t>(max_delay_us * 7 / 10, 1000);
    }

    auto store = OpenStore(dir.path());
    ASSERT_TRUE(store);
    if (store->Contains(hash)) {
      EXPECT_OK(store->Verify(hash));
      auto got = store->Get(hash);
      ASSERT_OK(got.status());
      EXPECT_TRUE(*got == data);
    } else if (WIFEXITED(st)) {
      ADD_FAILURE() << "child finished but the blob is missing";
    }
    ExpectStoreConsistent(*store, dir.path());
    // A resumed transfer after the crash still ends with the right blob.
    if (mode == CrashMode::kCommitPartial && !store->Contains(hash)) {
      uint64_t held = store->PartialSize(hash);
      ASSERT_LE(held, data.size());
      ASSERT_OK(store->AppendPartial(hash, held, AsBytes(data).subspan(held)));
      ASSERT_OK(store->CommitPartial(hash));
      EXPECT_OK(store->Verify(hash));
    }
  }
  // What the kills left behind is cleaned up without touching complete blobs.
  {
    auto store = OpenStore(dir.path());
    ASSERT_TRUE(store);
    ASSERT_OK(store->RemoveStaleTemps(std::chrono::seconds(0)).status());
    EXPECT_TRUE(fs::is_empty(dir / "tmp"));
    for (auto& e : fs::recursive_directory_iterator(dir / "blobs"))
      if (e.is_regular_file()) {
        EXPECT_TRUE(IsValidHash(e.path().filename().string())) << e.path();
      }
    ExpectStoreConsistent(*store, dir.path());
  }
  // Some kill must land inside the write, otherwise this test proves nothing.
  EXPECT_GE(killed_before_done, 1) << "completed: " << completed;
  std::printf("crash mode %d: %d killed, %d completed\n", static_cast<int>(mode), killed_before_done, completed);
}

TEST(BlobStoreCrash, KilledPutLeavesNoBlobOrACompleteOne) { RunCrashLoop(CrashMode::kPut, 25); }
TEST(BlobStoreCrash, KilledWriterLeavesNoBlobOrACompleteOne) { RunCrashLoop(CrashMode::kWriter, 25); }
TEST(BlobStoreCrash, KilledPartialTransferResumesToTheRightBlob) { RunCrashLoop(CrashMode::kCommitPartial, 25); }

}  // namespace
}  // namespace hanse
