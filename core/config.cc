// Configuration loading: toml++ into the structs of config.h.
//
// Every check lives here, once. Errors read "FILE:LINE:COL: KEY: message"; the
// position is the offending value's (or, for a missing key, the table that
// should hold it). Unknown keys are checked first in each table, so a typo is
// reported as a typo rather than as a missing key.
#include "core/config.h"

#include <date/tz.h>

#include <algorithm>
#include <cerrno>
#include <cmath>
#include <cstring>
#include <fstream>
#include <limits>
#include <set>
#include <sstream>
#include <string_view>

#include <toml++/toml.h>

#include "core/blob_store.h"
#include "core/keys.h"

namespace hanse {
namespace {

// ---------------------------------------------------------------- helpers

struct Ctx {
  std::string file;                // as given by the caller, for messages
  fs::path base;                   // folder that relative paths start from; empty: keep relative
  bool check_model_files = true;   // job: initial_model / torchscript_module must exist
};

std::string Quote(std::string_view s) {
  std::string out = "\"";
  for (char c : s) {
    if (c == '"' || c == '\\') {
      out += '\\';
      out += c;
    } else if (static_cast<unsigned char>(c) < 0x20) {
      char buf[8];
      std::snprintf(buf, sizeof buf, "\\u%04x", c);
      out += buf;
    } else {
      out += c;
    }
  }
  return out + "\"";
}

std::string FormatNumber(double v) {
  std::ostringstream os;
  os << v;
  return os.str();
}

// How a value reads in "got ..." (strings quoted, so "ten" differs from ten).
std::string Describe(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return Quote(n.as_string()->get());
    case toml::node_type::integer: return std::to_string(n.as_integer()->get());
    case toml::node_type::floating_point: return FormatNumber(n.as_floating_point()->get());
    case toml::node_type::boolean: return n.as_boolean()->get() ? "true" : "false";
    case toml::node_type::array: return "an array";
    case toml::node_type::table: return "a table";
    case toml::node_type::date:
    case toml::node_type::time:
    case toml::node_type::date_time: return "a date/time";
    default: return "nothing";
  }
}

size_t EditDistance(std::string_view a, std::string_view b) {
  std::vector<size_t> prev(b.size() + 1), cur(b.size() + 1);
  for (size_t j = 0; j <= b.size(); ++j) prev[j] = j;
  for (size_t i = 1; i <= a.size(); ++i) {
    cur[0] = i;
    for (size_t j = 1; j <= b.size(); ++j) {
      cur[j] = std::min({prev[j] + 1, cur[j - 1] + 1, prev[j - 1] + (a[i - 1] == b[j - 1] ? 0 : 1)});
    }
    std::swap(prev, cur);
  }
  return prev[b.size()];
}

// Names of principals, datasets, jobs, models: short and safe in paths and logs.
bool IsValidName(std::string_view s) {
  if (s.empty() || s.size() > 64) return false;
  if (!std::isalnum(static_cast<unsigned char>(s[0]))) return false;
  return std::all_of(s.begin(), s.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_' || c == '-' || c == '.';
  });
}
constexpr const char* kNameRule = "a name of 1-64 characters [A-Za-z0-9_.-] starting with a letter or digit";

// "tcp://HOST:PORT" (HOST may be * for binding) or "ipc://PATH".
bool IsValidEndpoint(std::string_view s) {
  if (s.starts_with("ipc://")) return s.size() > 6;
  if (!s.starts_with("tcp://")) return false;
  s.remove_prefix(6);
  const auto colon = s.rfind(':');
  if (colon == std::string_view::npos || colon == 0) return false;
  const auto port = s.substr(colon + 1);
  if (port.empty() || port.size() > 5) return false;
  if (!std::all_of(port.begin(), port.end(), [](char c) { return c >= '0' && c <= '9'; })) return false;
  const int p = std::stoi(std::string(port));
  return p >= 1 && p <= 65535;
}

bool IsValidDevice(std::string_view s) {
  if (s == "cpu" || s == "cuda") return true;
  if (!s.starts_with("cuda:") || s.size() == 5 || s.size() > 8) return false;
  return std::all_of(s.begin() + 5, s.end(), [](char c) { return c >= '0' && c <= '9'; });
}

struct Range {
  double lo = -std::numeric_limits<double>::infinity();
  bool lo_incl = true;
  double hi = std::numeric_limits<double>::infinity();
  bool hi_incl = true;

  bool Contains(double v) const {
    if (!std::isfinite(v)) return false;
    if (lo_incl ? v < lo : v <= lo) return false;
    if (hi_incl ? v > hi : v >= hi) return false;
    return true;
  }
  std::string Text() const {
    const bool has_lo = std::isfinite(lo), has_hi = std::isfinite(hi);
    if (has_lo && has_hi) {
      return "a number in " + std::string(lo_incl ? "[" : "(") + FormatNumber(lo) + ", " + FormatNumber(hi) +
             (hi_incl ? "]" : ")");
    }
    if (has_lo) return std::string("a number ") + (lo_incl ? ">= " : "> ") + FormatNumber(lo);
    if (has_hi) return std::string("a number ") + (hi_incl ? "<= " : "< ") + FormatNumber(hi);
    return "a finite number";
  }
};
constexpr Range kPositive{0.0, false};
constexpr Range kNonNegative{0.0, true};
constexpr Range kFraction{0.0, true, 1.0, false};  // [0, 1)

enum class Need { kOptional, kRequired };
constexpr Need kReq = Need::kRequired;
constexpr Need kOpt = Need::kOptional;

std::string LineCol(const toml::source_position& p) {
  // Implicit tables and the root have no position; point at the top of the file.
  if (p.line == 0) return "1:1";
  return std::to_string(p.line) + ":" + std::to_string(p.column);
}

// Reads the keys of one table, tracking the dotted path for messages.
class Reader {
 public:
  Reader(const Ctx& ctx, const toml::table& t, std::string prefix)
      : ctx_(ctx), t_(t), prefix_(std::move(prefix)) {}

  const toml::table& table() const { return t_; }
  const Ctx& ctx() const { return ctx_; }
  std::string Full(std::string_view k) const { return prefix_.empty() ? std::string(k) : prefix_ + "." + std::string(k); }
  bool Has(std::string_view k) const { return t_.get(k) != nullptr; }
  const toml::node* Get(std::string_view k) const { return t_.get(k); }

