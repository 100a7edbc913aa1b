// libFuzzer target for the envelope decoder (HANSE_FUZZ=ON, clang, ASan+UBSan).
// tests/protocol/fuzz_replay_test.cc links this same entry point into the normal
// build and replays fuzz/corpus/decode/ through it.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <span>

#include "protocol/codec.h"

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  auto bytes = std::as_bytes(std::span<const uint8_t>(data, size));
  auto decoded = hanse::proto::Decode(bytes);
  if (!decoded.ok()) {
    // Every refusal carries a reason.
    if (decoded.status().message().empty()) std::abort();
    return 0;
  }
  // What decodes must re-encode to something that decodes to the same bytes.
  std::string again = hanse::proto::Encode(*decoded);
  auto twice = hanse::proto::Decode(again);
  if (!twice.ok()) {
    std::fprintf(stderr, "re-encoded %s does not decode: %s\n", hanse::proto::KindName(decoded->message),
                 twice.status().ToString().c_str());
    std::abort();
  }
  if (hanse::proto::Encode(*twice) != again) {
    std::fprintf(stderr, "re-encoded %s is not stable\n", hanse::proto::KindName(decoded->message));
    std::abort();
  }
  return 0;
}
