#include "core/keys.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>
#include <system_error>

#include <zmq.h>

#include "core/fsutil.h"

namespace hanse {
namespace fs = std::filesystem;

namespace {

constexpr size_t kZ85KeyLen = 40;
constexpr std::string_view kZ85Alphabet =
    "0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ.-:+=^!/*?&<>()[]{}@%$#";

std::string ModeString(mode_t mode) {
  char buf[8];
  std::snprintf(buf, sizeof buf, "%04o", static_cast<unsigned>(mode & 07777));
  return buf;
}

// Reads a key file and returns its one non-comment line, trimmed.
Result<std::string> ReadKeyLine(const fs::path& file, std::string_view kind) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    std::error_code ec;
    if (!fs::exists(file, ec)) return Status::NotFound(std::string(kind) + " file " + file.string() + ": not found");
    return Status::Io(std::string(kind) + " file " + file.string() + ": cannot open: " + std::strerror(errno));
  }
  std::string line, key;
  int count = 0;
  while (std::getline(in, line)) {
    const auto b = line.find_first_not_of(" \t\r");
    if (b == std::string::npos) continue;
    if (line[b] == '#') {
      // A secret key given where a public one is expected would otherwise load
      // (same format) and fail later with an opaque handshake error.
      if (kind == "public key" && line.find("secret key") != std::string::npos) {
        return Status::Corruption("public key file " + file.string() +
                                  " holds a secret key; give the public key file (.pub) instead");
      }
      continue;
    }
    const auto e = line.find_last_not_of(" \t\r");
    key = line.substr(b, e - b + 1);
    ++count;
  }
  if (count != 1) {
    return Status::Corruption(std::string(kind) + " file " + file.string() + ": expected exactly one key line, found " +
                              std::to_string(count));
  }
  if (!IsValidZ85Key(key)) {
    return Status::Corruption(std::string(kind) + " file " + file.string() +
                              ": not a 40-character Z85 CURVE key");
  }
  return key;
}

Status WriteNew(const fs::path& path, const std::string& text, int mode) {
  int fd;
  do {
    fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, mode);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    if (errno == EEXIST) return Status::AlreadyExists("key file " + path.string() + " already exists; not overwriting");
    return ErrnoStatus("create", path, errno);
  }
  UniqueFd f(fd);
  // The umask may only narrow `mode`; set it exactly so a public file is readable.
  if (::fchmod(f.get(), static_cast<mode_t>(mode)) != 0) return ErrnoStatus("chmod", path, errno);
  HANSE_RETURN_IF_ERROR(WriteAll(f.get(), std::as_bytes(std::span(text.data(), text.size())), path));
  HANSE_RETURN_IF_ERROR(Fsync(f.get(), path));
  return f.Close(path);
}

}  // namespace

bool IsValidZ85Key(const std::string& z85) {
  if (z85.size() != kZ85KeyLen) return false;
  // Each 5-char group encodes a 32-bit word; reject characters outside the
  // alphabet and groups that overflow, which some libzmq versions accept.
  for (size_t g = 0; g < kZ85KeyLen; g += 5) {
    uint64_t v = 0;
    for (size_t i = g; i < g + 5; ++i) {
      const auto d = kZ85Alphabet.find(z85[i]);
      if (d == std::string_view::npos) return false;
      v = v * 85 + d;
    }
    if (v > 0xFFFFFFFFull) return false;
  }
  uint8_t raw[32];
  return zmq_z85_decode(raw, z85.c_str()) != nullptr;
}

Result<KeyPair> GenerateKeyPair() {
  char pub[kZ85KeyLen + 1];
  char sec[kZ85KeyLen + 1];
  if (zmq_curve_keypair(pub, sec) != 0) {
    return Status::Internal(std::string("zmq_curve_keypair failed: ") + zmq_strerror(zmq_errno()) +
                            " (libzmq built without CURVE?)");
  }
  return KeyPair{std::string(pub, kZ85KeyLen), std::string(sec, kZ85KeyLen)};
}

Result<KeyPair> WriteKeyPair(const std::string& name, const fs::path& dir) {
  if (name.empty() || name.find('/') != std::string::npos || name == "." || name == "..") {
    return Status::InvalidArgument("key name '" + name + "' is not a plain file name");
  }
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::Io("create folder " + dir.string() + ": " + ec.message());
  const fs::path secret_file = dir / (name + ".key");
  const fs::path public_file = dir / (name + ".pub");
  // Refuse before creating anything, so a half-written pair never replaces a good one.
  for (const auto& p : {secret_file, public_file}) {
    if (fs::exists(fs::symlink_status(p, ec))) {
      return Status::AlreadyExists("key file " + p.string() + " already exists; not overwriting");
    }
  }
  HANSE_ASSIGN_OR_RETURN(KeyPair kp, GenerateKeyPair());
  HANSE_RETURN_IF_ERROR(WriteNew(secret_file,
                                 "# hanse CURVE secret key (Z85) for " + name + "; keep private (mode 0600)\n" +
                                     kp.secret_key + "\n",
                                 0600));
  Status st = WriteNew(public_file, kp.public_key + "\n", 0644);
  if (!st.ok()) {
    fs::remove(secret_file, ec);  // ours: created just above with O_EXCL
    return st;
  }
  HANSE_RETURN_IF_ERROR(FsyncDir(dir));
  return kp;
}

Result<std::string> LoadPublicKey(const fs::path& file) { return ReadKeyLine(file, "public key"); }

Status CheckSecretKeyFile(const fs::path& file) {
  struct stat st {};
  if (::stat(file.c_str(), &st) != 0) {
    if (errno == ENOENT) return Status::NotFound("secret key file " + file.string() + ": not found");
    return ErrnoStatus("stat secret key file", file, errno);
  }
  if (!S_ISREG(st.st_mode)) return Status::InvalidArgument("secret key file " + file.string() + ": not a regular file");
  if ((st.st_mode & 077) != 0) {
    return Status::PermissionDenied("secret key file " + file.string() + " is accessible by others (mode " +
                                    ModeString(st.st_mode) + "); run chmod 600 " + file.string());
  }
  return Status::Ok();
}

Result<std::string> LoadSecretKey(const fs::path& file) {
  HANSE_RETURN_IF_ERROR(CheckSecretKeyFile(file));
  return ReadKeyLine(file, "secret key");
}

Result<std::string> PublicKeyOf(const std::string& secret_z85) {
  if (!IsValidZ85Key(secret_z85)) return Status::InvalidArgument("secret key is not a 40-character Z85 key");
  char pub[kZ85KeyLen + 1];
  if (zmq_curve_public(pub, secret_z85.c_str()) != 0) {
    return Status::Internal(std::string("zmq_curve_public failed: ") + zmq_strerror(zmq_errno()));
  }
  return std::string(pub, kZ85KeyLen);
}

}  // namespace hanse
