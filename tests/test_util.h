// Shared test helpers: status matchers, temp folders, child processes with
// timeouts, and a hanse deployment of real binaries on 127.0.0.1. Header-only so
// every test binary can include it.
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

#include "core/config.h"
#include "core/status.h"

// ASSERT_OK(expr) / EXPECT_OK(expr): `expr` is a Status or a Result<T>; on
// failure the message names the expression and prints the status.
#define ASSERT_OK(expr) HANSE_TEST_OK_(FAIL, expr, #expr)
#define EXPECT_OK(expr) HANSE_TEST_OK_(ADD_FAILURE, expr, #expr)
#define HANSE_TEST_OK_(fail, expr, text)                                                  \
  do {                                                                                    \
    const auto& hanse_ok_value_ = (expr);                                                 \
    const ::hanse::Status& hanse_ok_status_ = ::hanse::testing::AsStatus(hanse_ok_value_); \
    if (!hanse_ok_status_.ok()) fail() << text << ": " << hanse_ok_status_.ToString();    \
  } while (0)

namespace hanse::testing {

// The Status of a Status or of a Result<T> (ok when it holds a value).
inline const Status& AsStatus(const Status& s) { return s; }
template <class T>
const Status& AsStatus(const Result<T>& r) { return r.status(); }

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

// `text` cut at every `sep` (a trailing separator adds no empty last piece).
inline std::vector<std::string> Split(const std::string& text, char sep = '\n') {
  std::vector<std::string> out;
  std::stringstream ss(text);
  std::string item;
  while (std::getline(ss, item, sep)) out.push_back(item);
  return out;
}

// How many times `what` occurs in `text` (overlapping occurrences count).
inline size_t CountOf(const std::string& text, const std::string& what) {
  size_t n = 0;
  for (size_t p = text.find(what); p != std::string::npos; p = text.find(what, p + 1)) ++n;
  return n;
}

// A field of /proc/self/status in KiB ("VmRSS:", "VmHWM:"); -1 when missing.
inline long ProcStatusKb(const char* field) {
  std::ifstream f("/proc/self/status");
  std::string line;
  while (std::getline(f, line)) {
    if (line.rfind(field, 0) == 0) return std::stol(line.substr(std::strlen(field)));
  }
  return -1;
}

// ASan's quarantine keeps freed memory resident, so RSS is no measure there.
#if defined(__SANITIZE_ADDRESS__)
inline constexpr bool kRssMeaningful = false;
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
inline constexpr bool kRssMeaningful = false;
#else
inline constexpr bool kRssMeaningful = true;
#endif
#else
inline constexpr bool kRssMeaningful = true;
#endif

inline std::filesystem::path BinDir() { return HANSE_BIN_DIR; }
inline std::filesystem::path SourceDir() { return HANSE_SOURCE_DIR; }
// A built executable: BinDir()/name.
inline std::string Bin(const std::string& name) { return (BinDir() / name).string(); }

// Debian's Fashion-MNIST (package dataset-fashion-mnist): train-* and t10k-* IDX files, gzipped.
inline std::filesystem::path FashionMnistDir() { return "/usr/share/datasets/fashion-mnist"; }
inline bool HaveFashionMnist() { return std::filesystem::exists(FashionMnistDir() / "train-images-idx3-ubyte.gz"); }
// Those files as a dataset "fashion-mnist" with separate test files, capped at
// `max_train` / `max_test` examples (0: all).
inline DatasetConfig FashionMnistConfig(uint64_t max_train = 0, uint64_t max_test = 0) {
  DatasetConfig c;
  c.name = "fashion-mnist";
  c.format = "idx";
  c.train_images = FashionMnistDir() / "train-images-idx3-ubyte.gz";
  c.train_labels = FashionMnistDir() / "train-labels-idx1-ubyte.gz";
  c.test_images = FashionMnistDir() / "t10k-images-idx3-ubyte.gz";
  c.test_labels = FashionMnistDir() / "t10k-labels-idx1-ubyte.gz";
  c.max_train_examples = max_train;
  c.max_test_examples = max_test;
  return c;
}

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
// "tcp://127.0.0.1:PORT" on a port that was free a moment ago.
inline std::string LocalEndpoint() { return "tcp://127.0.0.1:" + std::to_string(FreePort()); }

// Sends SIGTERM to each running child, then waits up to `timeout` for each in
// turn; those still running are killed (SIGKILL) and their pids returned.
inline std::vector<pid_t> StopAll(const std::vector<Child*>& children, std::chrono::milliseconds timeout) {
  for (Child* c : children) c->Signal(SIGTERM);
  std::vector<pid_t> ignored;
  for (Child* c : children) {
    if (c->pid() > 0 && !c->Wait(timeout)) {
      ignored.push_back(c->pid());
      c->Signal(SIGKILL);
    }
  }
  return ignored;
}

// ---- A hanse deployment of the real binaries on 127.0.0.1 ----
//
// Config files name keys as keys/NAME.key and keys/NAME.pub and every path
// relative to the folder that holds them, as `hanse keygen --out keys` writes.

// A client config (client.toml) for `me`, trusting keys/<server>.pub as the coordinator's key.
inline std::string ClientToml(const std::string& endpoint, const std::string& me,
                              const std::string& server = "coordinator") {
  return "coordinator = \"" + endpoint + "\"\ncoordinator_public_key = \"keys/" + server + ".pub\"\nkey = \"keys/" +
         me + ".key\"\n";
}

// Who a coordinator admits, by role.
struct Principals {
  std::vector<std::string> sites, leads, admins;
};

// A coordinator config listening on `endpoint` with keys/coordinator.key and
// its state in `data_dir`; `tables` (TOML, e.g. "[rates]...") come before the principals.
inline std::string CoordinatorToml(const std::string& endpoint, const std::string& data_dir, const Principals& who,
                                   const std::string& tables = "") {
  std::string text = "listen = \"" + endpoint + "\"\nkey = \"keys/coordinator.key\"\ndata_dir = \"" + data_dir +
                     "\"\n" + tables;
  auto add = [&](const char* role, const std::vector<std::string>& names) {
    for (const auto& n : names) {
      text += std::string("[[") + role + "]]\nname = \"" + n + "\"\npublic_key = \"keys/" + n + ".pub\"\n";
    }
  };
  add("site", who.sites);
  add("lead", who.leads);
  add("admin", who.admins);
  return text;
}

// The first lines of a site config: site `name`, its coordinator at `endpoint`,
// its key keys/<name>.key, its state in <name>/. The caller adds the rest.
inline std::string SiteTomlHead(const std::string& name, const std::string& endpoint) {
  return "name = \"" + name + "\"\ncoordinator = \"" + endpoint +
         "\"\ncoordinator_public_key = \"keys/coordinator.pub\"\nkey = \"keys/" + name + ".key\"\ndata_dir = \"" +
         name + "\"\n";
}

// A site config's [datasets.fashion-mnist] table over FashionMnistDir(), capped.
inline std::string FashionMnistToml(uint64_t max_train, uint64_t max_test) {
  const std::string d = FashionMnistDir().string() + "/";
  return "[datasets.fashion-mnist]\nformat = \"idx\"\n"
         "train_images = \"" + d + "train-images-idx3-ubyte.gz\"\n"
         "train_labels = \"" + d + "train-labels-idx1-ubyte.gz\"\n"
         "test_images = \"" + d + "t10k-images-idx3-ubyte.gz\"\n"
         "test_labels = \"" + d + "t10k-labels-idx1-ubyte.gz\"\n"
         "max_train_examples = " + std::to_string(max_train) + "\nmax_test_examples = " + std::to_string(max_test) +
         "\n";
}

// A fresh folder for one deployment, and the commands run in it: each
// command's output goes to the next numbered log, and each runs under a time
// limit (the child is killed past it: exit code -1).
class Deployment {
 public:
  struct Options {
    std::string log_prefix = "run";                              // logs <prefix>-1.log, <prefix>-2.log, ...
    std::chrono::milliseconds limit = std::chrono::seconds(60);  // default limit of Run and Hanse
    bool xdg_cache = false;   // XDG_CACHE_HOME=<folder>/cache for every command
    bool xdg_config = false;  // XDG_CONFIG_HOME=<folder>/xdg for every command
  };