  Status ErrorAt(const toml::source_position& p, const std::string& full_key, const std::string& msg) const {
    return Status::InvalidArgument(ctx_.file + ":" + LineCol(p) + ": " + full_key + ": " + msg);
  }
  Status Error(const toml::node& n, std::string_view k, const std::string& msg) const {
    return ErrorAt(n.source().begin, Full(k), msg);
  }
  // Error about key `k`: at its value when present, else at the table.
  Status ErrorKey(std::string_view k, const std::string& msg) const {
    if (const auto* n = t_.get(k)) return Error(*n, k, msg);
    return ErrorAt(t_.source().begin, Full(k), msg);
  }
  Status Missing(std::string_view k) const { return ErrorAt(t_.source().begin, Full(k), "missing required key"); }

  // Unknown keys are errors; suggests the closest allowed key.
  Status Allow(std::initializer_list<std::string_view> allowed) const {
    for (auto&& [key, node] : t_) {
      const std::string_view k = key.str();
      if (std::find(allowed.begin(), allowed.end(), k) != allowed.end()) continue;
      std::string msg = "unknown key '" + Full(k) + "'";
      std::string_view best;
      size_t best_d = std::numeric_limits<size_t>::max();
      for (auto a : allowed) {
        const size_t d = EditDistance(k, a);
        if (d < best_d) best_d = d, best = a;
      }
      if (!best.empty() && best_d <= std::max<size_t>(2, k.size() / 3)) msg += " (did you mean '" + std::string(best) + "'?)";
      auto pos = key.source().begin;
      if (pos.line == 0) pos = node.source().begin;
      return ErrorAt(pos, Full(k), msg);
    }
    return Status::Ok();
  }

  Status String(std::string_view k, std::string* out, Need need, bool allow_empty = false) const {
    const auto* n = t_.get(k);
    if (!n) return need == kReq ? Missing(k) : Status::Ok();
    if (!n->is_string()) return Error(*n, k, "expected a string, got " + Describe(*n));
    const std::string& v = n->as_string()->get();
    if (v.empty() && !allow_empty) return Error(*n, k, "expected a non-empty string");
    *out = v;
    return Status::Ok();
  }

  Status Choice(std::string_view k, std::string* out, std::initializer_list<std::string_view> choices,
                Need need) const {
    const auto* n = t_.get(k);
    if (!n) return need == kReq ? Missing(k) : Status::Ok();
    std::string list;
    for (auto c : choices) list += (list.empty() ? "" : ", ") + Quote(c);
    if (!n->is_string() || std::find(choices.begin(), choices.end(), n->as_string()->get()) == choices.end()) {
      return Error(*n, k, "expected one of " + list + ", got " + Describe(*n));
    }
    *out = n->as_string()->get();
    return Status::Ok();
  }

  Status Name(std::string_view k, std::string* out, Need need) const {
    const auto* n = t_.get(k);
    if (!n) return need == kReq ? Missing(k) : Status::Ok();
    if (!n->is_string() || !IsValidName(n->as_string()->get())) {
      return Error(*n, k, std::string("expected ") + kNameRule + ", got " + Describe(*n));
    }
    *out = n->as_string()->get();
    return Status::Ok();
  }

  Status Endpoint(std::string_view k, std::string* out, Need need) const {
    const auto* n = t_.get(k);
    if (!n) return need == kReq ? Missing(k) : Status::Ok();
    if (!n->is_string() || !IsValidEndpoint(n->as_string()->get())) {
      return Error(*n, k, "expected \"tcp://HOST:PORT\" (port 1-65535) or \"ipc://PATH\", got " + Describe(*n));
    }
    *out = n->as_string()->get();
    return Status::Ok();
  }

  template <class T>
  Status Int(std::string_view k, T* out, int64_t lo, Need need = kOpt,
             uint64_t hi = static_cast<uint64_t>(std::numeric_limits<T>::max())) const {
    const auto* n = t_.get(k);
    if (!n) return need == kReq ? Missing(k) : Status::Ok();
    const uint64_t type_max = static_cast<uint64_t>(std::numeric_limits<T>::max());
    hi = std::min(hi, type_max);
    const bool bounded = hi < type_max;
    std::string want = bounded ? "an integer in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]"
                               : "an integer >= " + std::to_string(lo);
    if (!n->is_integer()) return Error(*n, k, "expected " + want + ", got " + Describe(*n));
    const int64_t v = n->as_integer()->get();
    if (v < lo || (v >= 0 && static_cast<uint64_t>(v) > hi)) return Error(*n, k, "expected " + want + ", got " + Describe(*n));
    *out = static_cast<T>(v);
    return Status::Ok();
  }

  Status Number(std::string_view k, double* out, const Range& r, Need need = kOpt) const {
    const auto* n = t_.get(k);
    if (!n) return need == kReq ? Missing(k) : Status::Ok();
    double v;
    if (n->is_integer()) {
      v = static_cast<double>(n->as_integer()->get());
    } else if (n->is_floating_point()) {
      v = n->as_floating_point()->get();
    } else {
      return Error(*n, k, "expected " + r.Text() + ", got " + Describe(*n));
    }
    if (!r.Contains(v)) return Error(*n, k, "expected " + r.Text() + ", got " + Describe(*n));
    *out = v;
    return Status::Ok();
  }

  Status OptNumber(std::string_view k, std::optional<double>* out, const Range& r) const {
    if (!Has(k)) return Status::Ok();
    double v = 0;
    HANSE_RETURN_IF_ERROR(Number(k, &v, r));
    *out = v;
    return Status::Ok();
  }

  Status Bool(std::string_view k, bool* out) const {
    const auto* n = t_.get(k);
    if (!n) return Status::Ok();
    if (!n->is_boolean()) return Error(*n, k, "expected true or false, got " + Describe(*n));
    *out = n->as_boolean()->get();
    return Status::Ok();
  }

