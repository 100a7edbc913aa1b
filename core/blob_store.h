// Content-addressed blob store: files named by the hex SHA-256 of their bytes,
// under <root>/blobs/<first two hex>/<hash>. Writes are atomic (temp file,
// fsync, rename, fsync of the folder): a crash leaves either no blob or a
// complete one. Reads verify the hash. Partial blobs (being received chunk by
// chunk) live under <root>/partial/ and become blobs only after their hash checks.
//
// Thread-safety: distinct hashes may be used from distinct threads; one partial
// blob must be written by one thread at a time.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <memory>
#include <span>
#include <string>
#include <string_view>

#include "core/status.h"

namespace hanse {

// True for 64 lowercase hex characters.
bool IsValidHash(std::string_view hex);

class BlobStore {
 public:
  // Creates the folders when missing.
  static Result<std::unique_ptr<BlobStore>> Open(const std::filesystem::path& root);

  const std::filesystem::path& root() const { return root_; }
  // Empty path for an invalid hash (see IsValidHash): no path is ever built from one.
  std::filesystem::path PathOf(std::string_view hash) const;
  bool Contains(std::string_view hash) const;
  Result<uint64_t> Size(std::string_view hash) const;

  // Stores bytes; returns their hash. Idempotent.
  Result<std::string> Put(std::span<const std::byte> bytes);
  Result<std::string> Put(std::string_view bytes);
  // Copies a file into the store (streaming, hashed on the way). Returns the hash.
  Result<std::string> PutFile(const std::filesystem::path& file);
  // Reads and verifies the whole blob (for small blobs: messages, configs).
  Result<std::string> Get(std::string_view hash) const;
  // Verifies the blob's bytes against its name; kCorruption names the path.
  Status Verify(std::string_view hash) const;
  // Reads [offset, offset+len) without verifying (streaming senders verify once up front).
  Result<uint64_t> ReadAt(std::string_view hash, uint64_t offset, std::span<std::byte> out) const;
  // Removing a blob that is absent is not an error.
  Status Remove(std::string_view hash);
  // Deletes temp files that a crash left behind (an interrupted Put or Writer)
  // once they are older than `min_age`, so that writers still running in other
  // processes are not disturbed. Partial blobs are kept (they are resumable).
  // Returns how many files were removed.
  Result<uint64_t> RemoveStaleTemps(std::chrono::seconds min_age = std::chrono::hours(1));

  // ---- Partial blobs ----
  // Bytes already held for `hash` (0 when none).
  uint64_t PartialSize(std::string_view hash) const;
  // Appends at `offset`, which must equal PartialSize() (kFailedPrecondition otherwise).
  // Data is fsynced before this returns, so what PartialSize() reports survives a crash.
  Status AppendPartial(std::string_view hash, uint64_t offset, std::span<const std::byte> bytes);
  // Hashes the partial; on match moves it into the store atomically; on mismatch
  // deletes it and returns kCorruption naming the expected and actual hash.
  Status CommitPartial(std::string_view hash);
  Status DiscardPartial(std::string_view hash);

  // Streaming writer for blobs whose hash is known only at the end (new models,
  // updates). Finish() hashes, fsyncs and renames into place; returns the hash.
  class Writer {
   public:
    virtual ~Writer() = default;
    virtual Status Write(std::span<const std::byte> bytes) = 0;
    virtual Result<std::string> Finish() = 0;  // the writer is unusable afterwards
  };
  Result<std::unique_ptr<Writer>> NewWriter();

 private:
  explicit BlobStore(std::filesystem::path root) : root_(std::move(root)) {}
  std::filesystem::path root_;
};

}  // namespace hanse
