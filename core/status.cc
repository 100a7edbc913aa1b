#include "core/status.h"

#include <cstdio>
#include <cstdlib>

namespace hanse {

std::string_view CodeName(Code c) {
  switch (c) {
    case Code::kOk: return "ok";
    case Code::kInvalidArgument: return "invalid argument";
    case Code::kNotFound: return "not found";
    case Code::kAlreadyExists: return "already exists";
    case Code::kPermissionDenied: return "permission denied";
    case Code::kCorruption: return "corruption";
    case Code::kFailedPrecondition: return "failed precondition";
    case Code::kDisconnected: return "disconnected";
    case Code::kOverloaded: return "overloaded";
    case Code::kDeadlineExceeded: return "deadline exceeded";
    case Code::kUnimplemented: return "unimplemented";
    case Code::kIo: return "i/o error";
    case Code::kInternal: return "internal error";
  }
  return "unknown";
}

std::string Status::ToString() const {
  if (ok()) return "ok";
  return std::string(CodeName(code_)) + ": " + message_;
}

Status Status::WithContext(std::string_view context) const {
  if (ok()) return *this;
  return Status(code_, std::string(context) + ": " + message_);
}

namespace detail {
void CheckFailed(const char* file, int line, const char* expr, const std::string& msg) {
  std::fprintf(stderr, "%s:%d: HANSE_CHECK(%s) failed %s\n", file, line, expr, msg.c_str());
  std::abort();
}
}  // namespace detail

}  // namespace hanse