  // Array of strings; `check` returns an error message for a bad element ("" = fine).
  template <class Check>
  Status StringList(std::string_view k, std::vector<std::string>* out, Need need, Check check,
                    bool allow_empty_list = true) const {
    const auto* n = t_.get(k);
    if (!n) return need == kReq ? Missing(k) : Status::Ok();
    if (!n->is_array()) return Error(*n, k, "expected an array of strings, got " + Describe(*n));
    const auto& arr = *n->as_array();
    if (arr.empty() && !allow_empty_list) return Error(*n, k, "expected a non-empty array");
    std::vector<std::string> v;
    for (size_t i = 0; i < arr.size(); ++i) {
      const auto& e = *arr.get(i);
      const std::string ek = Full(k) + "[" + std::to_string(i) + "]";
      if (!e.is_string()) return ErrorAt(e.source().begin, ek, "expected a string, got " + Describe(e));
      const std::string& s = e.as_string()->get();
      if (std::string m = check(s); !m.empty()) return ErrorAt(e.source().begin, ek, m + ", got " + Quote(s));
      if (std::find(v.begin(), v.end(), s) != v.end()) return ErrorAt(e.source().begin, ek, "duplicate " + Quote(s));
      v.push_back(s);
    }
    *out = std::move(v);
    return Status::Ok();
  }

  fs::path Resolve(const std::string& p) const {
    fs::path x(p);
    if (x.is_relative() && !ctx_.base.empty()) x = ctx_.base / x;
    return x.lexically_normal();
  }

  enum class Exist { kNoCheck, kFile };
  Status Path(std::string_view k, fs::path* out, Need need, Exist exist) const {
    std::string s;
    HANSE_RETURN_IF_ERROR(String(k, &s, need));
    if (s.empty()) return Status::Ok();
    fs::path p = Resolve(s);
    if (exist == Exist::kFile) {
      std::error_code ec;
      const auto st = fs::status(p, ec);
      if (!fs::exists(st)) return ErrorKey(k, "file not found: " + p.string());
      if (!fs::is_regular_file(st)) return ErrorKey(k, "not a regular file: " + p.string());
    }
    *out = std::move(p);
    return Status::Ok();
  }

  // A public key file: must exist and hold one 40-char Z85 key.
  Status PublicKey(std::string_view k, fs::path* file, std::string* key, Need need) const {
    fs::path p;
    HANSE_RETURN_IF_ERROR(Path(k, &p, need, Exist::kFile));
    if (p.empty()) return Status::Ok();
    auto r = LoadPublicKey(p);
    if (!r.ok()) return ErrorKey(k, r.status().message());
    *file = std::move(p);
    *key = std::move(r).value();
    return Status::Ok();
  }

  // A secret key file: must exist with mode 0600 (or stricter). It is not read
  // here: programs read it with LoadSecretKey when they start, so
  // --check-config never holds the secret in memory. The public key file is
  // the same path with ".pub"; it is not required (PublicKeyOf derives it).
  Status SecretKey(std::string_view k, fs::path* secret, fs::path* pub, Need need) const {
    fs::path p;
    HANSE_RETURN_IF_ERROR(Path(k, &p, need, Exist::kFile));
    if (p.empty()) return Status::Ok();
    if (Status st = CheckSecretKeyFile(p); !st.ok()) return ErrorKey(k, st.message());
    *secret = p;
    *pub = fs::path(p).replace_extension(".pub");
    return Status::Ok();
  }

  // Optional sub-table; nullptr when absent.
  Result<const toml::table*> Table(std::string_view k) const {
    const auto* n = t_.get(k);
    if (!n) return static_cast<const toml::table*>(nullptr);
    if (!n->is_table()) return Error(*n, k, "expected a table, got " + Describe(*n));
    return n->as_table();
  }

  // Optional array of tables ([[k]]); empty when absent.
  Result<std::vector<const toml::table*>> Tables(std::string_view k) const {
    std::vector<const toml::table*> v;
    const auto* n = t_.get(k);
    if (!n) return v;
    if (!n->is_array()) return Error(*n, k, "expected an array of tables ([[" + Full(k) + "]]), got " + Describe(*n));
    for (const auto& e : *n->as_array()) {
      if (!e.is_table()) return Error(e, k, "expected an array of tables ([[" + Full(k) + "]]), got an element " + Describe(e));
      v.push_back(e.as_table());
    }
    return v;
  }

  // Reports `k` as an error when present, e.g. a csv-only key in an idx dataset.
  Status Forbid(std::string_view k, const std::string& why) const {
    if (const auto* n = t_.get(k)) return Error(*n, k, why);
    return Status::Ok();
  }

 private:
  const Ctx& ctx_;
  const toml::table& t_;
  std::string prefix_;
};

// Parses TOML text; syntax errors become "FILE:LINE:COL: syntax error: ...".
Result<toml::table> ParseToml(const std::string& text, const std::string& file) {
  try {
    return toml::parse(text, file);
  } catch (const toml::parse_error& e) {
    return Status::InvalidArgument(file + ":" + LineCol(e.source().begin) + ": syntax error: " +
                                   std::string(e.description()));
  }
}