  Deployment() : Deployment(Options{}) {}
  explicit Deployment(Options options) : options_(std::move(options)) {
    if (options_.xdg_cache) env_.push_back("XDG_CACHE_HOME=" + (dir_ / "cache").string());
    if (options_.xdg_config) env_.push_back("XDG_CONFIG_HOME=" + (dir_ / "xdg").string());
  }

  const std::filesystem::path& path() const { return dir_.path(); }
  std::filesystem::path operator/(const std::string& p) const { return dir_ / p; }

  RunResult Run(const std::vector<std::string>& argv, std::optional<std::chrono::milliseconds> limit = std::nullopt) {
    return ::hanse::testing::Run(argv, dir_ / (options_.log_prefix + "-" + std::to_string(++runs_) + ".log"),
                                 limit.value_or(options_.limit), env_);
  }
  // `hanse --config <folder>/<config> args...`
  RunResult Hanse(const std::string& config, std::vector<std::string> args,
                  std::optional<std::chrono::milliseconds> limit = std::nullopt) {
    args.insert(args.begin(), {Bin("hanse"), "--config", (dir_ / config).string()});
    return Run(args, limit);
  }
  // `hanse keygen NAME --out keys` for each name; a fatal failure at the first that fails.
  void MakeKeys(const std::vector<std::string>& names) {
    for (const auto& n : names) {
      auto r = Run({Bin("hanse"), "keygen", n, "--out", (dir_ / "keys").string()});
      ASSERT_EQ(r.exit_code, 0) << r.output;
    }
  }

