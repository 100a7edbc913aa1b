// Commands that talk to the coordinator's admin API.
#include <fcntl.h>
#include <unistd.h>

#include <cstdlib>
#include <iostream>
#include <map>
#include <thread>
#include <tuple>

#include "cli/admin_client.h"
#include "cli/commands.h"
#include "cli/format.h"
#include "cli/report.h"
#include "core/config.h"
#include "core/fsutil.h"

namespace hanse::cli {

using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

fs::path DefaultClientConfigPath() {
  if (const char* x = std::getenv("XDG_CONFIG_HOME"); x && *x) return fs::path(x) / "hanse" / "client.toml";
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".config" / "hanse" / "client.toml";
  return fs::path("client.toml");
}

namespace {

// Loads the client config and connects; the Outcome says why not.
Outcome Open(const ConnectOptions& c, std::unique_ptr<AdminClient>* client) {
  fs::path path = c.config.empty() ? DefaultClientConfigPath() : c.config;
  if (!fs::exists(path)) {
    return Outcome::Local("no client config at " + path.string() +
                          (c.config.empty() ? " (pass --config FILE or write that file; see docs/CLI.md)" : ""));
  }
  auto config = LoadClientConfig(path);
  if (!config.ok()) return Outcome::Local(config.status().message());
  auto keys = LoadClientKeys(config.value());
  if (!keys.ok()) return Outcome::Local(keys.status().message());
  AdminClientOptions o;
  o.connect_timeout = c.connect_timeout;
  o.blob_cache = c.blob_cache;
  auto r = AdminClient::Connect(config->coordinator, keys.value(), o);
  if (!r.ok()) return Outcome::Unreachable(r.status().message());
  *client = std::move(r).value();
  return Outcome::Ok();
}

Outcome TransportFailure(const Status& s) {
  return Outcome::Unreachable(s.message());
}

Outcome RefusedBy(const proto::Reject& r) {
  std::string why = proto::ReasonName(r.code);
  return Outcome::Refused("the coordinator refused: " + (r.text.empty() ? why : r.text + " (" + why + ")"));
}

// Calls and expects a reply of type T; a Reject or another kind becomes an Outcome.
template <class T>
Outcome CallFor(AdminClient& client, proto::Message request, milliseconds timeout, T* reply) {
  auto r = client.Call(std::move(request), timeout);
  if (!r.ok()) return TransportFailure(r.status());
  if (auto* t = std::get_if<T>(&r.value())) {
    *reply = std::move(*t);
    return Outcome::Ok();
  }
  if (auto* rej = std::get_if<proto::Reject>(&r.value())) return RefusedBy(*rej);
  return Outcome::Unreachable(std::string("the coordinator answered with an unexpected ") +
                              proto::KindName(r.value()) + " message");
}

// Accepts Ack (or any of T) for actions.
Outcome CallForAck(AdminClient& client, proto::Message request, milliseconds timeout, proto::Ack* ack) {
  return CallFor<proto::Ack>(client, std::move(request), timeout, ack);
}

bool Ended(proto::JobState s) {
  return s == proto::JobState::kSucceeded || s == proto::JobState::kFailed || s == proto::JobState::kCancelled;
}

// Copies `from` to `to` through a temp file in the destination folder: `to`
// appears complete or not at all.
Status CopyAtomic(const fs::path& from, const fs::path& to) {
  fs::path dir = to.parent_path().empty() ? fs::path(".") : to.parent_path();
  std::error_code ec;
  fs::create_directories(dir, ec);
  if (ec) return Status::Io("cannot create folder " + dir.string() + ": " + ec.message());
  HANSE_ASSIGN_OR_RETURN(UniqueFd in, OpenFd(from, O_RDONLY));
  fs::path tmp = TempPathFor(to);
  HANSE_ASSIGN_OR_RETURN(UniqueFd outfd, OpenFd(tmp, O_WRONLY | O_CREAT | O_TRUNC, 0644));
  std::vector<std::byte> buf(1 << 20);
  uint64_t off = 0;
  Status st;
  while (st.ok()) {
    auto n = PreadFull(in.get(), off, buf, from);
    if (!n.ok()) {
      st = n.status();
      break;
    }
    if (n.value() == 0) break;
    st = WriteAll(outfd.get(), std::span<const std::byte>(buf.data(), n.value()), tmp);
    off += n.value();
  }
  if (st.ok()) st = Fsync(outfd.get(), tmp);
  if (st.ok()) st = outfd.Close(tmp);
  if (st.ok()) st = RenameDurable(tmp, to);
  if (!st.ok()) fs::remove(tmp, ec);
  return st;
}

}  // namespace

Outcome RunSubmit(const ConnectOptions& c, const fs::path& job_file, std::ostream& out, std::ostream& info) {
  // Validate here first: a typo is reported with file:line:key without a round trip.
  auto job = LoadJobConfig(job_file);
  if (!job.ok()) return Outcome::Local(job.status().message());
  auto text = ReadWholeFile(job_file);
  if (!text.ok()) return Outcome::Local(text.status().message());
  if (job->initial_model.empty()) return Outcome::Local(job_file.string() + ": initial_model is required");
  if (!fs::exists(job->initial_model)) {
    return Outcome::Local(job_file.string() + ": initial_model " + job->initial_model.string() + " does not exist");
  }

  std::unique_ptr<AdminClient> client;
  if (Outcome o = Open(c, &client); !o.ok()) return o;
  auto offered = client->Offer(job->initial_model);
  if (!offered.ok()) return Outcome::Local(offered.status().message());
  const auto& [hash, size] = offered.value();

  proto::SubmitJob req;
  req.job_toml = text.value();
  req.file_name = job_file.filename().string();
  req.model_hash = hash;
  req.model_size = size;
  if (job->needs_module()) {
    auto module = client->Offer(job->torchscript_module);
    if (!module.ok()) return Outcome::Local(module.status().message());
    std::tie(req.module_hash, req.module_size) = module.value();
  }
  proto::JobSubmitted reply;
  // The coordinator pulls the blobs during the call; large models need longer.
  milliseconds timeout = c.reply_timeout + milliseconds((size + req.module_size) / (1 << 20) * 1000);
  if (Outcome o = CallFor(*client, req, timeout, &reply); !o.ok()) return o;
  for (const std::string& h : {req.model_hash, req.module_hash}) {
    if (h.empty() || !client->Requested(h) || client->Uploaded(h)) continue;
    Status s = client->FinishUpload(h, c.reply_timeout);
    if (!s.ok()) return Outcome::Unreachable("job " + reply.job_id + " was accepted, but " + s.message());
  }
  info << "submitted " << job->name << " (" << job->architecture << ", " << job->strategy.rule << ", "
       << job->rounds << " rounds); initial model " << hash.substr(0, 12) << " (" << size << " bytes)\n";
  out << reply.job_id << "\n";
  return Outcome::Ok();
}

Outcome RunJobs(const ConnectOptions& c, std::ostream& out) {
  std::unique_ptr<AdminClient> client;
  if (Outcome o = Open(c, &client); !o.ok()) return o;
  proto::JobList list;
  if (Outcome o = CallFor(*client, proto::ListJobs{}, c.reply_timeout, &list); !o.ok()) return o;
  out << FormatJobList(list);
  return Outcome::Ok();
}

Outcome RunStatus(const ConnectOptions& c, const std::string& job_id, std::ostream& out) {
  std::unique_ptr<AdminClient> client;
  if (Outcome o = Open(c, &client); !o.ok()) return o;
  proto::JobStatus st;
  if (Outcome o = CallFor(*client, proto::GetJobStatus{job_id}, c.reply_timeout, &st); !o.ok()) return o;
  out << FormatJobStatus(st);
  return Outcome::Ok();
}

namespace {

// The live view of `hanse watch`, fed by status polls and by RoundEvents.
class WatchView {
 public:
  WatchView(std::ostream& out, bool tty) : out_(out), tty_(tty) {}

