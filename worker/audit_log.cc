#include "worker/audit_log.h"

#include <fcntl.h>
#include <unistd.h>

#include <cstdio>
#include <ostream>
#include <sstream>

#include <date/date.h>
#include <nlohmann/json.hpp>

#include "core/fsutil.h"
#include "core/sha256.h"

namespace hanse::site {
namespace {

using Json = nlohmann::ordered_json;
namespace fs = std::filesystem;

const std::string kZeroHash(64, '0');
constexpr std::string_view kHashKey = ",\"hash\":\"";

std::string IsoTime(std::chrono::system_clock::time_point t) {
  return date::format("%FT%TZ", date::floor<std::chrono::seconds>(t));
}

bool IsHex64(std::string_view s) {
  if (s.size() != 64) return false;
  for (char c : s) {
    if (!((c >= '0' && c <= '9') || (c >= 'a' && c <= 'f'))) return false;
  }
  return true;
}

Json UsageJson(const proto::Usage& u) {
  Json j;
  j["wall_seconds"] = u.wall_seconds;
  j["cpu_seconds"] = u.cpu_seconds;
  j["gpu_seconds"] = u.gpu_seconds;
  if (!u.device_kind.empty()) j["device_kind"] = u.device_kind;
  if (!u.devices.empty()) j["devices"] = u.devices;
  return j;
}

// Body of an entry (everything but `hash`), in a fixed key order.
Json EntryBody(uint64_t seq, const std::string& time, const std::string& prev, const AuditRecord& r) {
  Json j;
  j["seq"] = seq;
  j["time"] = time;
  j["prev"] = prev;
  j["event"] = r.event;
  auto put = [&](const char* key, const std::string& v) {
    if (!v.empty()) j[key] = v;
  };
  put("job", r.job_id);
  put("task", r.task_id);
  if (r.round) j["round"] = *r.round;
  put("kind", r.task_kind);
  put("lead", r.lead);
  put("architecture", r.architecture);
  put("model_hash", r.model_hash);
  put("module_hash", r.module_hash);
  put("dataset", r.dataset);
  put("decision", r.decision);
  put("reason", r.reason);
  put("detail", r.detail);
  put("update_hash", r.update_hash);
  if (r.examples) j["examples"] = *r.examples;
  if (!r.metrics.empty()) {
    Json m = Json::object();
    for (const auto& metric : r.metrics) m[metric.name] = metric.value;
    j["metrics"] = m;
  }
  if (r.usage) j["usage"] = UsageJson(*r.usage);
  return j;
}

// The full line: the body with `"hash":"<sha256 of body>"` as its last member.
std::string SealLine(const Json& body) {
  // Invalid UTF-8 (from a peer-supplied name) is replaced rather than thrown on.
  std::string text = body.dump(-1, ' ', false, Json::error_handler_t::replace);
  std::string digest = Sha256Hex(text);
  text.pop_back();  // '}'
  text += std::string(kHashKey) + digest + "\"}";
  return text;
}

struct ParsedLine {
  uint64_t seq = 0;
  std::string time;
  std::string event;
  Json json;
};

// Checks one line's own integrity (JSON, members, self hash) and its link to
// the previous line. `why` gets the first problem found.
bool CheckLine(const std::string& line, uint64_t expected_seq, const std::string& expected_prev, ParsedLine* out,
               std::string* why) {
  if (line.empty()) {
    *why = "empty line";
    return false;
  }
  Json j;
  try {
    j = Json::parse(line);
  } catch (const nlohmann::json::exception& e) {
    *why = std::string("not valid JSON: ") + e.what();
    return false;
  }
  if (!j.is_object()) {
    *why = "not a JSON object";
    return false;
  }
  for (const char* key : {"seq", "time", "prev", "event", "hash"}) {
    if (!j.contains(key)) {
      *why = std::string("missing member \"") + key + "\"";
      return false;
    }
  }
  if (!j["seq"].is_number_unsigned() || !j["time"].is_string() || !j["prev"].is_string() ||
      !j["event"].is_string() || !j["hash"].is_string()) {
    *why = "member of the wrong type (seq, time, prev, event, hash)";
    return false;
  }
  out->seq = j["seq"].get<uint64_t>();
  out->time = j["time"].get<std::string>();
  out->event = j["event"].get<std::string>();
  if (out->seq != expected_seq) {
    *why = "seq " + std::to_string(out->seq) + ", expected " + std::to_string(expected_seq);
    return false;
  }
  const std::string prev = j["prev"].get<std::string>();
  if (prev != expected_prev) {
    *why = "prev " + prev.substr(0, 16) + "... does not match the SHA-256 of the previous line (" +
           expected_prev.substr(0, 16) + "...)";
    return false;
  }
  const std::string hash = j["hash"].get<std::string>();
  // The hash must be the textual last member, so the body can be rebuilt exactly.
  const std::string suffix = std::string(kHashKey) + hash + "\"}";
  if (!IsHex64(hash) || line.size() < suffix.size() + 1 ||
      line.compare(line.size() - suffix.size(), suffix.size(), suffix) != 0) {
    *why = "\"hash\" is not a 64-hex last member";
    return false;
  }
  std::string body = line.substr(0, line.size() - suffix.size()) + "}";
  if (Sha256Hex(body) != hash) {
    *why = "content does not match its hash (entry altered)";
    return false;
  }
  out->json = std::move(j);
  return true;
}

struct ChainState {
  uint64_t entries = 0;
  std::string last_line_hash = kZeroHash;
};

// Walks the file; on the first broken entry returns kCorruption "<path>:<line>: why".
Result<ChainState> WalkChain(const fs::path& path, std::vector<AuditEntry>* entries) {
  auto text = ReadWholeFile(path);
  if (!text.ok()) return text.status();
  const std::string& s = *text;
  ChainState state;
  size_t pos = 0;
  uint64_t line_no = 0;
  while (pos < s.size()) {
    ++line_no;
    size_t nl = s.find('\n', pos);
    auto broken = [&](const std::string& why) {
      return Status::Corruption(path.string() + ":" + std::to_string(line_no) + ": " + why);
    };
    if (nl == std::string::npos) return broken("incomplete last line (no newline: a torn write?)");
    std::string line = s.substr(pos, nl - pos);
    ParsedLine parsed;
    std::string why;
    if (!CheckLine(line, state.entries + 1, state.last_line_hash, &parsed, &why)) return broken(why);
    state.entries += 1;
    state.last_line_hash = Sha256Hex(line);
    if (entries) entries->push_back({parsed.seq, parsed.time, parsed.event, line});
    pos = nl + 1;
  }
  return state;
}

std::string Field(const Json& j, const char* key) {
  if (!j.contains(key)) return "";
  const auto& v = j[key];
  if (v.is_string()) return v.get<std::string>();
  return v.dump();
}

std::string Short(const std::string& hash) { return hash.size() > 12 ? hash.substr(0, 12) : hash; }

std::string Describe(const Json& j) {
  std::ostringstream os;
  auto kv = [&](const char* label, const std::string& v) {
    if (!v.empty()) os << ' ' << label << '=' << v;
  };
  kv("job", Field(j, "job"));
  kv("task", Field(j, "task"));
  kv("round", Field(j, "round"));
  kv("kind", Field(j, "kind"));
  kv("lead", Field(j, "lead"));
  kv("arch", Field(j, "architecture"));
  kv("model", Short(Field(j, "model_hash")));
  kv("module", Short(Field(j, "module_hash")));
  kv("dataset", Field(j, "dataset"));
  if (j.contains("decision")) os << ' ' << Field(j, "decision");
  kv("reason", Field(j, "reason"));
  kv("update", Short(Field(j, "update_hash")));
  kv("examples", Field(j, "examples"));
  if (j.contains("metrics") && j["metrics"].is_object()) {
    for (const auto& [k, v] : j["metrics"].items()) {
      char buf[64];
      std::snprintf(buf, sizeof buf, " %s=%.4f", k.c_str(), v.is_number() ? v.get<double>() : 0.0);
      os << buf;
    }
  }
  if (j.contains("usage") && j["usage"].is_object()) {
    const auto& u = j["usage"];
    auto num = [&](const char* k) { return u.contains(k) && u[k].is_number() ? u[k].get<double>() : 0.0; };
    char buf[128];
    std::snprintf(buf, sizeof buf, " wall=%.1fs cpu=%.1fs gpu=%.1fs", num("wall_seconds"), num("cpu_seconds"),
                  num("gpu_seconds"));
    os << buf;
  }
  std::string detail = Field(j, "detail");
  if (!detail.empty()) os << "  (" << detail << ")";
  return os.str();
}

}  // namespace

Result<std::unique_ptr<AuditLog>> AuditLog::Open(const fs::path& path, bool start_new_if_broken, Clock clock) {
  std::unique_ptr<AuditLog> log(new AuditLog());
  log->path_ = path;
  log->clock_ = clock ? std::move(clock) : Clock([] { return std::chrono::system_clock::now(); });
  std::error_code ec;
  if (path.has_parent_path()) fs::create_directories(path.parent_path(), ec);

  std::string moved_to;
  std::string broken_why;
  if (fs::exists(path, ec)) {
    auto state = WalkChain(path, nullptr);
    if (state.ok()) {
      log->last_seq_ = state->entries;
      log->last_line_hash_ = state->last_line_hash;
    } else if (state.status().code() == Code::kCorruption && start_new_if_broken) {
      broken_why = state.status().message();
      fs::path aside = path;
      aside += ".broken-" + date::format("%Y%m%dT%H%M%SZ", date::floor<std::chrono::seconds>(log->clock_()));
      HANSE_RETURN_IF_ERROR(RenameDurable(path, aside));
      moved_to = aside.string();
    } else {
      return state.status().WithContext(
          "audit log is broken; refusing to start (start a new chain with --new-audit-log)");
    }
  }
  if (log->last_seq_ == 0) log->last_line_hash_ = kZeroHash;

  auto fd = OpenFd(path, O_WRONLY | O_CREAT | O_APPEND, 0640);
  if (!fd.ok()) return fd.status();
  log->fd_ = fd->Release();
  if (!moved_to.empty()) {
    AuditRecord start;
    start.event = "start";
    start.detail = "new chain; the broken log was moved to " + moved_to + " (" + broken_why + ")";
    auto r = log->Append(start);
    if (!r.ok()) return r.status();
  }
  return log;
}

AuditLog::~AuditLog() {
  if (fd_ >= 0) ::close(fd_);
}

uint64_t AuditLog::entries() const {
  std::lock_guard lock(mu_);
  return last_seq_;
}

Result<uint64_t> AuditLog::Append(const AuditRecord& record) {
  std::lock_guard lock(mu_);
  uint64_t seq = last_seq_ + 1;
  std::string line = SealLine(EntryBody(seq, IsoTime(clock_()), last_line_hash_, record));
  std::string with_newline = line + "\n";
  // One write of the whole line on an O_APPEND descriptor, then fsync: the
  // entry is durable before the action it records is reported done.
  HANSE_RETURN_IF_ERROR(WriteAll(fd_, std::as_bytes(std::span(with_newline.data(), with_newline.size())), path_));
  HANSE_RETURN_IF_ERROR(Fsync(fd_, path_));
  last_seq_ = seq;
  last_line_hash_ = Sha256Hex(line);
  return seq;
}

Result<uint64_t> VerifyAuditLog(const fs::path& path) {
  auto state = WalkChain(path, nullptr);
  if (!state.ok()) return state.status();
  return state->entries;
}

Result<std::vector<AuditEntry>> ReadAuditLog(const fs::path& path) {
  std::vector<AuditEntry> entries;
  auto state = WalkChain(path, &entries);
  if (!state.ok() && state.status().code() != Code::kCorruption) return state.status();
  return entries;
}

Status ShowAuditLog(const fs::path& path, std::ostream& out) {
  std::vector<AuditEntry> entries;
  auto state = WalkChain(path, &entries);
  if (!state.ok() && state.status().code() != Code::kCorruption) return state.status();
  for (const auto& e : entries) {
    Json j = Json::parse(e.line);  // already parsed once by WalkChain: cannot throw here
    char head[96];
    std::snprintf(head, sizeof head, "#%-4llu %s  %-15s", static_cast<unsigned long long>(e.seq), e.time.c_str(),
                  e.event.c_str());
    out << head << Describe(j) << '\n';
  }
  if (state.ok()) {
    out << "chain ok: " << state->entries << " entries\n";
    return Status::Ok();
  }
  out << "CHAIN BROKEN: " << state.status().message() << '\n';
  return state.status();
}

}  // namespace hanse::site