  // hanse-coordinator with <folder>/<config>, its output in coordinator.log.
  Child StartCoordinator(const std::string& config = "coordinator.toml") const {
    return Child::Start({Bin("hanse-coordinator"), "--config", (dir_ / config).string()}, dir_ / "coordinator.log");
  }
  // Whether, within `timeout`, `coordinator` is running and answers `hanse jobs` with `client_config`.
  bool WaitServing(Child& coordinator, const std::string& client_config, std::chrono::milliseconds timeout) {
    return WaitFor(
        [&] { return coordinator.Running() && Hanse(client_config, {"--connect-timeout", "1", "jobs"}).exit_code == 0; },
        timeout);
  }
  // hanse-worker with <folder>/site-<site>.toml on one thread, its output in <site>.log.
  Child StartWorker(const std::string& site) const {
    return Child::Start({Bin("hanse-worker"), "--config", (dir_ / ("site-" + site + ".toml")).string()},
                        dir_ / (site + ".log"), {"OMP_NUM_THREADS=1"});
  }
  // Whether, within `timeout`, `hanse sites` with `admin_config` lists exactly `n` sites connected.
  bool WaitSitesConnected(const std::string& admin_config, size_t n, std::chrono::milliseconds timeout) {
    return WaitFor([&] { return CountOf(Hanse(admin_config, {"sites"}).output, " connected ") == n; }, timeout);
  }

  // The last `max_chars` of each <name>.log, each after a "---- <name>.log (tail)" line.
  std::string LogTails(const std::vector<std::string>& names, size_t max_chars) const {
    std::string out;
    for (const auto& n : names) {
      std::string text = ReadFile(dir_ / (n + ".log"));
      if (text.size() > max_chars) text = text.substr(text.size() - max_chars);
      out += "---- " + n + ".log (tail)\n" + text + "\n";
    }
    return out;
  }

 private:
  TempDir dir_;
  Options options_;
  std::vector<std::string> env_;
  int runs_ = 0;
};

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