  void SetTotal(uint32_t total) { total_ = total; }

  void Progress(uint32_t round, uint32_t answered, uint32_t expected, std::optional<double> elapsed) {
    if (round <= last_committed_) return;
    if (round != round_) {
      round_ = round;
      round_start_ = Clock::now();
      shown_.clear();
    }
    double secs = elapsed.value_or(std::chrono::duration<double>(Clock::now() - round_start_).count());
    std::string line = FormatRoundProgress(round, total_, answered, expected, secs);
    if (tty_) {
      out_ << "\r" << line << "\x1b[K" << std::flush;
      open_line_ = true;
    } else {
      // Without a terminal, print only when the count changes (not every tick of the clock).
      std::string key = std::to_string(answered) + "/" + std::to_string(expected);
      if (key != shown_) {
        out_ << line << "\n" << std::flush;
        shown_ = key;
      }
    }
  }

  void Committed(uint32_t round, double loss, double accuracy, bool has_eval, std::optional<double> elapsed) {
    if (round <= last_committed_) return;
    double secs = elapsed.value_or(round == round_ ? std::chrono::duration<double>(Clock::now() - round_start_).count()
                                                   : 0.0);
    CloseLine();
    if (has_eval) {
      out_ << FormatRoundCommitted(round, total_, loss, accuracy, secs) << "\n";
    } else {
      out_ << "round " << round << "/" << total_ << " committed (" << FormatDuration(secs) << ")\n";
    }
    out_ << std::flush;
    last_committed_ = round;
    last_accuracy_ = has_eval ? std::optional<double>(accuracy) : std::nullopt;
  }

