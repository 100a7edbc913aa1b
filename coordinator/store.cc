#include "coordinator/store.h"

#include <sqlite3.h>

#include <algorithm>
#include <cstring>
#include <utility>

namespace hanse::coord {

namespace {

constexpr const char* kSchema = R"sql(
CREATE TABLE IF NOT EXISTS meta(key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS jobs(
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL UNIQUE, name TEXT NOT NULL, lead TEXT NOT NULL, state INTEGER NOT NULL,
  reason TEXT NOT NULL, job_toml TEXT NOT NULL, file_name TEXT NOT NULL,
  initial_model TEXT NOT NULL, initial_size INTEGER NOT NULL, rounds_total INTEGER NOT NULL,
  rounds_done INTEGER NOT NULL, model_hash TEXT NOT NULL, model_size INTEGER NOT NULL,
  opt_state_hash TEXT NOT NULL, created_unix INTEGER NOT NULL, ended_unix INTEGER NOT NULL,
  module_hash TEXT NOT NULL DEFAULT '', module_size INTEGER NOT NULL DEFAULT 0);
CREATE TABLE IF NOT EXISTS rounds(
  job_id TEXT NOT NULL, round INTEGER NOT NULL, attempt INTEGER NOT NULL, state INTEGER NOT NULL,
  started_unix REAL NOT NULL, duration_s REAL NOT NULL, deadline_left_ms INTEGER NOT NULL,
  model_in TEXT NOT NULL, model_in_size INTEGER NOT NULL, model_out TEXT NOT NULL,
  model_out_size INTEGER NOT NULL, opt_state_out TEXT NOT NULL, eval_loss REAL NOT NULL,
  eval_accuracy REAL NOT NULL, eval_examples INTEGER NOT NULL, reason TEXT NOT NULL,
  PRIMARY KEY(job_id, round));
CREATE TABLE IF NOT EXISTS round_sites(
  job_id TEXT NOT NULL, round INTEGER NOT NULL, site TEXT NOT NULL, attempt INTEGER NOT NULL,
  task_id TEXT NOT NULL, state TEXT NOT NULL, accepted INTEGER NOT NULL, update_hash TEXT NOT NULL,
  update_size INTEGER NOT NULL, examples INTEGER NOT NULL, train_loss REAL NOT NULL,
  train_accuracy REAL NOT NULL, eval_task_id TEXT NOT NULL, evaluated INTEGER NOT NULL,
  eval_loss REAL NOT NULL, eval_accuracy REAL NOT NULL, eval_examples INTEGER NOT NULL,
  seconds REAL NOT NULL, reason TEXT NOT NULL,
  PRIMARY KEY(job_id, round, site));
CREATE INDEX IF NOT EXISTS round_sites_by_site ON round_sites(site);
CREATE TABLE IF NOT EXISTS updates(
  job_id TEXT NOT NULL, round INTEGER NOT NULL, site TEXT NOT NULL, task_id TEXT NOT NULL,
  update_hash TEXT NOT NULL, update_size INTEGER NOT NULL, examples INTEGER NOT NULL,
  received_unix REAL NOT NULL, deleted INTEGER NOT NULL, l2_norm REAL,
  PRIMARY KEY(job_id, round, site, task_id));
CREATE TABLE IF NOT EXISTS checkpoints(
  job_id TEXT NOT NULL, round INTEGER NOT NULL, hash TEXT NOT NULL, size INTEGER NOT NULL,
  deleted INTEGER NOT NULL, PRIMARY KEY(job_id, round));
CREATE TABLE IF NOT EXISTS transitions(
  id INTEGER PRIMARY KEY AUTOINCREMENT, job_id TEXT NOT NULL, round INTEGER NOT NULL,
  attempt INTEGER NOT NULL, from_state TEXT NOT NULL, event TEXT NOT NULL, to_state TEXT NOT NULL,
  unix_time REAL NOT NULL);
CREATE TABLE IF NOT EXISTS usage(
  id INTEGER PRIMARY KEY AUTOINCREMENT, unix_time INTEGER NOT NULL, job_id TEXT NOT NULL,
  lead TEXT NOT NULL, site TEXT NOT NULL, round INTEGER NOT NULL, kind TEXT NOT NULL,
  task_id TEXT NOT NULL, cpu_seconds REAL NOT NULL, gpu_seconds REAL NOT NULL,
  wall_seconds REAL NOT NULL, device TEXT NOT NULL, UNIQUE(task_id, kind));
CREATE INDEX IF NOT EXISTS usage_by_time ON usage(unix_time);
CREATE TABLE IF NOT EXISTS sites(name TEXT PRIMARY KEY, last_seen_unix INTEGER NOT NULL, hello TEXT NOT NULL);
)sql";

// Columns added after a table was first released. CREATE TABLE IF NOT EXISTS
// leaves an existing table as it is, so Open adds what an older database lacks
// (ALTER TABLE ADD COLUMN: its existing rows read NULL). Nullable, so that old
// rows and old binaries (which name their columns) keep working.
struct AddedColumn {
  const char* table;
  const char* column;
  const char* decl;
};
constexpr AddedColumn kAddedColumns[] = {
    {"updates", "l2_norm", "REAL"},
    {"jobs", "module_hash", "TEXT NOT NULL DEFAULT ''"},
    {"jobs", "module_size", "INTEGER NOT NULL DEFAULT 0"},
};

}  // namespace

struct Store::Impl {
  sqlite3* db = nullptr;
  std::filesystem::path file;
  ~Impl() {
    if (db) sqlite3_close_v2(db);
  }
  Status Error(const std::string& what) const {
    const char* msg = db ? sqlite3_errmsg(db) : "no database";
    int code = db ? sqlite3_errcode(db) : SQLITE_ERROR;
    std::string text = "sqlite " + file.string() + ": " + what + ": " + msg;
    if (code == SQLITE_CORRUPT || code == SQLITE_NOTADB) return Status::Corruption(text);
    return Status::Io(text);
  }
  Status Exec(const char* sql) {
    char* err = nullptr;
    if (sqlite3_exec(db, sql, nullptr, nullptr, &err) != SQLITE_OK) {
      std::string m = err ? err : "?";
      sqlite3_free(err);
      return Status::Io("sqlite " + file.string() + ": " + m);
    }
    return Status::Ok();
  }
};

namespace {

// A prepared statement with positional binds; finalized at destruction.
class Stmt {
 public:
  Stmt(Store::Impl& impl, const char* sql) : impl_(impl) {
    if (sqlite3_prepare_v2(impl.db, sql, -1, &stmt_, nullptr) != SQLITE_OK) {
      status_ = impl.Error(std::string("prepare ") + sql);
      stmt_ = nullptr;
    }
  }
  ~Stmt() {
    if (stmt_) sqlite3_finalize(stmt_);
  }
  Stmt(const Stmt&) = delete;
  Stmt& operator=(const Stmt&) = delete;

