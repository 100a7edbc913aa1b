// Small POSIX file helpers: an owning fd, full reads/writes, atomic whole-file
// writes and folder fsync. Errors are Status::Io naming the path and errno text.
#pragma once

#include <cstddef>
#include <cstdint>
#include <filesystem>
#include <span>
#include <string>
#include <string_view>

#include "core/status.h"

namespace hanse {

// Owns a file descriptor; closes it at destruction. Movable, not copyable.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  ~UniqueFd() { Reset(); }
  UniqueFd(UniqueFd&& o) noexcept : fd_(o.Release()) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) Reset(o.Release());
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() {
    int fd = fd_;
    fd_ = -1;
    return fd;
  }
  void Reset(int fd = -1);
  // close() with its error reported (a failing close can mean lost data).
  Status Close(const std::filesystem::path& path_for_errors);

 private:
  int fd_ = -1;
};

// Status::Io("<what> <path>: <strerror(err)>").
Status ErrnoStatus(std::string_view what, const std::filesystem::path& path, int err);

// open(2) with O_CLOEXEC added; Io error names the path.
Result<UniqueFd> OpenFd(const std::filesystem::path& path, int flags, int mode = 0644);

// Writes all bytes (retries short writes and EINTR).
Status WriteAll(int fd, std::span<const std::byte> bytes, const std::filesystem::path& path_for_errors);
// Reads exactly out.size() bytes at `offset` unless EOF comes first; returns the count read.
Result<uint64_t> PreadFull(int fd, uint64_t offset, std::span<std::byte> out,
                           const std::filesystem::path& path_for_errors);

Status Fsync(int fd, const std::filesystem::path& path_for_errors);
// fsync of a folder, so that a rename or create inside it is durable.
Status FsyncDir(const std::filesystem::path& dir);

// A temp path next to `target` (same folder, so rename is atomic): ".<name>.tmp-<pid>-<random>".
std::filesystem::path TempPathFor(const std::filesystem::path& target);

// Writes `bytes` to a temp file in the same folder, fsyncs it, renames it over
// `path` and fsyncs the folder: after a crash `path` holds the old or the new
// content, never a mix. The temp file is removed on failure.
Status WriteFileAtomic(const std::filesystem::path& path, std::span<const std::byte> bytes);
Status WriteFileAtomic(const std::filesystem::path& path, std::string_view bytes);

// rename(2) then fsync of the destination folder.
Status RenameDurable(const std::filesystem::path& from, const std::filesystem::path& to);

// Reads a whole file; kNotFound when it does not exist, kIo otherwise.
Result<std::string> ReadWholeFile(const std::filesystem::path& path);

}  // namespace hanse
