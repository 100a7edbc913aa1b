// Status and Result<T>: expected failures as values.
//
// Expected failures (bad input, peer misbehaviour, I/O, timeouts) travel as
// Status / Result<T>; programming errors are HANSE_CHECK assertions. Library
// exceptions (kj::Exception, toml::parse_error, nlohmann::json::exception) are
// turned into Status at the edge of the layer that calls the library.
#pragma once

#include <cstdint>
#include <optional>
#include <sstream>
#include <stdexcept>
#include <string>
#include <string_view>
#include <type_traits>
#include <utility>
#include <variant>

namespace hanse {

enum class Code : uint8_t {
  kOk = 0,
  kInvalidArgument,   // the caller's input is wrong (config, job file, CLI args)
  kNotFound,          // a named thing (file, job, blob, tensor) does not exist
  kAlreadyExists,     // a create that must not overwrite
  kPermissionDenied,  // policy, role or file-mode refusal
  kCorruption,        // bytes that do not decode or do not match their hash
  kFailedPrecondition,// the operation is not valid in the current state
  kDisconnected,      // the peer went away; retrying later may work
  kOverloaded,        // busy; retrying later may work
  kDeadlineExceeded,  // a wait timed out
  kUnimplemented,
  kIo,                // the operating system refused (open, write, fsync, rename)
  kInternal,          // a bug: should not happen
};

std::string_view CodeName(Code c);

class [[nodiscard]] Status {
 public:
  Status() = default;
  Status(Code code, std::string message) : code_(code), message_(std::move(message)) {}

  static Status Ok() { return {}; }
  static Status InvalidArgument(std::string m) { return {Code::kInvalidArgument, std::move(m)}; }
  static Status NotFound(std::string m) { return {Code::kNotFound, std::move(m)}; }
  static Status AlreadyExists(std::string m) { return {Code::kAlreadyExists, std::move(m)}; }
  static Status PermissionDenied(std::string m) { return {Code::kPermissionDenied, std::move(m)}; }
  static Status Corruption(std::string m) { return {Code::kCorruption, std::move(m)}; }
  static Status FailedPrecondition(std::string m) { return {Code::kFailedPrecondition, std::move(m)}; }
  static Status Disconnected(std::string m) { return {Code::kDisconnected, std::move(m)}; }
  static Status Overloaded(std::string m) { return {Code::kOverloaded, std::move(m)}; }
  static Status DeadlineExceeded(std::string m) { return {Code::kDeadlineExceeded, std::move(m)}; }
  static Status Unimplemented(std::string m) { return {Code::kUnimplemented, std::move(m)}; }
  static Status Io(std::string m) { return {Code::kIo, std::move(m)}; }
  static Status Internal(std::string m) { return {Code::kInternal, std::move(m)}; }

  bool ok() const { return code_ == Code::kOk; }
  Code code() const { return code_; }
  const std::string& message() const { return message_; }
  // "corruption: blob 3fa4...: hash mismatch"
  std::string ToString() const;

  // Prefixes context: Status::Io("fsync failed").WithContext("blob store") ->
  // "blob store: fsync failed", same code.
  Status WithContext(std::string_view context) const;

  friend bool operator==(const Status& a, const Status& b) {
    return a.code_ == b.code_ && a.message_ == b.message_;
  }

 private:
  Code code_ = Code::kOk;
  std::string message_;
};

// Holds a T or a non-ok Status. Accessing value() of an error is a bug (throws
// std::logic_error so tests fail loudly rather than reading garbage).
template <class T>
class [[nodiscard]] Result {
 public:
  Result(T value) : v_(std::move(value)) {}  // NOLINT: implicit by design
  Result(Status status) : v_(std::move(status)) {  // NOLINT
    if (std::get<Status>(v_).ok()) v_ = Status::Internal("Result constructed from an ok Status");
  }
  template <class U, std::enable_if_t<std::is_convertible_v<U&&, T> && !std::is_same_v<std::decay_t<U>, T> &&
                                          !std::is_same_v<std::decay_t<U>, Status>,
                                      int> = 0>
  Result(U&& u) : v_(T(std::forward<U>(u))) {}  // NOLINT

  bool ok() const { return std::holds_alternative<T>(v_); }
  explicit operator bool() const { return ok(); }

  const Status& status() const {
    static const Status kOkStatus;
    return ok() ? kOkStatus : std::get<Status>(v_);
  }
  T& value() & { Check(); return std::get<T>(v_); }
  const T& value() const& { Check(); return std::get<T>(v_); }
  T&& value() && { Check(); return std::get<T>(std::move(v_)); }
  T* operator->() { return &value(); }
  const T* operator->() const { return &value(); }
  T& operator*() & { return value(); }
  const T& operator*() const& { return value(); }

 private:
  void Check() const {
    if (!ok()) throw std::logic_error("Result::value() on error: " + std::get<Status>(v_).ToString());
  }
  std::variant<T, Status> v_;
};

namespace detail {
[[noreturn]] void CheckFailed(const char* file, int line, const char* expr, const std::string& msg);
template <class... Args>
std::string Concat(const Args&... args) {
  std::ostringstream os;
  ((os << args << ' '), ...);
  return os.str();
}
}  // namespace detail

}  // namespace hanse

// Invariant check for programming errors; never use it on peer or user input.
#define HANSE_CHECK(cond, ...)                                                                   \
  do {                                                                                           \
    if (!(cond)) ::hanse::detail::CheckFailed(__FILE__, __LINE__, #cond,                        \
                                              ::hanse::detail::Concat("" __VA_OPT__(, ) __VA_ARGS__)); \
  } while (0)

// Propagates a non-ok Status from an expression returning Status.
#define HANSE_RETURN_IF_ERROR(expr)        \
  do {                                     \
    ::hanse::Status _hanse_st = (expr);    \
    if (!_hanse_st.ok()) return _hanse_st; \
  } while (0)

#define HANSE_CONCAT_INNER(a, b) a##b
#define HANSE_CONCAT(a, b) HANSE_CONCAT_INNER(a, b)
// HANSE_ASSIGN_OR_RETURN(auto x, Foo()); declares x from a Result or returns its Status.
#define HANSE_ASSIGN_OR_RETURN(lhs, expr) HANSE_ASSIGN_OR_RETURN_IMPL(HANSE_CONCAT(_hanse_r_, __LINE__), lhs, expr)
#define HANSE_ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                                \
  if (!tmp.ok()) return tmp.status();               \
  lhs = std::move(tmp).value()