  const Status& status() const { return status_; }
  Stmt& Bind(const std::string& v) {
    if (stmt_) sqlite3_bind_text(stmt_, ++idx_, v.data(), static_cast<int>(v.size()), SQLITE_TRANSIENT);
    return *this;
  }
  Stmt& Bind(const char* v) { return Bind(std::string(v)); }
  Stmt& Bind(int64_t v) {
    if (stmt_) sqlite3_bind_int64(stmt_, ++idx_, v);
    return *this;
  }
  Stmt& Bind(uint64_t v) { return Bind(static_cast<int64_t>(v)); }
  Stmt& Bind(uint32_t v) { return Bind(static_cast<int64_t>(v)); }
  Stmt& Bind(int v) { return Bind(static_cast<int64_t>(v)); }
  Stmt& Bind(bool v) { return Bind(static_cast<int64_t>(v ? 1 : 0)); }
  Stmt& Bind(double v) {
    if (stmt_) sqlite3_bind_double(stmt_, ++idx_, v);
    return *this;
  }
  // nullopt -> NULL. (SQLite also stores a NaN as NULL: it reads back as nullopt.)
  Stmt& Bind(const std::optional<double>& v) {
    if (!v) {
      if (stmt_) sqlite3_bind_null(stmt_, ++idx_);
      return *this;
    }
    return Bind(*v);
  }
  // SQLITE_ROW -> true, SQLITE_DONE -> false, else error.
  Result<bool> Step() {
    if (!stmt_) return status_;
    int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return impl_.Error("step");
  }
  Status Run() {
    auto r = Step();
    if (!r.ok()) return r.status();
    return Status::Ok();
  }
  int rc_constraint() const { return sqlite3_extended_errcode(impl_.db); }
  std::string Text(int c) const {
    const unsigned char* t = sqlite3_column_text(stmt_, c);
    int n = sqlite3_column_bytes(stmt_, c);
    return t ? std::string(reinterpret_cast<const char*>(t), static_cast<size_t>(n)) : std::string();
  }
  int64_t Int(int c) const { return sqlite3_column_int64(stmt_, c); }
  uint64_t U64(int c) const { return static_cast<uint64_t>(sqlite3_column_int64(stmt_, c)); }
  uint32_t U32(int c) const { return static_cast<uint32_t>(sqlite3_column_int64(stmt_, c)); }
  double Real(int c) const { return sqlite3_column_double(stmt_, c); }
  std::optional<double> OptReal(int c) const {
    if (sqlite3_column_type(stmt_, c) == SQLITE_NULL) return std::nullopt;
    return sqlite3_column_double(stmt_, c);
  }

