#include "core/sha256.h"

#include <openssl/evp.h>

#include "core/status.h"

namespace hanse {

struct Sha256::Impl {
  EVP_MD_CTX* ctx = nullptr;
  Impl() {
    ctx = EVP_MD_CTX_new();
    HANSE_CHECK(ctx != nullptr, "EVP_MD_CTX_new failed");
    Reset();
  }
  ~Impl() { EVP_MD_CTX_free(ctx); }
  void Reset() { HANSE_CHECK(EVP_DigestInit_ex(ctx, EVP_sha256(), nullptr) == 1, "EVP_DigestInit_ex failed"); }
};

Sha256::Sha256() : impl_(std::make_unique<Impl>()) {}
Sha256::~Sha256() = default;
Sha256::Sha256(Sha256&&) noexcept = default;
Sha256& Sha256::operator=(Sha256&&) noexcept = default;

void Sha256::Update(std::span<const std::byte> bytes) {
  if (bytes.empty()) return;
  HANSE_CHECK(EVP_DigestUpdate(impl_->ctx, bytes.data(), bytes.size()) == 1, "EVP_DigestUpdate failed");
}

void Sha256::Update(std::string_view bytes) {
  Update(std::as_bytes(std::span<const char>(bytes.data(), bytes.size())));
}

std::string Sha256::Finish() {
  unsigned char digest[EVP_MAX_MD_SIZE];
  unsigned int len = 0;
  HANSE_CHECK(EVP_DigestFinal_ex(impl_->ctx, digest, &len) == 1 && len == 32, "EVP_DigestFinal_ex failed");
  impl_->Reset();
  static constexpr char kHex[] = "0123456789abcdef";
  std::string out(64, '0');
  for (unsigned i = 0; i < 32; ++i) {
    out[2 * i] = kHex[digest[i] >> 4];
    out[2 * i + 1] = kHex[digest[i] & 0xf];
  }
  return out;
}

std::string Sha256Hex(std::span<const std::byte> bytes) {
  Sha256 h;
  h.Update(bytes);
  return h.Finish();
}

std::string Sha256Hex(std::string_view bytes) {
  Sha256 h;
  h.Update(bytes);
  return h.Finish();
}

}  // namespace hanse
