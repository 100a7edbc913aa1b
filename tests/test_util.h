// Shared test helpers: status matchers, temp folders, child processes with
// timeouts. Header-only so every test binary can include it.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "core/status.h"

#define ASSERT_OK(expr)                                          \
  do {                                                           \
    const auto& _s = (expr);                                     \
    ASSERT_TRUE(_s.ok()) << #expr << ": " << _s.ToString();      \
  } while (0)
#define EXPECT_OK(expr)                                          \
  do {                                                           \
    const auto& _s = (expr);                                     \
    EXPECT_TRUE(_s.ok()) << #expr << ": " << _s.ToString();      \
  } while (0)

namespace hanse::testing {

inline std::string ToString(const Status& s) { return s.ToString(); }
template <class T>
std::string ToString(const Result<T>& r) { return r.status().ToString(); }

// A fresh folder under $TMPDIR, removed at destruction (set HANSE_KEEP_TMP=1 to keep).
class TempDir {
 public:
  TempDir() {
    std::string tmpl = (std::filesystem::temp_directory_path() / "hanse-test-XXXXXX").string();
    std::vector<char> buf(tmpl.begin(), tmpl.end());
    buf.push_back('\0');
    if (!mkdtemp(buf.data())) throw std::runtime_error("mkdtemp failed");
    path_ = buf.data();
  }
  ~TempDir() {
    if (!std::getenv("HANSE_KEEP_TMP")) {
      std::error_code ec;
      std::filesystem::remove_all(path_, ec);
    }
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::filesystem::path operator/(const std::string& p) const { return path_ / p; }

 private:
  std::filesystem::path path_;
};

inline void WriteFile(const std::filesystem::path& p, const std::string& text) {
  std::filesystem::create_directories(p.parent_path());
  std::ofstream f(p, std::ios::binary);
  f << text;
}

inline std::string ReadFile(const std::filesystem::path& p) {
  std::ifstream f(p, std::ios::binary);
  std::stringstream ss;
  ss << f.rdbuf();
  return ss.str();
}

inline std::filesystem::path BinDir() { return HANSE_BIN_DIR; }
inline std::filesystem::path SourceDir() { return HANSE_SOURCE_DIR; }

// A child process this test started; killed (SIGKILL) at destruction if still running.
class Child {
 public:
  // Starts argv[0] with arguments; stdout+stderr go to `log_file`.
  static Child Start(const std::vector<std::string>& argv, const std::filesystem::path& log_file,
                     const std::vector<std::string>& extra_env = {}) {
    pid_t pid = fork();
    if (pid < 0) throw std::runtime_error("fork failed");
    if (pid == 0) {
      int fd = open(log_file.c_str(), O_WRONLY | O_CREAT | O_APPEND, 0644);
      if (fd >= 0) {
        dup2(fd, 1);
        dup2(fd, 2);
        close(fd);
      }
      for (const auto& e : extra_env) putenv(strdup(e.c_str()));
      std::vector<char*> args;
      for (const auto& a : argv) args.push_back(const_cast<char*>(a.c_str()));
      args.push_back(nullptr);
      execv(args[0], args.data());
      _exit(127);
    }
    Child c;
    c.pid_ = pid;
    c.log_ = log_file;
    return c;
  }
  Child() = default;
  Child(Child&& o) noexcept : pid_(o.pid_), log_(std::move(o.log_)), status_(o.status_) { o.pid_ = -1; }
  Child& operator=(Child&& o) noexcept {
    std::swap(pid_, o.pid_);
    std::swap(log_, o.log_);
    std::swap(status_, o.status_);
    return *this;
  }
  ~Child() {
    if (pid_ > 0 && !status_) {
      kill(pid_, SIGKILL);
      int st;
      waitpid(pid_, &st, 0);
    }
  }
  pid_t pid() const { return pid_; }
  void Signal(int sig) const {
    if (pid_ > 0 && !status_) kill(pid_, sig);
  }
  // Waits up to `timeout`; returns the raw wait status, or nullopt if still running.
  std::optional<int> Wait(std::chrono::milliseconds timeout) {
    if (status_) return status_;
    auto end = std::chrono::steady_clock::now() + timeout;
    while (true) {
      int st = 0;
      pid_t r = waitpid(pid_, &st, WNOHANG);
      if (r == pid_) {
        status_ = st;
        return status_;
      }
      if (std::chrono::steady_clock::now() >= end) return std::nullopt;
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
    }
  }
  // Exit code when exited normally; -signal when killed; nullopt on timeout.
  std::optional<int> WaitExitCode(std::chrono::milliseconds timeout) {
    auto st = Wait(timeout);
    if (!st) return std::nullopt;
    if (WIFEXITED(*st)) return WEXITSTATUS(*st);
    if (WIFSIGNALED(*st)) return -WTERMSIG(*st);
    return std::nullopt;
  }
  bool Running() {
    return !Wait(std::chrono::milliseconds(0)).has_value();
  }
  std::string Log() const { return ReadFile(log_); }
  const std::filesystem::path& log_file() const { return log_; }

 private:
  pid_t pid_ = -1;
  std::filesystem::path log_;
  std::optional<int> status_;
};

struct RunResult {
  int exit_code = -1;   // -1: timed out (the child was killed)
  std::string output;   // stdout + stderr
};

// Runs a command to completion (or kills it after `timeout`).
inline RunResult Run(const std::vector<std::string>& argv, const std::filesystem::path& log_file,
                     std::chrono::milliseconds timeout = std::chrono::seconds(60),
                     const std::vector<std::string>& extra_env = {}) {
  std::filesystem::remove(log_file);
  Child c = Child::Start(argv, log_file, extra_env);
  auto code = c.WaitExitCode(timeout);
  RunResult r;
  if (!code) {
    c.Signal(SIGKILL);
    c.Wait(std::chrono::seconds(5));
    r.exit_code = -1;
  } else {
    r.exit_code = *code;
  }
  r.output = ReadFile(log_file);
  return r;
}

// Polls `pred` every 20 ms until it is true or `timeout` passes.
template <class Pred>
bool WaitFor(Pred pred, std::chrono::milliseconds timeout) {
  auto end = std::chrono::steady_clock::now() + timeout;
  while (std::chrono::steady_clock::now() < end) {
    if (pred()) return true;
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  return pred();
}

// A TCP port that was free a moment ago on 127.0.0.1 (bind to port 0, read it back).
int FreePort();

}  // namespace hanse::testing

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
inline int hanse::testing::FreePort() {
  int fd = socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in a{};
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  a.sin_port = 0;
  bind(fd, reinterpret_cast<sockaddr*>(&a), sizeof a);
  socklen_t len = sizeof a;
  getsockname(fd, reinterpret_cast<sockaddr*>(&a), &len);
  int port = ntohs(a.sin_port);
  close(fd);
  return port;
}