 private:
  Store::Impl& impl_;
  sqlite3_stmt* stmt_ = nullptr;
  Status status_;
  int idx_ = 0;
};

template <class T, class F>
Result<std::vector<T>> Collect(Stmt& st, F&& read) {
  std::vector<T> out;
  while (true) {
    auto r = st.Step();
    if (!r.ok()) return r.status();
    if (!*r) break;
    out.push_back(read(st));
  }
  return out;
}

constexpr const char* kJobCols =
    "job_id,name,lead,state,reason,job_toml,file_name,initial_model,initial_size,rounds_total,rounds_done,"
    "model_hash,model_size,opt_state_hash,created_unix,ended_unix,module_hash,module_size";

JobRecord ReadJob(const Stmt& s) {
  JobRecord j;
  j.job_id = s.Text(0);
  j.name = s.Text(1);
  j.lead = s.Text(2);
  j.state = static_cast<JobState>(s.Int(3));
  j.reason = s.Text(4);
  j.job_toml = s.Text(5);
  j.file_name = s.Text(6);
  j.initial_model = s.Text(7);
  j.initial_size = s.U64(8);
  j.rounds_total = s.U32(9);
  j.rounds_done = s.U32(10);
  j.model_hash = s.Text(11);
  j.model_size = s.U64(12);
  j.opt_state_hash = s.Text(13);
  j.created_unix = s.Int(14);
  j.ended_unix = s.Int(15);
  j.module_hash = s.Text(16);
  j.module_size = s.U64(17);
  return j;
}

constexpr const char* kRoundCols =
    "job_id,round,attempt,state,started_unix,duration_s,deadline_left_ms,model_in,model_in_size,model_out,"
    "model_out_size,opt_state_out,eval_loss,eval_accuracy,eval_examples,reason";

RoundRecord ReadRound(const Stmt& s) {
  RoundRecord r;
  r.job_id = s.Text(0);
  r.round = s.U32(1);
  r.attempt = s.U32(2);
  r.state = static_cast<RoundState>(s.Int(3));
  r.started_unix = s.Real(4);
  r.duration_s = s.Real(5);
  r.deadline_left_ms = s.Int(6);
  r.model_in = s.Text(7);
  r.model_in_size = s.U64(8);
  r.model_out = s.Text(9);
  r.model_out_size = s.U64(10);
  r.opt_state_out = s.Text(11);
  r.eval_loss = s.Real(12);
  r.eval_accuracy = s.Real(13);
  r.eval_examples = s.U64(14);
  r.reason = s.Text(15);
  return r;
}

constexpr const char* kRoundSiteCols =
    "job_id,round,site,attempt,task_id,state,accepted,update_hash,update_size,examples,train_loss,"
    "train_accuracy,eval_task_id,evaluated,eval_loss,eval_accuracy,eval_examples,seconds,reason";

RoundSiteRecord ReadRoundSite(const Stmt& s) {
  RoundSiteRecord r;
  r.job_id = s.Text(0);
  r.round = s.U32(1);
  r.site = s.Text(2);
  r.attempt = s.U32(3);
  r.task_id = s.Text(4);
  r.state = s.Text(5);
  r.accepted = s.Int(6) != 0;
  r.update_hash = s.Text(7);
  r.update_size = s.U64(8);
  r.examples = s.U64(9);
  r.train_loss = s.Real(10);
  r.train_accuracy = s.Real(11);
  r.eval_task_id = s.Text(12);
  r.evaluated = s.Int(13) != 0;
  r.eval_loss = s.Real(14);
  r.eval_accuracy = s.Real(15);
  r.eval_examples = s.U64(16);
  r.seconds = s.Real(17);
  r.reason = s.Text(18);
  return r;
}

constexpr const char* kUpdateCols =
    "job_id,round,site,task_id,update_hash,update_size,examples,received_unix,deleted,l2_norm";

UpdateRecord ReadUpdate(const Stmt& s) {
  UpdateRecord u;
  u.job_id = s.Text(0);
  u.round = s.U32(1);
  u.site = s.Text(2);
  u.task_id = s.Text(3);
  u.update_hash = s.Text(4);
  u.update_size = s.U64(5);
  u.examples = s.U64(6);
  u.received_unix = s.Real(7);
  u.deleted = s.Int(8) != 0;
  u.l2_norm = s.OptReal(9);
  return u;
}

Status AddMissingColumns(Store::Impl& impl) {
  for (const auto& c : kAddedColumns) {
    std::string info = std::string("PRAGMA table_info(") + c.table + ")";
    Stmt st(impl, info.c_str());
    auto names = Collect<std::string>(st, [](const Stmt& s) { return s.Text(1); });
    if (!names.ok()) return names.status();
    if (std::find(names->begin(), names->end(), c.column) != names->end()) continue;
    std::string alter = std::string("ALTER TABLE ") + c.table + " ADD COLUMN " + c.column + " " + c.decl;
    HANSE_RETURN_IF_ERROR(impl.Exec(alter.c_str()));
  }
  return Status::Ok();
}

}  // namespace

Store::Store(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Store::~Store() = default;

Result<std::unique_ptr<Store>> Store::Open(const std::filesystem::path& file) {
  auto impl = std::make_unique<Impl>();
  impl->file = file;
  int rc = sqlite3_open_v2(file.c_str(), &impl->db,
                           SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) return impl->Error("open");
  sqlite3_busy_timeout(impl->db, 5000);
  // WAL + FULL: every COMMIT is fsynced before it returns, so what we acknowledge is durable.
  HANSE_RETURN_IF_ERROR(impl->Exec("PRAGMA journal_mode=WAL"));
  HANSE_RETURN_IF_ERROR(impl->Exec("PRAGMA synchronous=FULL"));
  HANSE_RETURN_IF_ERROR(impl->Exec("PRAGMA foreign_keys=ON"));
  {
    // journal_mode answers with the mode actually in effect; refuse to run without WAL.
    Stmt st(*impl, "PRAGMA journal_mode");
    auto r = st.Step();
    if (!r.ok()) return r.status();
    if (!*r || st.Text(0) != "wal") return Status::Io("sqlite " + file.string() + ": WAL mode not available");
  }
  HANSE_RETURN_IF_ERROR(impl->Exec(kSchema));
  HANSE_RETURN_IF_ERROR(AddMissingColumns(*impl));
  return std::unique_ptr<Store>(new Store(std::move(impl)));
}

Store::Transaction::Transaction(Store& store) : store_(store) { begin_ = store_.impl_->Exec("BEGIN IMMEDIATE"); }
Store::Transaction::~Transaction() {
  if (!done_ && begin_.ok()) (void)store_.impl_->Exec("ROLLBACK");
}
Status Store::Transaction::Commit() {
  if (!begin_.ok()) return begin_;
  done_ = true;
  Status s = store_.impl_->Exec("COMMIT");
  if (!s.ok()) (void)store_.impl_->Exec("ROLLBACK");
  return s;
}

Result<std::string> Store::NextJobId() {
  Stmt st(*impl_, "SELECT COALESCE(MAX(seq),0)+1 FROM jobs");
  auto r = st.Step();
  if (!r.ok()) return r.status();
  char buf[32];
  std::snprintf(buf, sizeof buf, "job-%06lld", static_cast<long long>(st.Int(0)));
  return std::string(buf);
}

Status Store::PutJob(const JobRecord& j) {
  Stmt st(*impl_,
          "INSERT INTO jobs(job_id,name,lead,state,reason,job_toml,file_name,initial_model,initial_size,"
          "rounds_total,rounds_done,model_hash,model_size,opt_state_hash,created_unix,ended_unix,module_hash,"
          "module_size) VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?) ON CONFLICT(job_id) DO UPDATE SET "
          "name=excluded.name,lead=excluded.lead,state=excluded.state,reason=excluded.reason,"
          "job_toml=excluded.job_toml,file_name=excluded.file_name,initial_model=excluded.initial_model,"
          "initial_size=excluded.initial_size,rounds_total=excluded.rounds_total,rounds_done=excluded.rounds_done,"
          "model_hash=excluded.model_hash,model_size=excluded.model_size,opt_state_hash=excluded.opt_state_hash,"
          "created_unix=excluded.created_unix,ended_unix=excluded.ended_unix,module_hash=excluded.module_hash,"
          "module_size=excluded.module_size");
  st.Bind(j.job_id).Bind(j.name).Bind(j.lead).Bind(static_cast<int>(j.state)).Bind(j.reason).Bind(j.job_toml);
  st.Bind(j.file_name).Bind(j.initial_model).Bind(j.initial_size).Bind(j.rounds_total).Bind(j.rounds_done);
  st.Bind(j.model_hash).Bind(j.model_size).Bind(j.opt_state_hash).Bind(j.created_unix).Bind(j.ended_unix);
  st.Bind(j.module_hash).Bind(j.module_size);
  return st.Run();
}

Result<std::optional<JobRecord>> Store::GetJob(const std::string& job_id) {
  std::string sql = std::string("SELECT ") + kJobCols + " FROM jobs WHERE job_id=?";
  Stmt st(*impl_, sql.c_str());
  st.Bind(job_id);
  auto r = st.Step();
  if (!r.ok()) return r.status();
  if (!*r) return std::optional<JobRecord>();
  return std::optional<JobRecord>(ReadJob(st));
}

Result<std::vector<JobRecord>> Store::ListJobs() {
  std::string sql = std::string("SELECT ") + kJobCols + " FROM jobs ORDER BY seq";
  Stmt st(*impl_, sql.c_str());
  return Collect<JobRecord>(st, ReadJob);
}

Status Store::PutRound(const RoundRecord& r) {
  std::string sql = std::string("INSERT OR REPLACE INTO rounds(") + kRoundCols +
                    ") VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
  Stmt st(*impl_, sql.c_str());
  st.Bind(r.job_id).Bind(r.round).Bind(r.attempt).Bind(static_cast<int>(r.state)).Bind(r.started_unix);
  st.Bind(r.duration_s).Bind(r.deadline_left_ms).Bind(r.model_in).Bind(r.model_in_size).Bind(r.model_out);
  st.Bind(r.model_out_size).Bind(r.opt_state_out).Bind(r.eval_loss).Bind(r.eval_accuracy).Bind(r.eval_examples);
  st.Bind(r.reason);
  return st.Run();
}

Result<std::optional<RoundRecord>> Store::GetRound(const std::string& job_id, uint32_t round) {
  std::string sql = std::string("SELECT ") + kRoundCols + " FROM rounds WHERE job_id=? AND round=?";
  Stmt st(*impl_, sql.c_str());
  st.Bind(job_id).Bind(round);
  auto r = st.Step();
  if (!r.ok()) return r.status();
  if (!*r) return std::optional<RoundRecord>();
  return std::optional<RoundRecord>(ReadRound(st));
}

Result<std::vector<RoundRecord>> Store::ListRounds(const std::string& job_id) {
  std::string sql = std::string("SELECT ") + kRoundCols + " FROM rounds WHERE job_id=? ORDER BY round";
  Stmt st(*impl_, sql.c_str());
  st.Bind(job_id);
  return Collect<RoundRecord>(st, ReadRound);
}

Status Store::PutRoundSite(const RoundSiteRecord& r) {
  std::string sql = std::string("INSERT OR REPLACE INTO round_sites(") + kRoundSiteCols +
                    ") VALUES(?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)";
  Stmt st(*impl_, sql.c_str());
  st.Bind(r.job_id).Bind(r.round).Bind(r.site).Bind(r.attempt).Bind(r.task_id).Bind(r.state).Bind(r.accepted);
  st.Bind(r.update_hash).Bind(r.update_size).Bind(r.examples).Bind(r.train_loss).Bind(r.train_accuracy);
  st.Bind(r.eval_task_id).Bind(r.evaluated).Bind(r.eval_loss).Bind(r.eval_accuracy).Bind(r.eval_examples);
  st.Bind(r.seconds).Bind(r.reason);
  return st.Run();
}

Result<std::vector<RoundSiteRecord>> Store::ListRoundSites(const std::string& job_id, uint32_t round) {
  std::string sql = std::string("SELECT ") + kRoundSiteCols +
                    " FROM round_sites WHERE job_id=? AND round=? ORDER BY site";
  Stmt st(*impl_, sql.c_str());
  st.Bind(job_id).Bind(round);
  return Collect<RoundSiteRecord>(st, ReadRoundSite);
}

Result<std::vector<std::string>> Store::JobsOfSite(const std::string& site) {
  Stmt st(*impl_, "SELECT DISTINCT job_id FROM round_sites WHERE site=? ORDER BY job_id");
  st.Bind(site);
  return Collect<std::string>(st, [](const Stmt& s) { return s.Text(0); });
}

Status Store::AddTransition(const TransitionRecord& t) {
  Stmt st(*impl_,
          "INSERT INTO transitions(job_id,round,attempt,from_state,event,to_state,unix_time) VALUES(?,?,?,?,?,?,?)");
  st.Bind(t.job_id).Bind(t.round).Bind(t.attempt).Bind(t.from).Bind(t.event).Bind(t.to).Bind(t.unix_time);
  return st.Run();
}

Result<std::vector<TransitionRecord>> Store::ListTransitions(const std::string& job_id) {
  Stmt st(*impl_,
          "SELECT job_id,round,attempt,from_state,event,to_state,unix_time FROM transitions WHERE job_id=? "
          "ORDER BY id");
  st.Bind(job_id);
  return Collect<TransitionRecord>(st, [](const Stmt& s) {
    TransitionRecord t;
    t.job_id = s.Text(0);
    t.round = s.U32(1);
    t.attempt = s.U32(2);
    t.from = s.Text(3);
    t.event = s.Text(4);
    t.to = s.Text(5);
    t.unix_time = s.Real(6);
    return t;
  });
}

Status Store::PutUpdate(const UpdateRecord& u) {
  std::string sql = std::string("INSERT INTO updates(") + kUpdateCols + ") VALUES(?,?,?,?,?,?,?,?,?,?)";
  Stmt st(*impl_, sql.c_str());
  st.Bind(u.job_id).Bind(u.round).Bind(u.site).Bind(u.task_id).Bind(u.update_hash).Bind(u.update_size);
  st.Bind(u.examples).Bind(u.received_unix).Bind(u.deleted).Bind(u.l2_norm);
  Status s = st.Run();
  if (!s.ok() && (st.rc_constraint() & 0xff) == SQLITE_CONSTRAINT) {
    return Status::AlreadyExists("update " + u.job_id + "/" + std::to_string(u.round) + "/" + u.site + "/" +
                                 u.task_id + " already stored");
  }
  return s;
}

Result<std::optional<UpdateRecord>> Store::GetUpdate(const std::string& job_id, uint32_t round,
                                                     const std::string& site, const std::string& task_id) {
  std::string sql = std::string("SELECT ") + kUpdateCols +
                    " FROM updates WHERE job_id=? AND round=? AND site=? AND task_id=?";
  Stmt st(*impl_, sql.c_str());
  st.Bind(job_id).Bind(round).Bind(site).Bind(task_id);
  auto r = st.Step();
  if (!r.ok()) return r.status();
  if (!*r) return std::optional<UpdateRecord>();
  return std::optional<UpdateRecord>(ReadUpdate(st));
}

Result<std::vector<UpdateRecord>> Store::ListUpdates(const std::string& job_id) {
  std::string sql = std::string("SELECT ") + kUpdateCols + " FROM updates WHERE job_id=? ORDER BY round, site";
  Stmt st(*impl_, sql.c_str());
  st.Bind(job_id);
  return Collect<UpdateRecord>(st, ReadUpdate);
}

Status Store::MarkUpdateDeleted(const std::string& job_id, uint32_t round, const std::string& site,
                                const std::string& task_id) {
  Stmt st(*impl_, "UPDATE updates SET deleted=1 WHERE job_id=? AND round=? AND site=? AND task_id=?");
  st.Bind(job_id).Bind(round).Bind(site).Bind(task_id);
  return st.Run();
}

Status Store::PutCheckpoint(const CheckpointRecord& c) {
  Stmt st(*impl_, "INSERT OR REPLACE INTO checkpoints(job_id,round,hash,size,deleted) VALUES(?,?,?,?,?)");
  st.Bind(c.job_id).Bind(c.round).Bind(c.hash).Bind(c.size).Bind(c.deleted);
  return st.Run();
}

Result<std::vector<CheckpointRecord>> Store::ListCheckpoints(const std::string& job_id) {
  Stmt st(*impl_, "SELECT job_id,round,hash,size,deleted FROM checkpoints WHERE job_id=? ORDER BY round");
  st.Bind(job_id);
  return Collect<CheckpointRecord>(st, [](const Stmt& s) {
    CheckpointRecord c;
    c.job_id = s.Text(0);
    c.round = s.U32(1);
    c.hash = s.Text(2);
    c.size = s.U64(3);
    c.deleted = s.Int(4) != 0;
    return c;
  });
}

Status Store::MarkCheckpointDeleted(const std::string& job_id, uint32_t round) {
  Stmt st(*impl_, "UPDATE checkpoints SET deleted=1 WHERE job_id=? AND round=?");
  st.Bind(job_id).Bind(round);
  return st.Run();
}

Result<bool> Store::HashInUse(const std::string& hash) {
  Stmt st(*impl_,
          "SELECT (SELECT COUNT(*) FROM checkpoints WHERE hash=?1 AND deleted=0) + "
          "(SELECT COUNT(*) FROM jobs WHERE model_hash=?1 OR initial_model=?1 OR opt_state_hash=?1 OR module_hash=?1) + "
          "(SELECT COUNT(*) FROM updates WHERE update_hash=?1 AND deleted=0) + "
          "(SELECT COUNT(*) FROM rounds WHERE (model_out=?1 OR model_in=?1 OR opt_state_out=?1) "
          "AND state NOT IN (6,8,9))");
  st.Bind(hash);
  auto r = st.Step();
  if (!r.ok()) return r.status();
  return st.Int(0) > 0;
}

Result<bool> Store::AddUsage(const UsageRecord& u) {
  Stmt st(*impl_,
          "INSERT OR IGNORE INTO usage(unix_time,job_id,lead,site,round,kind,task_id,cpu_seconds,gpu_seconds,"
          "wall_seconds,device) VALUES(?,?,?,?,?,?,?,?,?,?,?)");
  st.Bind(u.unix_time).Bind(u.job_id).Bind(u.lead).Bind(u.site).Bind(u.round).Bind(u.kind).Bind(u.task_id);
  st.Bind(u.cpu_seconds).Bind(u.gpu_seconds).Bind(u.wall_seconds).Bind(u.device);
  HANSE_RETURN_IF_ERROR(st.Run());
  return sqlite3_changes(impl_->db) > 0;
}

Result<std::vector<UsageSum>> Store::QueryUsage(const UsageQuery& q) {
  const char* key = q.by == UsageGroupBy::kSite ? "site" : q.by == UsageGroupBy::kLead ? "lead" : "job_id";
  std::string sql = std::string("SELECT ") + key +
                    ", COUNT(*), SUM(cpu_seconds), SUM(gpu_seconds) FROM usage WHERE unix_time>=? "
                    "AND (?=0 OR unix_time<?) AND (?='' OR site=?) AND (?='' OR lead=?) GROUP BY " +
                    key + " ORDER BY " + key;
  Stmt st(*impl_, sql.c_str());
  std::string site = q.only_site.value_or("");
  std::string lead = q.only_lead.value_or("");
  // An empty filter value would match everything: the caller restricts by a real name.
  st.Bind(q.from_unix).Bind(q.to_unix).Bind(q.to_unix).Bind(site).Bind(site).Bind(lead).Bind(lead);
  return Collect<UsageSum>(st, [](const Stmt& s) {
    UsageSum u;
    u.key = s.Text(0);
    u.tasks = s.U64(1);
    u.cpu_seconds = s.Real(2);
    u.gpu_seconds = s.Real(3);
    return u;
  });
}

Result<std::vector<UsageRecord>> Store::ListUsage() {
  Stmt st(*impl_,
          "SELECT unix_time,job_id,lead,site,round,kind,task_id,cpu_seconds,gpu_seconds,wall_seconds,device "
          "FROM usage ORDER BY id");
  return Collect<UsageRecord>(st, [](const Stmt& s) {
    UsageRecord u;
    u.unix_time = s.Int(0);
    u.job_id = s.Text(1);
    u.lead = s.Text(2);
    u.site = s.Text(3);
    u.round = s.U32(4);
    u.kind = s.Text(5);
    u.task_id = s.Text(6);
    u.cpu_seconds = s.Real(7);
    u.gpu_seconds = s.Real(8);
    u.wall_seconds = s.Real(9);
    u.device = s.Text(10);
    return u;
  });
}

Status Store::PutSiteSeen(const SiteSeenRecord& s) {
  Stmt st(*impl_, "INSERT OR REPLACE INTO sites(name,last_seen_unix,hello) VALUES(?,?,?)");
  st.Bind(s.name).Bind(s.last_seen_unix).Bind(s.hello);
  return st.Run();
}

Result<std::vector<SiteSeenRecord>> Store::ListSitesSeen() {
  Stmt st(*impl_, "SELECT name,last_seen_unix,hello FROM sites ORDER BY name");
  return Collect<SiteSeenRecord>(st, [](const Stmt& s) {
    SiteSeenRecord r;
    r.name = s.Text(0);
    r.last_seen_unix = s.Int(1);
    r.hello = s.Text(2);
    return r;
  });
}

Result<std::string> Store::IntegrityCheck() {
  Stmt st(*impl_, "PRAGMA integrity_check");
  auto r = st.Step();
  if (!r.ok()) return r.status();
  if (!*r) return std::string("no answer");
  return st.Text(0);
}

}  // namespace hanse::coord