Result<std::string> ReadText(const fs::path& file) {
  std::ifstream in(file, std::ios::binary);
  if (!in) {
    const int err = errno;
    std::error_code ec;
    if (!fs::exists(file, ec)) return Status::NotFound(file.string() + ": config file not found");
    return Status::Io(file.string() + ": cannot open config file: " + std::strerror(err));
  }
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

Ctx FileCtx(const fs::path& file) {
  Ctx c;
  c.file = file.string();
  std::error_code ec;
  fs::path dir = file.parent_path();
  c.base = fs::absolute(dir.empty() ? fs::path(".") : dir, ec).lexically_normal();
  if (ec) c.base = dir;
  return c;
}

std::string CheckName(const std::string& s) { return IsValidName(s) ? "" : std::string("expected ") + kNameRule; }
std::string CheckDevice(const std::string& s) {
  return IsValidDevice(s) ? "" : "expected \"cpu\", \"cuda\" or \"cuda:N\"";
}

// ---------------------------------------------------------------- coordinator

Status ReadPrincipals(const Reader& root, std::string_view kind, std::vector<PrincipalEntry>* out) {
  HANSE_ASSIGN_OR_RETURN(auto tables, root.Tables(kind));
  for (size_t i = 0; i < tables.size(); ++i) {
    Reader r(root.ctx(), *tables[i], std::string(kind) + "[" + std::to_string(i) + "]");
    HANSE_RETURN_IF_ERROR(r.Allow({"name", "public_key"}));
    PrincipalEntry e;
    HANSE_RETURN_IF_ERROR(r.Name("name", &e.name, kReq));
    // Job files say sites = ["all"] for every site.
    if (kind == "site" && e.name == "all") return r.ErrorKey("name", "\"all\" is reserved (sites = [\"all\"] in job files)");
    HANSE_RETURN_IF_ERROR(r.PublicKey("public_key", &e.public_key_file, &e.public_key, kReq));
    for (const auto& o : *out) {
      if (o.name == e.name) return r.ErrorKey("name", "duplicate " + std::string(kind) + " name " + Quote(e.name));
      if (o.public_key == e.public_key) {
        return r.ErrorKey("public_key", "same public key as " + std::string(kind) + " " + Quote(o.name));
      }
    }
    out->push_back(std::move(e));
  }
  return Status::Ok();
}

Result<CoordinatorConfig> ReadCoordinator(const Ctx& ctx, const toml::table& t) {
  Reader r(ctx, t, "");
  HANSE_RETURN_IF_ERROR(r.Allow({"listen", "key", "data_dir", "transport", "retention", "rates", "site", "lead", "admin"}));
  CoordinatorConfig c;
  c.source = ctx.file;
  HANSE_RETURN_IF_ERROR(r.Endpoint("listen", &c.listen, kOpt));
  HANSE_RETURN_IF_ERROR(r.SecretKey("key", &c.secret_key_file, &c.public_key_file, kReq));
  HANSE_RETURN_IF_ERROR(r.Path("data_dir", &c.data_dir, kReq, Reader::Exist::kNoCheck));

  HANSE_ASSIGN_OR_RETURN(const toml::table* tr, r.Table("transport"));
  if (tr) {
    Reader x(ctx, *tr, "transport");
    HANSE_RETURN_IF_ERROR(x.Allow({"chunk_bytes", "window", "heartbeat_ms", "heartbeat_timeout_ms"}));
    HANSE_RETURN_IF_ERROR(x.Int("chunk_bytes", &c.chunk_bytes, 4096, kOpt, 256ull << 20));
    HANSE_RETURN_IF_ERROR(x.Int("window", &c.window, 1, kOpt, 1024));
    HANSE_RETURN_IF_ERROR(x.Int("heartbeat_ms", &c.heartbeat_ms, 10, kOpt, 3600 * 1000));
    HANSE_RETURN_IF_ERROR(x.Int("heartbeat_timeout_ms", &c.heartbeat_timeout_ms, 10, kOpt, 24ull * 3600 * 1000));
    if (c.heartbeat_timeout_ms <= c.heartbeat_ms) {
      return x.ErrorKey("heartbeat_timeout_ms", "must be greater than heartbeat_ms (" + std::to_string(c.heartbeat_ms) +
                                                    "), got " + std::to_string(c.heartbeat_timeout_ms));
    }
  }
  HANSE_ASSIGN_OR_RETURN(const toml::table* rt, r.Table("retention"));
  if (rt) {
    Reader x(ctx, *rt, "retention");
    HANSE_RETURN_IF_ERROR(x.Allow({"keep_updates_rounds", "keep_checkpoints"}));
    HANSE_RETURN_IF_ERROR(x.Int("keep_updates_rounds", &c.keep_updates_rounds, 0));
    HANSE_RETURN_IF_ERROR(x.Int("keep_checkpoints", &c.keep_checkpoints, 0));
  }
  HANSE_ASSIGN_OR_RETURN(const toml::table* ra, r.Table("rates"));
  if (ra) {
    Reader x(ctx, *ra, "rates");
    HANSE_RETURN_IF_ERROR(x.Allow({"gpu_hour", "cpu_hour", "currency"}));
    HANSE_RETURN_IF_ERROR(x.Number("gpu_hour", &c.rates.gpu_hour, kNonNegative));
    HANSE_RETURN_IF_ERROR(x.Number("cpu_hour", &c.rates.cpu_hour, kNonNegative));
    if (x.Has("currency")) {
      const auto* n = x.Get("currency");
      const bool ok = n->is_string() && n->as_string()->get().size() == 3 &&
                      std::all_of(n->as_string()->get().begin(), n->as_string()->get().end(),
                                  [](char ch) { return ch >= 'A' && ch <= 'Z'; });
      if (!ok) return x.Error(*n, "currency", "expected a 3-letter ISO 4217 code such as \"EUR\", got " + Describe(*n));
      c.rates.currency = n->as_string()->get();
    }
  }
  HANSE_RETURN_IF_ERROR(ReadPrincipals(r, "site", &c.sites));
  HANSE_RETURN_IF_ERROR(ReadPrincipals(r, "lead", &c.leads));
  HANSE_RETURN_IF_ERROR(ReadPrincipals(r, "admin", &c.admins));
  // A site is a machine; its key must not also authenticate a person.
  HANSE_ASSIGN_OR_RETURN(auto site_tables, r.Tables("site"));
  for (size_t i = 0; i < c.sites.size(); ++i) {
    for (const auto* people : {&c.leads, &c.admins}) {
      for (const auto& p : *people) {
        if (p.public_key == c.sites[i].public_key) {
          Reader x(ctx, *site_tables[i], "site[" + std::to_string(i) + "]");
          return x.ErrorKey("public_key", "site " + Quote(c.sites[i].name) + " uses the same public key as " +
                                              (people == &c.leads ? "lead " : "admin ") + Quote(p.name));
        }
      }
    }
  }
  return c;
}

// ---------------------------------------------------------------- site

Status ReadPartition(const Reader& ds, PartitionConfig* p) {
  HANSE_ASSIGN_OR_RETURN(const toml::table* t, ds.Table("partition"));
  if (!t) return Status::Ok();
  Reader r(ds.ctx(), *t, ds.Full("partition"));
  HANSE_RETURN_IF_ERROR(r.Allow({"kind", "labels", "alpha", "seed", "num_shares", "share"}));
  std::string kind;
  HANSE_RETURN_IF_ERROR(r.Choice("kind", &kind, {"labels", "dirichlet"}, kReq));
  if (kind == "labels") {
    p->kind = PartitionConfig::Kind::kLabels;
    for (auto k : {"alpha", "seed", "num_shares", "share"}) {
      HANSE_RETURN_IF_ERROR(r.Forbid(k, "only valid with kind = \"dirichlet\""));
    }
    const auto* n = r.Get("labels");
    if (!n) return r.Missing("labels");
    if (!n->is_array() || n->as_array()->empty()) {
      return r.Error(*n, "labels", "expected a non-empty array of class labels (integers >= 0), got " + Describe(*n));
    }
    const auto& arr = *n->as_array();
    for (size_t i = 0; i < arr.size(); ++i) {
      const auto& e = *arr.get(i);
      const std::string ek = r.Full("labels") + "[" + std::to_string(i) + "]";
      if (!e.is_integer() || e.as_integer()->get() < 0 || e.as_integer()->get() > (1 << 24)) {
        return r.ErrorAt(e.source().begin, ek, "expected an integer in [0, 16777216], got " + Describe(e));
      }
      const int64_t v = e.as_integer()->get();
      if (std::find(p->labels.begin(), p->labels.end(), v) != p->labels.end()) {
        return r.ErrorAt(e.source().begin, ek, "duplicate label " + std::to_string(v));
      }
      p->labels.push_back(v);
    }
  } else {
    p->kind = PartitionConfig::Kind::kDirichlet;
    HANSE_RETURN_IF_ERROR(r.Forbid("labels", "only valid with kind = \"labels\""));
    HANSE_RETURN_IF_ERROR(r.Number("alpha", &p->alpha, kPositive));
    HANSE_RETURN_IF_ERROR(r.Int("seed", &p->seed, 0));
    HANSE_RETURN_IF_ERROR(r.Int("num_shares", &p->num_shares, 1, kReq, 1 << 20));
    HANSE_RETURN_IF_ERROR(r.Int("share", &p->share, 0, kReq));
    if (p->share >= p->num_shares) {
      return r.ErrorKey("share", "expected an integer in [0, " + std::to_string(p->num_shares - 1) +
                                     "] (num_shares = " + std::to_string(p->num_shares) + "), got " +
                                     std::to_string(p->share));
    }
  }
  return Status::Ok();
}

Status ReadDataset(const Reader& r, DatasetConfig* d) {
  HANSE_RETURN_IF_ERROR(r.Allow({"format", "train_images", "train_labels", "test_images", "test_labels", "path",
                                 "label_column", "feature_columns", "test_fraction", "max_train_examples",
                                 "max_test_examples", "partition"}));
  using E = Reader::Exist;
  HANSE_RETURN_IF_ERROR(r.Choice("format", &d->format, {"idx", "csv"}, kReq));
  if (d->format == "idx") {
    for (auto k : {"path", "label_column", "feature_columns"}) {
      HANSE_RETURN_IF_ERROR(r.Forbid(k, "only valid with format = \"csv\""));
    }
    HANSE_RETURN_IF_ERROR(r.Path("train_images", &d->train_images, kReq, E::kFile));
    HANSE_RETURN_IF_ERROR(r.Path("train_labels", &d->train_labels, kReq, E::kFile));
    HANSE_RETURN_IF_ERROR(r.Path("test_images", &d->test_images, kOpt, E::kFile));
    HANSE_RETURN_IF_ERROR(r.Path("test_labels", &d->test_labels, kOpt, E::kFile));
    if (r.Has("test_images") != r.Has("test_labels")) {
      const auto present = r.Has("test_images") ? "test_images" : "test_labels";
      const auto absent = r.Has("test_images") ? "test_labels" : "test_images";
      return r.ErrorKey(present, std::string("needs ") + absent + " too (give both or neither)");
    }
  } else {
    for (auto k : {"train_images", "train_labels", "test_images", "test_labels"}) {
      HANSE_RETURN_IF_ERROR(r.Forbid(k, "only valid with format = \"idx\""));
    }
    HANSE_RETURN_IF_ERROR(r.Path("path", &d->path, kReq, E::kFile));
    HANSE_RETURN_IF_ERROR(r.String("label_column", &d->label_column, kReq));
    HANSE_RETURN_IF_ERROR(r.StringList("feature_columns", &d->feature_columns, kOpt, [&](const std::string& s) {
      if (s.empty()) return std::string("expected a non-empty column name");
      if (s == d->label_column) return std::string("the label column cannot be a feature");
      return std::string();
    }));
  }
  HANSE_RETURN_IF_ERROR(r.Number("test_fraction", &d->test_fraction, kFraction));
  if (d->format == "idx" && r.Has("test_images") && r.Has("test_fraction")) {
    return r.ErrorKey("test_fraction", "not valid together with test_images/test_labels");
  }
  HANSE_RETURN_IF_ERROR(r.Int("max_train_examples", &d->max_train_examples, 0));
  HANSE_RETURN_IF_ERROR(r.Int("max_test_examples", &d->max_test_examples, 0));
  return ReadPartition(r, &d->partition);
}

// "HH:MM-HH:MM" -> minutes since midnight; end may be 24:00.
bool ParseHours(const std::string& s, int* start, int* end) {
  auto two = [&](size_t i, int* v) {
    if (i + 2 > s.size() || !std::isdigit(static_cast<unsigned char>(s[i])) ||
        !std::isdigit(static_cast<unsigned char>(s[i + 1]))) {
      return false;
    }
    *v = (s[i] - '0') * 10 + (s[i + 1] - '0');
    return true;
  };
  if (s.size() != 11 || s[2] != ':' || s[5] != '-' || s[8] != ':') return false;
  int h1, m1, h2, m2;
  if (!two(0, &h1) || !two(3, &m1) || !two(6, &h2) || !two(9, &m2)) return false;
  if (h1 > 23 || m1 > 59 || m2 > 59 || h2 > 24 || (h2 == 24 && m2 != 0)) return false;
  *start = h1 * 60 + m1;
  *end = h2 * 60 + m2;
  return true;
}

Status ReadWindows(const Reader& pol, std::vector<AvailabilityWindow>* out) {
  HANSE_ASSIGN_OR_RETURN(auto tables, pol.Tables("window"));
  static constexpr std::string_view kDays[] = {"mon", "tue", "wed", "thu", "fri", "sat", "sun"};
  for (size_t i = 0; i < tables.size(); ++i) {
    Reader r(pol.ctx(), *tables[i], pol.Full("window") + "[" + std::to_string(i) + "]");
    HANSE_RETURN_IF_ERROR(r.Allow({"days", "hours"}));
    AvailabilityWindow w;
    std::vector<std::string> days;
    HANSE_RETURN_IF_ERROR(r.StringList(
        "days", &days, kReq,
        [](const std::string& s) {
          return std::find(std::begin(kDays), std::end(kDays), s) != std::end(kDays)
                     ? std::string()
                     : std::string("expected a day name: mon, tue, wed, thu, fri, sat, sun");
        },
        /*allow_empty_list=*/false));
    for (const auto& d : days) w.days.push_back(static_cast<int>(std::find(std::begin(kDays), std::end(kDays), d) - std::begin(kDays)));
    std::sort(w.days.begin(), w.days.end());
    const auto* h = r.Get("hours");
    if (!h) return r.Missing("hours");
    if (!h->is_string() || !ParseHours(h->as_string()->get(), &w.start_minute, &w.end_minute)) {
      return r.Error(*h, "hours", "expected \"HH:MM-HH:MM\" (00:00 to 24:00), got " + Describe(*h));
    }
    if (w.start_minute >= w.end_minute) {
      return r.Error(*h, "hours", "start must be before end (split a window across midnight in two), got " + Describe(*h));
    }
    out->push_back(std::move(w));
  }
  return Status::Ok();
}

Status ReadPolicy(const Reader& root, const SiteConfig& site, PolicyConfig* p) {
  HANSE_ASSIGN_OR_RETURN(const toml::table* t, root.Table("policy"));
  if (!t) return Status::Ok();
  Reader r(root.ctx(), *t, "policy");
  HANSE_RETURN_IF_ERROR(r.Allow({"leads", "architectures", "models", "torchscript_hashes", "datasets", "max_epochs",
                                 "max_batch_size", "devices", "timezone", "window",
                                 "quota_device_hours_per_lead_month", "max_model_bytes"}));
  HANSE_RETURN_IF_ERROR(r.StringList("leads", &p->leads, kOpt, [](const std::string& s) {
    return s == "*" ? std::string() : CheckName(s);
  }));
  if (p->leads.size() > 1 && std::find(p->leads.begin(), p->leads.end(), "*") != p->leads.end()) {
    return r.ErrorKey("leads", "\"*\" (every lead) must be the only entry");
  }
  HANSE_RETURN_IF_ERROR(r.StringList("architectures", &p->architectures, kOpt, [](const std::string& s) {
    return (s == "mlp" || s == "cnn" || s == "torchscript") ? std::string()
                                                              : std::string("expected \"mlp\", \"cnn\" or \"torchscript\"");
  }));
  HANSE_ASSIGN_OR_RETURN(const toml::table* models, r.Table("models"));
  if (models) {
    for (auto&& [key, node] : *models) {
      const std::string name(key.str());
      const std::string k = "policy.models." + name;
      if (!IsValidName(name)) return r.ErrorAt(key.source().begin, k, std::string("model name: expected ") + kNameRule);
      if (!node.is_string() || (!node.as_string()->get().empty() && !IsValidHash(node.as_string()->get()))) {
        return r.ErrorAt(node.source().begin, k,
                         "expected \"\" (any version) or a 64-character lowercase SHA-256 hex hash, got " + Describe(node));
      }
      p->models[name] = node.as_string()->get();
    }
  }
  HANSE_RETURN_IF_ERROR(r.StringList("torchscript_hashes", &p->torchscript_hashes, kOpt, [](const std::string& s) {
    return IsValidHash(s) ? std::string() : std::string("expected a 64-character lowercase SHA-256 hex hash");
  }));
  HANSE_RETURN_IF_ERROR(r.StringList("datasets", &p->datasets, kOpt, [&](const std::string& s) {
    if (site.datasets.count(s)) return std::string();
    std::string known;
    for (const auto& [n, d] : site.datasets) known += (known.empty() ? "" : ", ") + n;
    return "not a dataset of this site (declared: " + (known.empty() ? std::string("none") : known) + ")";
  }));
  HANSE_RETURN_IF_ERROR(r.Int("max_epochs", &p->max_epochs, 1, kOpt, 100000));
  HANSE_RETURN_IF_ERROR(r.Int("max_batch_size", &p->max_batch_size, 1, kOpt, 1 << 24));
  if (r.Has("devices")) {
    HANSE_RETURN_IF_ERROR(r.StringList("devices", &p->devices, kOpt, CheckDevice));
  }
  if (const auto* tz = r.Get("timezone")) {
    if (!tz->is_string()) return r.Error(*tz, "timezone", "expected an IANA time zone name such as \"Europe/Paris\", got " + Describe(*tz));
    try {
      (void)date::locate_zone(tz->as_string()->get());
    } catch (const std::exception& e) {
      return r.Error(*tz, "timezone", "unknown time zone " + Describe(*tz) +
                                          " (expected an IANA name such as \"Europe/Paris\"; " + e.what() + ")");
    }
    p->timezone = tz->as_string()->get();
  }
  HANSE_RETURN_IF_ERROR(ReadWindows(r, &p->windows));
  HANSE_RETURN_IF_ERROR(r.Number("quota_device_hours_per_lead_month", &p->quota_device_hours_per_lead_month, kNonNegative));
  HANSE_RETURN_IF_ERROR(r.Int("max_model_bytes", &p->max_model_bytes, 1));
  return Status::Ok();
}

Result<SiteConfig> ReadSite(const Ctx& ctx, const toml::table& t) {
  Reader r(ctx, t, "");
  HANSE_RETURN_IF_ERROR(r.Allow({"name", "coordinator", "coordinator_public_key", "key", "data_dir", "audit_log",
                                 "threads", "devices", "datasets", "policy"}));
  SiteConfig s;
  s.source = ctx.file;
  HANSE_RETURN_IF_ERROR(r.Name("name", &s.name, kReq));
  HANSE_RETURN_IF_ERROR(r.Endpoint("coordinator", &s.coordinator, kReq));
  HANSE_RETURN_IF_ERROR(r.PublicKey("coordinator_public_key", &s.coordinator_public_key_file, &s.coordinator_public_key, kReq));
  HANSE_RETURN_IF_ERROR(r.SecretKey("key", &s.secret_key_file, &s.public_key_file, kReq));
  HANSE_RETURN_IF_ERROR(r.Path("data_dir", &s.data_dir, kReq, Reader::Exist::kNoCheck));
  HANSE_RETURN_IF_ERROR(r.Path("audit_log", &s.audit_log, kOpt, Reader::Exist::kNoCheck));
  if (s.audit_log.empty()) s.audit_log = s.data_dir / "audit.log";
  HANSE_RETURN_IF_ERROR(r.Int("threads", &s.threads, 1, kOpt, 1024));
  if (r.Has("devices")) HANSE_RETURN_IF_ERROR(r.StringList("devices", &s.devices, kOpt, CheckDevice, false));

  HANSE_ASSIGN_OR_RETURN(const toml::table* ds, r.Table("datasets"));
  if (ds) {
    for (auto&& [key, node] : *ds) {
      const std::string name(key.str());
      const std::string k = "datasets." + name;
      if (!IsValidName(name)) return r.ErrorAt(key.source().begin, k, std::string("dataset name: expected ") + kNameRule);
      if (!node.is_table()) return r.ErrorAt(node.source().begin, k, "expected a table [" + k + "], got " + Describe(node));
      Reader dr(ctx, *node.as_table(), k);
      DatasetConfig d;
      d.name = name;
      HANSE_RETURN_IF_ERROR(ReadDataset(dr, &d));
      s.datasets.emplace(name, std::move(d));
    }
  }
  HANSE_RETURN_IF_ERROR(ReadPolicy(r, s, &s.policy));
  return s;
}

// ---------------------------------------------------------------- job

Result<JobConfig> ReadJob(const Ctx& ctx, const toml::table& t) {
  Reader r(ctx, t, "");
  HANSE_RETURN_IF_ERROR(r.Allow({"name", "initial_model", "model_name", "architecture", "hidden", "torchscript_module",
                                 "dataset", "rounds", "min_sites", "sites", "round_deadline_s", "max_retries",
                                 "evaluate", "max_update_norm", "clip_norm", "seed", "strategy", "training"}));
  JobConfig j;
  j.source = ctx.file;
  const auto model_check = ctx.check_model_files ? Reader::Exist::kFile : Reader::Exist::kNoCheck;
  HANSE_RETURN_IF_ERROR(r.Name("name", &j.name, kReq));
  HANSE_RETURN_IF_ERROR(r.Choice("architecture", &j.architecture, {"mlp", "cnn", "torchscript"}, kReq));
  HANSE_RETURN_IF_ERROR(r.Path("initial_model", &j.initial_model, kReq, model_check));
  HANSE_RETURN_IF_ERROR(r.Name("model_name", &j.model_name, kOpt));
  if (j.model_name.empty()) j.model_name = j.initial_model.stem().string();
  if (j.architecture == "mlp") {
    if (const auto* n = r.Get("hidden")) {
      if (!n->is_array()) return r.Error(*n, "hidden", "expected an array of layer sizes (integers >= 1), got " + Describe(*n));
      const auto& arr = *n->as_array();
      for (size_t i = 0; i < arr.size(); ++i) {
        const auto& e = *arr.get(i);
        if (!e.is_integer() || e.as_integer()->get() < 1 || e.as_integer()->get() > (1 << 20)) {
          return r.ErrorAt(e.source().begin, "hidden[" + std::to_string(i) + "]",
                           "expected an integer in [1, 1048576], got " + Describe(e));
        }
        j.hidden.push_back(static_cast<uint32_t>(e.as_integer()->get()));
      }
    }
  } else {
    HANSE_RETURN_IF_ERROR(r.Forbid("hidden", "only valid with architecture = \"mlp\""));
  }
  if (j.architecture == "torchscript") {
    HANSE_RETURN_IF_ERROR(r.Path("torchscript_module", &j.torchscript_module, kReq, model_check));
  } else {
    HANSE_RETURN_IF_ERROR(r.Forbid("torchscript_module", "only valid with architecture = \"torchscript\""));
  }
  HANSE_RETURN_IF_ERROR(r.Name("dataset", &j.dataset, kReq));
  HANSE_RETURN_IF_ERROR(r.Int("rounds", &j.rounds, 1, kOpt, 1000000));
  HANSE_RETURN_IF_ERROR(r.Int("min_sites", &j.min_sites, 1, kOpt, 100000));
  j.sites = {"all"};
  HANSE_RETURN_IF_ERROR(r.StringList(
      "sites", &j.sites, kOpt, [](const std::string& s) { return s == "all" ? std::string() : CheckName(s); },
      /*allow_empty_list=*/false));
  const bool all_sites = std::find(j.sites.begin(), j.sites.end(), "all") != j.sites.end();
  if (all_sites && j.sites.size() > 1) return r.ErrorKey("sites", "\"all\" must be the only entry");
  if (!all_sites && j.min_sites > j.sites.size()) {
    return r.ErrorKey("min_sites", "expected at most the number of listed sites (" + std::to_string(j.sites.size()) +
                                       "), got " + std::to_string(j.min_sites));
  }
  HANSE_RETURN_IF_ERROR(r.Int("round_deadline_s", &j.round_deadline_s, 1, kOpt, 30 * 24 * 3600));
  HANSE_RETURN_IF_ERROR(r.Int("max_retries", &j.max_retries, 0, kOpt, 1000));
  HANSE_RETURN_IF_ERROR(r.Bool("evaluate", &j.evaluate));
  HANSE_RETURN_IF_ERROR(r.OptNumber("max_update_norm", &j.max_update_norm, kPositive));
  HANSE_RETURN_IF_ERROR(r.OptNumber("clip_norm", &j.clip_norm, kPositive));
  if (j.clip_norm && j.max_update_norm && *j.clip_norm > *j.max_update_norm) {
    return r.ErrorKey("clip_norm", "must be <= max_update_norm (" + FormatNumber(*j.max_update_norm) + "), got " +
                                       FormatNumber(*j.clip_norm));
  }
  HANSE_RETURN_IF_ERROR(r.Int("seed", &j.seed, 0));

  HANSE_ASSIGN_OR_RETURN(const toml::table* st, r.Table("strategy"));
  if (st) {
    Reader x(ctx, *st, "strategy");
    auto& s = j.strategy;
    HANSE_RETURN_IF_ERROR(x.Allow({"rule", "server_lr", "beta1", "beta2", "tau", "trim_beta", "krum_f", "krum_m"}));
    HANSE_RETURN_IF_ERROR(x.Choice("rule", &s.rule,
                                   {"fedavg", "fedprox", "fedadam", "fedyogi", "fedadagrad", "median", "trimmed_mean",
                                    "krum", "multi_krum"},
                                   kOpt));
    HANSE_RETURN_IF_ERROR(x.Number("server_lr", &s.server_lr, kPositive));
    HANSE_RETURN_IF_ERROR(x.Number("beta1", &s.beta1, kFraction));
    HANSE_RETURN_IF_ERROR(x.Number("beta2", &s.beta2, kFraction));
    HANSE_RETURN_IF_ERROR(x.Number("tau", &s.tau, kPositive));
    HANSE_RETURN_IF_ERROR(x.Number("trim_beta", &s.trim_beta, Range{0.0, true, 0.5, false}));
    HANSE_RETURN_IF_ERROR(x.Int("krum_f", &s.krum_f, 0, kOpt, 100000));
    HANSE_RETURN_IF_ERROR(x.Int("krum_m", &s.krum_m, 1, kOpt, 100000));
    if ((s.rule == "krum" || s.rule == "multi_krum") && j.min_sites < 2 * s.krum_f + 3) {
      return x.ErrorKey("krum_f", "Krum tolerating f = " + std::to_string(s.krum_f) + " needs min_sites >= 2f+3 = " +
                                      std::to_string(2 * s.krum_f + 3) + ", got min_sites = " + std::to_string(j.min_sites));
    }
    if (s.rule == "multi_krum" && s.krum_m > j.min_sites - s.krum_f) {
      return x.ErrorKey("krum_m", "expected at most min_sites - krum_f = " + std::to_string(j.min_sites - s.krum_f) +
                                      ", got " + std::to_string(s.krum_m));
    }
  }
  HANSE_ASSIGN_OR_RETURN(const toml::table* tr, r.Table("training"));
  if (tr) {
    Reader x(ctx, *tr, "training");
    auto& s = j.training;
    HANSE_RETURN_IF_ERROR(x.Allow({"epochs", "batch_size", "optimizer", "lr", "momentum", "weight_decay", "prox_mu",
                                   "trainable", "update_dtype", "max_examples"}));
    HANSE_RETURN_IF_ERROR(x.Int("epochs", &s.epochs, 1, kOpt, 100000));
    HANSE_RETURN_IF_ERROR(x.Int("batch_size", &s.batch_size, 1, kOpt, 1 << 24));
    HANSE_RETURN_IF_ERROR(x.Choice("optimizer", &s.optimizer, {"sgd", "adam"}, kOpt));
    HANSE_RETURN_IF_ERROR(x.Number("lr", &s.lr, kPositive));
    HANSE_RETURN_IF_ERROR(x.Number("momentum", &s.momentum, kFraction));
    HANSE_RETURN_IF_ERROR(x.Number("weight_decay", &s.weight_decay, kNonNegative));
    HANSE_RETURN_IF_ERROR(x.Number("prox_mu", &s.prox_mu, kNonNegative));
    HANSE_RETURN_IF_ERROR(x.StringList("trainable", &s.trainable, kOpt, [](const std::string& p) {
      return p.empty() ? std::string("expected a non-empty tensor name pattern") : std::string();
    }));
    HANSE_RETURN_IF_ERROR(x.Choice("update_dtype", &s.update_dtype, {"f32", "bf16"}, kOpt));
    HANSE_RETURN_IF_ERROR(x.Int("max_examples", &s.max_examples, 0));
  }
  if (j.strategy.rule == "fedprox" && j.training.prox_mu <= 0) {
    if (tr && tr->get("prox_mu")) {
      return Reader(ctx, *tr, "training").ErrorKey("prox_mu", "rule \"fedprox\" needs prox_mu > 0, got 0");
    }
    return Reader(ctx, *st, "strategy").ErrorKey("rule", "rule \"fedprox\" needs training.prox_mu > 0 (it is not set)");
  }
  return j;
}

// ---------------------------------------------------------------- client

Result<ClientConfig> ReadClient(const Ctx& ctx, const toml::table& t) {
  Reader r(ctx, t, "");
  HANSE_RETURN_IF_ERROR(r.Allow({"coordinator", "coordinator_public_key", "key"}));
  ClientConfig c;
  c.source = ctx.file;
  HANSE_RETURN_IF_ERROR(r.Endpoint("coordinator", &c.coordinator, kReq));
  HANSE_RETURN_IF_ERROR(r.PublicKey("coordinator_public_key", &c.coordinator_public_key_file, &c.coordinator_public_key, kReq));
  HANSE_RETURN_IF_ERROR(r.SecretKey("key", &c.secret_key_file, &c.public_key_file, kReq));
  return c;
}

template <class Fn>
auto LoadFile(const fs::path& file, Fn&& read) -> decltype(read(std::declval<const Ctx&>(), std::declval<const toml::table&>())) {
  HANSE_ASSIGN_OR_RETURN(std::string text, ReadText(file));
  const Ctx ctx = FileCtx(file);
  HANSE_ASSIGN_OR_RETURN(toml::table t, ParseToml(text, ctx.file));
  return read(ctx, t);
}

}  // namespace

Result<CoordinatorConfig> LoadCoordinatorConfig(const fs::path& file) { return LoadFile(file, ReadCoordinator); }
Result<SiteConfig> LoadSiteConfig(const fs::path& file) { return LoadFile(file, ReadSite); }
Result<JobConfig> LoadJobConfig(const fs::path& file) { return LoadFile(file, ReadJob); }
Result<ClientConfig> LoadClientConfig(const fs::path& file) { return LoadFile(file, ReadClient); }

Result<JobConfig> ParseJobConfig(const std::string& text, const std::string& name_for_errors, const fs::path& base_dir) {
  Ctx ctx;
  ctx.file = name_for_errors;
  ctx.base = base_dir;
  // The coordinator parses a lead's job text: the model files are on the lead's
  // machine and arrive as uploaded blobs, so their existence is not checked.
  ctx.check_model_files = false;
  HANSE_ASSIGN_OR_RETURN(toml::table t, ParseToml(text, ctx.file));
  return ReadJob(ctx, t);
}

}  // namespace hanse
