// SHA-256 (OpenSSL EVP), incremental and one-shot; digests as 64 lowercase hex chars.
#pragma once

#include <cstddef>
#include <memory>
#include <span>
#include <string>
#include <string_view>

namespace hanse {

// Incremental hasher. Not thread-safe; one instance per stream. Movable.
class Sha256 {
 public:
  Sha256();
  ~Sha256();
  Sha256(Sha256&&) noexcept;
  Sha256& operator=(Sha256&&) noexcept;
  Sha256(const Sha256&) = delete;
  Sha256& operator=(const Sha256&) = delete;

  void Update(std::span<const std::byte> bytes);
  void Update(std::string_view bytes);
  // Returns the hex digest and resets the hasher for a new stream.
  std::string Finish();

 private:
  struct Impl;  // keeps EVP_MD_CTX out of this header
  std::unique_ptr<Impl> impl_;
};

std::string Sha256Hex(std::span<const std::byte> bytes);
std::string Sha256Hex(std::string_view bytes);

}  // namespace hanse