  void CloseLine() {
    if (open_line_) {
      out_ << "\n";
      open_line_ = false;
    }
  }

  uint32_t last_committed() const { return last_committed_; }
  std::optional<double> last_accuracy() const { return last_accuracy_; }

 private:
  std::ostream& out_;
  bool tty_;
  uint32_t total_ = 0;
  uint32_t round_ = 0;
  uint32_t last_committed_ = 0;
  Clock::time_point round_start_ = Clock::now();
  std::string shown_;
  bool open_line_ = false;
  std::optional<double> last_accuracy_;
};

// Folds a status poll into the view. Rounds up to rounds_done are committed.
void ShowStatus(WatchView& view, const proto::JobStatus& st) {
  view.SetTotal(st.summary.rounds_total);
  for (const auto& r : st.rounds) {
    if (r.round <= st.summary.rounds_done) {
      view.Committed(r.round, r.eval_loss, r.eval_accuracy, r.eval_examples > 0,
                     r.duration_seconds > 0 ? std::optional<double>(r.duration_seconds) : std::nullopt);
    }
  }
  if (!Ended(st.summary.state) && !st.rounds.empty()) {
    const auto& r = st.rounds.back();
    if (r.round > st.summary.rounds_done) view.Progress(r.round, r.answered, r.expected, std::nullopt);
  }
}

}  // namespace

Outcome RunWatch(const ConnectOptions& c, const WatchArgs& args, std::ostream& out) {
  std::unique_ptr<AdminClient> client;
  if (Outcome o = Open(c, &client); !o.ok()) return o;
  proto::JobStatus st;
  if (Outcome o = CallFor(*client, proto::GetJobStatus{args.job_id}, c.reply_timeout, &st); !o.ok()) return o;

  WatchView view(out, args.tty);
  out << "watching job " << st.summary.job_id << (st.summary.name.empty() ? "" : " (" + st.summary.name + ")")
      << ": " << st.summary.rounds_total << " rounds, " << st.architecture << " on " << st.dataset << ", "
      << st.strategy << "\n";
  ShowStatus(view, st);
  // Live events when the coordinator streams them; the status polls below keep
  // the view right (and detect the end) either way.
  // A coordinator that refuses the watch request leaves the polls to do the work.
  if (!Ended(st.summary.state)) {
    auto id = client->Send(proto::WatchJob{args.job_id});
    if (!id.ok()) return TransportFailure(id.status());
  }
  auto started = Clock::now();
  auto next_poll = Clock::now() + args.poll;
  int failed_polls = 0;
  while (!Ended(st.summary.state)) {
    if (args.timeout.count() > 0 && Clock::now() - started > args.timeout) {
      view.CloseLine();
      return Outcome::Unreachable("job " + args.job_id + " did not end within " +
                                  std::to_string(args.timeout.count()) + " s of watching");
    }
    auto wait = std::chrono::duration_cast<milliseconds>(next_poll - Clock::now());
    if (wait.count() > 0) {
      auto env = client->Next(std::min(wait, milliseconds(200)));
      if (!env.ok()) return TransportFailure(env.status());
      if (env.value()) {
        const auto& msg = env.value()->message;
        if (const auto* ev = std::get_if<proto::RoundEvent>(&msg); ev && ev->job_id == st.summary.job_id) {
          if (ev->kind == "progress") {
            view.Progress(ev->round, ev->answered, ev->expected, ev->elapsed_seconds);
          } else if (ev->kind == "committed") {
            // A job without federated evaluation commits with no metrics.
            bool has_eval = ev->eval_loss > 0 || ev->eval_accuracy > 0;
            view.Committed(ev->round, ev->eval_loss, ev->eval_accuracy, has_eval, ev->elapsed_seconds);
          } else if (ev->kind == "job_ended") {
            next_poll = Clock::now();  // read the final state now
          }
        }
      }
      continue;
    }
    next_poll = Clock::now() + args.poll;
    proto::JobStatus fresh;
    Outcome o = CallFor(*client, proto::GetJobStatus{args.job_id}, c.reply_timeout, &fresh);
    if (!o.ok()) {
      if (o.exit == Exit::kUnreachable && ++failed_polls < 3) continue;
      view.CloseLine();
      return o;
    }
    failed_polls = 0;
    st = std::move(fresh);
    ShowStatus(view, st);
  }
  view.CloseLine();
  const auto& s = st.summary;
  std::string acc = view.last_accuracy() ? ", final accuracy " + Percent(*view.last_accuracy()) : "";
  if (s.state == proto::JobState::kSucceeded) {
    out << "job " << s.job_id << " succeeded: " << s.rounds_done << "/" << s.rounds_total << " rounds" << acc << "\n";
    return Outcome::Ok();
  }
  out << "job " << s.job_id << " " << proto::JobStateName(s.state) << " after " << s.rounds_done << "/"
      << s.rounds_total << " rounds" << acc << (s.reason.empty() ? "" : ": " + s.reason) << "\n";
  return Outcome::JobFailed("job " + s.job_id + " " + proto::JobStateName(s.state) +
                            (s.reason.empty() ? "" : ": " + s.reason));
}

Outcome RunCancel(const ConnectOptions& c, const std::string& job_id, std::ostream& out) {
  std::unique_ptr<AdminClient> client;
  if (Outcome o = Open(c, &client); !o.ok()) return o;
  proto::Ack ack;
  if (Outcome o = CallForAck(*client, proto::CancelJob{job_id}, c.reply_timeout, &ack); !o.ok()) return o;
  out << "cancelled job " << job_id << (ack.text.empty() ? "" : ": " + ack.text) << "\n";
  return Outcome::Ok();
}

Outcome RunFetch(const ConnectOptions& c, const std::string& job_id, std::optional<uint32_t> round,
              const fs::path& output, std::ostream& out) {
  if (output.empty()) return Outcome::Usage("fetch needs -o FILE");
  std::unique_ptr<AdminClient> client;
  if (Outcome o = Open(c, &client); !o.ok()) return o;
  proto::ModelRef ref;
  if (Outcome o = CallFor(*client, proto::FetchModel{job_id, round}, c.reply_timeout, &ref); !o.ok()) return o;
  auto path = client->Pull(ref.hash, ref.size, c.reply_timeout);
  if (!path.ok()) {
    if (path.status().code() == Code::kNotFound || path.status().code() == Code::kFailedPrecondition) {
      return Outcome::Refused(path.status().message());
    }
    if (path.status().code() == Code::kIo) return Outcome::Local(path.status().message());
    return Outcome::Unreachable(path.status().message());
  }
  if (Status s = CopyAtomic(path.value(), output); !s.ok()) return Outcome::Local(s.message());
  out << "wrote " << output.string() << " (job " << ref.job_id << ", round " << ref.round << ", " << ref.size
      << " bytes, sha256 " << ref.hash << ")\n";
  return Outcome::Ok();
}

Outcome RunReport(const ConnectOptions& c, const std::string& job_id, const fs::path& dir, std::ostream& out) {
  if (dir.empty()) return Outcome::Usage("report needs -o DIR");
  std::unique_ptr<AdminClient> client;
  if (Outcome o = Open(c, &client); !o.ok()) return o;
  proto::JobStatus st;
  if (Outcome o = CallFor(*client, proto::GetJobStatus{job_id}, c.reply_timeout, &st); !o.ok()) return o;
  auto files = WriteReport(st, dir);
  if (!files.ok()) return Outcome::Local(files.status().message());
  out << "report: " << files->html.string() << "\n";
  out << "data:  ";
  for (const auto& f : files->csv) out << " " << f.string();
  out << "\n";
  if (!files->warning.empty()) std::cerr << "hanse: warning: " << files->warning << "\n";
  return Outcome::Ok();
}

Outcome RunUsage(const ConnectOptions& c, const UsageArgs& args, std::ostream& out) {
  proto::GetUsage req;
  req.by = args.by;
  if (!args.from.empty()) {
    auto t = ParseTime(args.from);
    if (!t.ok()) return Outcome::Usage("--from: " + t.status().message());
    req.from_unix = t.value();
  }
  if (!args.to.empty()) {
    auto t = ParseTime(args.to);
    if (!t.ok()) return Outcome::Usage("--to: " + t.status().message());
    req.to_unix = t.value();
  }
  if (req.from_unix && req.to_unix && req.to_unix <= req.from_unix) {
    return Outcome::Usage("--to must come after --from");
  }
  std::unique_ptr<AdminClient> client;
  if (Outcome o = Open(c, &client); !o.ok()) return o;
  proto::UsageReport rep;
  if (Outcome o = CallFor(*client, req, c.reply_timeout, &rep); !o.ok()) return o;
  out << (args.csv ? UsageCsv(rep, args.by) : FormatUsage(rep, args.by));
  return Outcome::Ok();
}

Outcome RunSites(const ConnectOptions& c, std::ostream& out) {
  std::unique_ptr<AdminClient> client;
  if (Outcome o = Open(c, &client); !o.ok()) return o;
  proto::SiteList list;
  if (Outcome o = CallFor(*client, proto::ListSites{}, c.reply_timeout, &list); !o.ok()) return o;
  out << FormatSiteList(list);
  return Outcome::Ok();
}

}  // namespace hanse::cli
