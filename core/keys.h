// CURVE keys on disk. NAME.pub holds the Z85 public key (40 chars + newline);
// NAME.key holds the Z85 secret key, mode 0600, and is never overwritten.
// Loading a secret key readable by group or others is refused, as ssh does.
//
// File formats (both text): blank lines and lines starting with '#' are
// ignored; exactly one other line must remain, holding the 40-char Z85 key
// (surrounding whitespace ignored). WriteKeyPair writes
//   NAME.key: "# hanse CURVE secret key (Z85) for NAME; keep private (mode 0600)\n<Z85>\n"
//   NAME.pub: "<Z85>\n"
#pragma once

#include <filesystem>
#include <string>

#include "core/status.h"

namespace hanse {

struct KeyPair {
  std::string public_key;  // Z85, 40 chars
  std::string secret_key;  // Z85, 40 chars
};

Result<KeyPair> GenerateKeyPair();
// Writes DIR/NAME.key (0600, O_EXCL) and DIR/NAME.pub. kAlreadyExists if either exists.
Result<KeyPair> WriteKeyPair(const std::string& name, const std::filesystem::path& dir);
// Reads a Z85 public key file; errors name the file.
Result<std::string> LoadPublicKey(const std::filesystem::path& file);
// Reads a secret key file; kPermissionDenied when its mode allows group/other access.
Result<std::string> LoadSecretKey(const std::filesystem::path& file);
// Checks that `file` is a regular file with no group/other permission bits,
// without reading it: kNotFound if missing, kPermissionDenied (with a chmod
// hint) if accessible by others. LoadSecretKey calls it; config loading too.
Status CheckSecretKeyFile(const std::filesystem::path& file);
// Derives the public key of a Z85 secret key.
Result<std::string> PublicKeyOf(const std::string& secret_z85);
// True when `z85` is a 40-char Z85 string that decodes to 32 bytes.
bool IsValidZ85Key(const std::string& z85);

}  // namespace hanse
