#include "core/blob_store.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <vector>

#include "core/fsutil.h"
#include "core/sha256.h"

namespace hanse {
namespace fs = std::filesystem;

namespace {

constexpr size_t kIoBlock = 1 << 20;  // streaming block for hashing and copying
// Writer: start writeback of dirty pages every this many bytes, so Finish()'s
// fsync does not pay for the whole blob at once.
constexpr uint64_t kWritebackEvery = 8ull << 20;

Status InvalidHash(std::string_view hash) {
  std::string shown(hash.substr(0, 80));
  for (char& c : shown)
    if (static_cast<unsigned char>(c) < 0x20 || static_cast<unsigned char>(c) > 0x7e) c = '?';
  return Status::InvalidArgument("invalid blob hash '" + shown + "': expected 64 lowercase hex characters");
}

// mkdir that tolerates an existing folder; fsyncs the parent when it created one,
// so that a blob renamed into a fresh fan-out folder is reachable after a crash.
Status EnsureDir(const fs::path& dir) {
  if (::mkdir(dir.c_str(), 0755) == 0) return FsyncDir(dir.parent_path());
  if (errno == EEXIST) {
    struct stat st {};
    if (::stat(dir.c_str(), &st) == 0 && S_ISDIR(st.st_mode)) return Status::Ok();
    return Status::Io("mkdir " + dir.string() + ": exists and is not a folder");
  }
  return ErrnoStatus("mkdir", dir, errno);
}

// Streams a file through SHA-256 with one reused buffer.
Result<std::string> HashFile(const fs::path& path) {
  HANSE_ASSIGN_OR_RETURN(UniqueFd fd, OpenFd(path, O_RDONLY));
  std::vector<std::byte> buf(kIoBlock);
  Sha256 h;
  uint64_t offset = 0;
  while (true) {
    HANSE_ASSIGN_OR_RETURN(uint64_t n, PreadFull(fd.get(), offset, buf, path));
    h.Update(std::span<const std::byte>(buf.data(), n));
    offset += n;
    if (n < buf.size()) break;
  }
  return h.Finish();
}

// Size of a regular file, or kNotFound.
Result<uint64_t> FileSize(const fs::path& path) {
  struct stat st {};
  if (::stat(path.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::NotFound("no such file " + path.string());
    return ErrnoStatus("stat", path, errno);
  }
  if (!S_ISREG(st.st_mode)) return Status::Io(path.string() + " is not a regular file");
  return static_cast<uint64_t>(st.st_size);
}

class FileWriter final : public BlobStore::Writer {
 public:
  FileWriter(BlobStore& store, fs::path tmp, UniqueFd fd)
      : store_(store), tmp_(std::move(tmp)), fd_(std::move(fd)) {
    buffer_.reserve(kIoBlock);
  }
  ~FileWriter() override {
    // Abandoned (or failed) writers leave nothing behind.
    if (!renamed_) ::unlink(tmp_.c_str());
  }

  Status Write(std::span<const std::byte> bytes) override {
    if (finished_) return Status::FailedPrecondition("blob writer: Write after Finish");
    if (!error_.ok()) return error_;
    hash_.Update(bytes);
    while (!bytes.empty()) {
      size_t take = std::min(bytes.size(), kIoBlock - buffer_.size());
      if (buffer_.empty() && take == kIoBlock) {
        // Large aligned writes skip the copy.
        HANSE_RETURN_IF_ERROR(Remember(WriteOut(bytes.first(take))));
      } else {
        buffer_.insert(buffer_.end(), bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(take));
        if (buffer_.size() == kIoBlock) HANSE_RETURN_IF_ERROR(Remember(Flush()));
      }
      bytes = bytes.subspan(take);
    }
    return Status::Ok();
  }

  Result<std::string> Finish() override {
    if (finished_) return Status::FailedPrecondition("blob writer: Finish called twice");
    finished_ = true;
    if (!error_.ok()) return error_;
    HANSE_RETURN_IF_ERROR(Flush());
    HANSE_RETURN_IF_ERROR(Fsync(fd_.get(), tmp_));
    HANSE_RETURN_IF_ERROR(fd_.Close(tmp_));
    std::string hash = hash_.Finish();
    fs::path dest = store_.PathOf(hash);
    HANSE_RETURN_IF_ERROR(EnsureDir(dest.parent_path()));
    // rename() replaces an existing blob with identical bytes: harmless, and it
    // repairs a blob that had been corrupted on disk.
    HANSE_RETURN_IF_ERROR(RenameDurable(tmp_, dest));
    renamed_ = true;
    return hash;
  }

 private:
  Status Remember(Status st) {
    if (!st.ok()) error_ = st;
    return st;
  }
  Status Flush() {
    if (buffer_.empty()) return Status::Ok();
    Status st = WriteOut(buffer_);
    buffer_.clear();
    return st;
  }
  Status WriteOut(std::span<const std::byte> bytes) {
    HANSE_RETURN_IF_ERROR(WriteAll(fd_.get(), bytes, tmp_));
    written_ += bytes.size();
    if (written_ - writeback_started_ >= kWritebackEvery) {
      // Hint only: failure here is harmless, the final fsync reports real errors.
      (void)::sync_file_range(fd_.get(), static_cast<off_t>(writeback_started_),
                              static_cast<off_t>(written_ - writeback_started_), SYNC_FILE_RANGE_WRITE);
      writeback_started_ = written_;
    }
    return Status::Ok();
  }

  BlobStore& store_;  // borrowed: the store outlives its writers
  fs::path tmp_;
  UniqueFd fd_;
  Sha256 hash_;
  std::vector<std::byte> buffer_;
  uint64_t written_ = 0;
  uint64_t writeback_started_ = 0;
  Status error_;
  bool finished_ = false;
  bool renamed_ = false;
};

}  // namespace

bool IsValidHash(std::string_view hex) {
  if (hex.size() != 64) return false;
  for (char c : hex)
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  return true;
}

Result<std::unique_ptr<BlobStore>> BlobStore::Open(const fs::path& root) {
  std::error_code ec;
  for (const char* sub : {"blobs", "partial", "tmp"}) {
    fs::create_directories(root / sub, ec);
    if (ec) return Status::Io("blob store: cannot create " + (root / sub).string() + ": " + ec.message());
  }
  HANSE_RETURN_IF_ERROR(FsyncDir(root));
  return std::unique_ptr<BlobStore>(new BlobStore(root));
}

fs::path BlobStore::PathOf(std::string_view hash) const {
  if (!IsValidHash(hash)) return {};
  return root_ / "blobs" / std::string(hash.substr(0, 2)) / std::string(hash);
}

bool BlobStore::Contains(std::string_view hash) const {
  if (!IsValidHash(hash)) return false;
  struct stat st {};
  return ::stat(PathOf(hash).c_str(), &st) == 0 && S_ISREG(st.st_mode);
}

Result<uint64_t> BlobStore::Size(std::string_view hash) const {
  if (!IsValidHash(hash)) return InvalidHash(hash);
  auto size = FileSize(PathOf(hash));
  if (!size.ok() && size.status().code() == Code::kNotFound)
    return Status::NotFound("blob " + std::string(hash) + " not in store " + root_.string());
  return size;
}

Result<std::string> BlobStore::Put(std::span<const std::byte> bytes) {
  std::string hash = Sha256Hex(bytes);
  fs::path dest = PathOf(hash);
  // Idempotent: an existing blob of the right size is kept (its bytes were
  // hashed when it came in); a wrong size means damage, so it is rewritten.
  auto size = FileSize(dest);
  if (size.ok() && *size == bytes.size()) return hash;
  HANSE_RETURN_IF_ERROR(EnsureDir(dest.parent_path()));
  HANSE_RETURN_IF_ERROR(WriteFileAtomic(dest, bytes).WithContext("blob store"));
  return hash;
}

Result<std::string> BlobStore::Put(std::string_view bytes) {
  return Put(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
}

Result<std::string> BlobStore::PutFile(const fs::path& file) {
  HANSE_ASSIGN_OR_RETURN(UniqueFd in, OpenFd(file, O_RDONLY));
  HANSE_ASSIGN_OR_RETURN(std::unique_ptr<Writer> w, NewWriter());
  std::vector<std::byte> buf(kIoBlock);
  uint64_t offset = 0;
  while (true) {
    HANSE_ASSIGN_OR_RETURN(uint64_t n, PreadFull(in.get(), offset, buf, file));
    if (n > 0) HANSE_RETURN_IF_ERROR(w->Write(std::span<const std::byte>(buf.data(), n)));
    offset += n;
    if (n < buf.size()) break;
  }
  return w->Finish();
}

Result<std::string> BlobStore::Get(std::string_view hash) const {
  if (!IsValidHash(hash)) return InvalidHash(hash);
  fs::path path = PathOf(hash);
  auto bytes = ReadWholeFile(path);
  if (!bytes.ok()) {
    if (bytes.status().code() == Code::kNotFound)
      return Status::NotFound("blob " + std::string(hash) + " not in store " + root_.string());
    return bytes.status();
  }
  std::string actual = Sha256Hex(*bytes);
  if (actual != hash)
    return Status::Corruption("blob " + path.string() + " is corrupted: its bytes hash to " + actual);
  return bytes;
}

Status BlobStore::Verify(std::string_view hash) const {
  if (!IsValidHash(hash)) return InvalidHash(hash);
  fs::path path = PathOf(hash);
  auto actual = HashFile(path);
  if (!actual.ok()) {
    if (actual.status().code() == Code::kNotFound)
      return Status::NotFound("blob " + std::string(hash) + " not in store " + root_.string());
    return actual.status();
  }
  if (*actual != hash)
    return Status::Corruption("blob " + path.string() + " is corrupted: its bytes hash to " + *actual);
  return Status::Ok();
}

Result<uint64_t> BlobStore::ReadAt(std::string_view hash, uint64_t offset, std::span<std::byte> out) const {
  if (!IsValidHash(hash)) return InvalidHash(hash);
  fs::path path = PathOf(hash);
  auto fd = OpenFd(path, O_RDONLY);
  if (!fd.ok()) {
    if (fd.status().code() == Code::kNotFound)
      return Status::NotFound("blob " + std::string(hash) + " not in store " + root_.string());
    return fd.status();
  }
  struct stat st {};
  if (::fstat(fd->get(), &st) != 0) return ErrnoStatus("stat", path, errno);
  uint64_t size = static_cast<uint64_t>(st.st_size);
  if (offset > size)
    return Status::InvalidArgument("read of blob " + std::string(hash) + " at offset " + std::to_string(offset) +
                                   " beyond its size " + std::to_string(size));
  return PreadFull(fd->get(), offset, out, path);
}

Status BlobStore::Remove(std::string_view hash) {
  if (!IsValidHash(hash)) return InvalidHash(hash);
  fs::path path = PathOf(hash);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return Status::Ok();  // already gone: removal is idempotent
    return ErrnoStatus("unlink", path, errno);
  }
  return FsyncDir(path.parent_path());
}

Result<uint64_t> BlobStore::RemoveStaleTemps(std::chrono::seconds min_age) {
  const auto cutoff = fs::file_time_type::clock::now() - min_age;
  uint64_t removed = 0;
  std::error_code ec;
  auto consider = [&](const fs::directory_entry& e, bool is_temp) -> Status {
    if (!is_temp || !e.is_regular_file(ec)) return Status::Ok();
    auto mtime = e.last_write_time(ec);
    if (ec || mtime > cutoff) return Status::Ok();  // vanished meanwhile, or maybe still being written
    if (::unlink(e.path().c_str()) == 0) {
      ++removed;
    } else if (errno != ENOENT) {
      return ErrnoStatus("unlink", e.path(), errno);
    }
    return Status::Ok();
  };
  // Writer temps: everything in tmp/.
  for (fs::directory_iterator it(root_ / "tmp", ec), end; !ec && it != end; it.increment(ec))
    HANSE_RETURN_IF_ERROR(consider(*it, true));
  if (ec) return Status::Io("blob store: cannot list " + (root_ / "tmp").string() + ": " + ec.message());
  // Put temps: ".<hash>.tmp-..." next to the blobs in the fan-out folders.
  for (fs::directory_iterator dir(root_ / "blobs", ec), end; !ec && dir != end; dir.increment(ec)) {
    if (!dir->is_directory(ec)) continue;
    std::error_code inner;
    for (fs::directory_iterator it(dir->path(), inner), e2; !inner && it != e2; it.increment(inner)) {
      std::string name = it->path().filename().string();
      HANSE_RETURN_IF_ERROR(consider(*it, name.starts_with(".") && name.find(".tmp-") != std::string::npos));
    }
    if (inner) return Status::Io("blob store: cannot list " + dir->path().string() + ": " + inner.message());
  }
  if (ec) return Status::Io("blob store: cannot list " + (root_ / "blobs").string() + ": " + ec.message());
  return removed;
}

// ---- Partial blobs ----

uint64_t BlobStore::PartialSize(std::string_view hash) const {
  if (!IsValidHash(hash)) return 0;
  auto size = FileSize(root_ / "partial" / std::string(hash));
  return size.ok() ? *size : 0;
}

Status BlobStore::AppendPartial(std::string_view hash, uint64_t offset, std::span<const std::byte> bytes) {
  if (!IsValidHash(hash)) return InvalidHash(hash);
  fs::path path = root_ / "partial" / std::string(hash);
  HANSE_ASSIGN_OR_RETURN(UniqueFd fd, OpenFd(path, O_WRONLY | O_CREAT, 0644));
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) return ErrnoStatus("stat", path, errno);
  uint64_t held = static_cast<uint64_t>(st.st_size);
  if (held != offset)
    return Status::FailedPrecondition("partial blob " + std::string(hash) + " holds " + std::to_string(held) +
                                      " bytes; append at offset " + std::to_string(offset) + " refused");
  // pwrite at the checked offset (not O_APPEND) so a retried write cannot land twice.
  size_t done = 0;
  while (done < bytes.size()) {
    ssize_t n = ::pwrite(fd.get(), bytes.data() + done, bytes.size() - done, static_cast<off_t>(offset + done));
    if (n < 0) {
      if (errno == EINTR) continue;
      return ErrnoStatus("write", path, errno);
    }
    done += static_cast<size_t>(n);
  }
  HANSE_RETURN_IF_ERROR(Fsync(fd.get(), path));
  HANSE_RETURN_IF_ERROR(fd.Close(path));
  // The first append created the file: make its folder entry durable too.
  if (held == 0) HANSE_RETURN_IF_ERROR(FsyncDir(path.parent_path()));
  return Status::Ok();
}

Status BlobStore::CommitPartial(std::string_view hash) {
  if (!IsValidHash(hash)) return InvalidHash(hash);
  fs::path path = root_ / "partial" / std::string(hash);
  auto actual = HashFile(path);
  if (!actual.ok()) {
    if (actual.status().code() == Code::kNotFound)
      return Status::NotFound("no partial blob " + std::string(hash) + " in store " + root_.string());
    return actual.status();
  }
  if (*actual != hash) {
    Status discard = DiscardPartial(hash);
    std::string m = "partial blob " + path.string() + ": expected hash " + std::string(hash) + ", actual " + *actual +
                    "; discarded";
    if (!discard.ok()) m += " (removal failed: " + discard.message() + ")";
    return Status::Corruption(std::move(m));
  }
  fs::path dest = PathOf(hash);
  HANSE_RETURN_IF_ERROR(EnsureDir(dest.parent_path()));
  HANSE_RETURN_IF_ERROR(RenameDurable(path, dest));
  return FsyncDir(path.parent_path());
}

Status BlobStore::DiscardPartial(std::string_view hash) {
  if (!IsValidHash(hash)) return InvalidHash(hash);
  fs::path path = root_ / "partial" / std::string(hash);
  if (::unlink(path.c_str()) != 0) {
    if (errno == ENOENT) return Status::Ok();
    return ErrnoStatus("unlink", path, errno);
  }
  return FsyncDir(path.parent_path());
}

Result<std::unique_ptr<BlobStore::Writer>> BlobStore::NewWriter() {
  fs::path tmp = TempPathFor(root_ / "tmp" / "blob");
  HANSE_ASSIGN_OR_RETURN(UniqueFd fd, OpenFd(tmp, O_WRONLY | O_CREAT | O_EXCL, 0644));
  return std::unique_ptr<Writer>(std::make_unique<FileWriter>(*this, std::move(tmp), std::move(fd)));
}

}  // namespace hanse
