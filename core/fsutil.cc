#include "core/fsutil.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <chrono>
#include <cstring>
#include <random>

namespace hanse {

void UniqueFd::Reset(int fd) {
  if (fd_ >= 0) ::close(fd_);
  fd_ = fd;
}

Status UniqueFd::Close(const std::filesystem::path& path_for_errors) {
  if (fd_ < 0) return Status::Ok();
  int fd = Release();
  // Linux closes the fd even when close() reports EINTR: never retry.
  if (::close(fd) != 0 && errno != EINTR) return ErrnoStatus("close", path_for_errors, errno);
  return Status::Ok();
}

Status ErrnoStatus(std::string_view what, const std::filesystem::path& path, int err) {
  std::string m(what);
  m += ' ';
  m += path.string();
  m += ": ";
  m += std::strerror(err);
  return Status::Io(std::move(m));
}

Result<UniqueFd> OpenFd(const std::filesystem::path& path, int flags, int mode) {
  int fd;
  do {
    fd = ::open(path.c_str(), flags | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno == ENOENT) return Status::NotFound("open " + path.string() + ": " + std::strerror(errno));
    return ErrnoStatus("open", path, errno);
  }
  return UniqueFd(fd);
}

Status WriteAll(int fd, std::span<const std::byte> bytes, const std::filesystem::path& path_for_errors) {
  while (!bytes.empty()) {
    ssize_t n = ::write(fd, bytes.data(), bytes.size());
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write", path_for_errors, errno);
    }
    bytes = bytes.subspan(static_cast<size_t>(n));
  }
  return Status::Ok();
}

Result<uint64_t> PreadFull(int fd, uint64_t offset, std::span<std::byte> out,
                           const std::filesystem::path& path_for_errors) {
  uint64_t done = 0;
  while (done < out.size()) {
    ssize_t n = ::pread(fd, out.data() + done, out.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read", path_for_errors, errno);
    }
    if (n == 0) break;  // EOF
    done += static_cast<uint64_t>(n);
  }
  return done;
}

Status Fsync(int fd, const std::filesystem::path& path_for_errors) {
  if (::fsync(fd) != 0) return ErrnoStatus("fsync", path_for_errors, errno);
  return Status::Ok();
}

Status FsyncDir(const std::filesystem::path& dir) {
  auto fd = OpenFd(dir.empty() ? std::filesystem::path(".") : dir, O_RDONLY | O_DIRECTORY);
  if (!fd.ok()) return fd.status();
  HANSE_RETURN_IF_ERROR(Fsync(fd->get(), dir));
  return fd->Close(dir);
}

std::filesystem::path TempPathFor(const std::filesystem::path& target) {
  // Unique per process and call; O_EXCL at open time catches the rest.
  static std::atomic<uint64_t> counter{0};
  thread_local std::mt19937_64 rng(std::random_device{}() ^
                                   static_cast<uint64_t>(std::chrono::steady_clock::now().time_since_epoch().count()));
  // Built with append: "." + std::string trips a GCC 12 -Wrestrict false positive.
  std::string name = ".";
  name.append(target.filename().string());
  name.append(".tmp-");
  name.append(std::to_string(::getpid()));
  name.push_back('-');
  name.append(std::to_string(counter.fetch_add(1)));
  name.push_back('-');
  name.append(std::to_string(rng() % 1000000));
  return target.parent_path() / name;
}

Status RenameDurable(const std::filesystem::path& from, const std::filesystem::path& to) {
  if (::rename(from.c_str(), to.c_str()) != 0) {
    int err = errno;
    return ErrnoStatus("rename " + from.string() + " ->", to, err);
  }
  return FsyncDir(to.parent_path());
}

Status WriteFileAtomic(const std::filesystem::path& path, std::span<const std::byte> bytes) {
  std::filesystem::path tmp = TempPathFor(path);
  auto fd = OpenFd(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644);
  if (!fd.ok()) return fd.status().code() == Code::kNotFound ? Status::Io(fd.status().message()) : fd.status();
  Status st = WriteAll(fd->get(), bytes, tmp);
  if (st.ok()) st = Fsync(fd->get(), tmp);
  if (st.ok()) st = fd->Close(tmp);
  if (st.ok()) st = RenameDurable(tmp, path);
  if (!st.ok()) ::unlink(tmp.c_str());
  return st;
}

Status WriteFileAtomic(const std::filesystem::path& path, std::string_view bytes) {
  return WriteFileAtomic(path, std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
}

Result<std::string> ReadWholeFile(const std::filesystem::path& path) {
  HANSE_ASSIGN_OR_RETURN(UniqueFd fd, OpenFd(path, O_RDONLY));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("stat", path, errno);
  std::string out;
  if (S_ISREG(st.st_mode) && st.st_size > 0) out.reserve(static_cast<size_t>(st.st_size));
  char buf[64 * 1024];
  while (true) {
    ssize_t n = ::read(fd.get(), buf, sizeof buf);
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("read", path, errno);
    }
    if (n == 0) break;
    out.append(buf, static_cast<size_t>(n));
  }
  return out;
}

}  // namespace hanse
