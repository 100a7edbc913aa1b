// Envelope <-> bytes. The only code that touches Cap'n Proto readers; every
// kj::Exception is turned into a Status here and never escapes.
#pragma once

#include <cstdint>
#include <span>
#include <string>

#include "core/status.h"
#include "protocol/messages.h"

namespace hanse::proto {

struct DecodeLimits {
  uint64_t traversal_words = 0;  // 0 = derived from the frame size (frame words x 2, capped)
  int nesting = 16;
  uint64_t max_frame_bytes = (4ull << 20) + (1ull << 20);
  // Every kind but BlobChunk must fit in this (admin replies, tasks, updates).
  uint64_t max_control_bytes = 1ull << 20;
};

std::string Encode(const Envelope& envelope);
// Same bytes, written into `out` (its capacity is reused: hot paths keep one
// buffer per chunk in flight instead of touching fresh pages for each chunk).
void EncodeTo(const Envelope& envelope, std::string& out);

// Errors: kCorruption (not a valid message, too large, too deep, a hash field that
// is not 64 lowercase hex, an enum value or reason code this version does not know;
// the message says why),
// kFailedPrecondition with "incompatible protocol version N" for a version mismatch.
Result<Envelope> Decode(std::span<const std::byte> frame, const DecodeLimits& limits = {});
Result<Envelope> Decode(const std::string& frame, const DecodeLimits& limits = {});

}  // namespace hanse::proto
