// The block-by-block aggregation engine.
//
// Passes over the blocks of the trainable tensors (global data order):
//   0. (only for updates not validated on arrival) finiteness and L2 norms;
//   1. (Krum) pairwise squared distances between the (clipped) updates;
//   2. the rule's delta per block, the server step, and the new model (and
//      FedOpt state) streamed out block by block.
// Every update is read with pread into buffers reused across blocks: memory is
// O(K x block) for median/trimmed mean/Krum and O(block) for the others.
#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <condition_variable>
#include <deque>
#include <mutex>
#include <thread>
#include <cstring>
#include <map>
#include <numeric>
#include <sstream>

#include "aggregation/aggregate.h"
#include "aggregation/engine.h"
#include "aggregation/kernels.h"
#include "core/fsutil.h"
#include "core/sha256.h"

namespace hanse::agg {
namespace {

constexpr const char* kStateKey = "hanse.optimizer";
constexpr const char* kStateLayoutKey = "hanse.layout";
constexpr const char* kStateLayout = "fedopt-mv-last-axis";

std::string Num(double v) {
  std::ostringstream os;
  os.precision(9);
  os << v;
  return os.str();
}

std::string Quote(const std::string& name) { return "tensor '" + name + "'"; }

bool IsFloat(DType d) { return d == DType::kF32 || d == DType::kBF16 || d == DType::kF16; }

// A safetensors file read by pread at tensor offsets (the header comes from
// SafetensorsFile, which validated it).
struct Source {
  std::filesystem::path path;
  std::unique_ptr<SafetensorsFile> st;
  UniqueFd fd;

  Status Open(const std::filesystem::path& p) {
    path = p;
    HANSE_ASSIGN_OR_RETURN(st, SafetensorsFile::Open(p));
    HANSE_ASSIGN_OR_RETURN(fd, OpenFd(p, O_RDONLY));
    posix_fadvise(fd.get(), 0, 0, POSIX_FADV_SEQUENTIAL);
    return Status::Ok();
  }
  // Raw bytes of elements [first, first+n) of `t` into dst.
  Status Read(const TensorInfo& t, uint64_t first, size_t n, void* dst) const {
    const uint64_t es = DTypeSize(t.dtype);
    const uint64_t len = n * es;
    std::span<std::byte> out(static_cast<std::byte*>(dst), len);
    HANSE_ASSIGN_OR_RETURN(uint64_t got, PreadFull(fd.get(), st->data_offset() + t.begin + first * es, out, path));
    if (got != len) return Status::Corruption(path.string() + ": " + Quote(t.name) + " is truncated");
    return Status::Ok();
  }
};

struct Input {
  std::string site;
  uint64_t examples = 0;
  std::optional<double> norm;
  Source src;
  std::vector<const TensorInfo*> tensors;  // per schema tensor
  std::vector<double> sumsq;               // per schema tensor, pass 0
  float scale = 1.0f;                      // clipping
  float coef = 0.0f;                       // fold coefficient (weight x scale)
  bool rejected = false;
};

// A BlobStore::Writer that writes a plain file atomically and hashes it.
class FileWriter final : public BlobStore::Writer {
 public:
  static Result<std::unique_ptr<FileWriter>> Create(const std::filesystem::path& target) {
    auto w = std::unique_ptr<FileWriter>(new FileWriter());
    w->target_ = target;
    w->temp_ = TempPathFor(target);
    HANSE_ASSIGN_OR_RETURN(w->fd_, OpenFd(w->temp_, O_WRONLY | O_CREAT | O_EXCL, 0644));
    return w;
  }
  ~FileWriter() override {
    if (!done_) {
      fd_.Reset();
      std::error_code ec;
      std::filesystem::remove(temp_, ec);
    }
  }
  Status Write(std::span<const std::byte> bytes) override {
    sha_.Update(bytes);
    return WriteAll(fd_.get(), bytes, temp_);
  }
  Result<std::string> Finish() override {
    HANSE_RETURN_IF_ERROR(Fsync(fd_.get(), temp_));
    HANSE_RETURN_IF_ERROR(fd_.Close(temp_));
    HANSE_RETURN_IF_ERROR(RenameDurable(temp_, target_));
    done_ = true;
    return sha_.Finish();
  }

 private:
  FileWriter() = default;
  std::filesystem::path target_, temp_;
  UniqueFd fd_;
  Sha256 sha_;
  bool done_ = false;
};

// Hands the output to a second thread (SHA-256 + write + writeback, inside the
// wrapped writer) through a few reused 1 MiB chunks, so storing the new model
// overlaps the aggregation instead of following it. Memory: 4 MiB, fixed.
class PipelinedWriter final : public BlobStore::Writer {
 public:
  explicit PipelinedWriter(std::unique_ptr<BlobStore::Writer> inner) : inner_(std::move(inner)) {
    for (auto& c : chunks_) {
      // Not value-initialized: only the pages a small output touches get faulted in.
      c.data.reset(new std::byte[kChunk]);
      free_.push_back(&c);
    }
    thread_ = std::thread([this] { Loop(); });
  }
  ~PipelinedWriter() override { Stop(); }

  Status Write(std::span<const std::byte> bytes) override {
    while (!bytes.empty()) {
      if (!current_) {
        std::unique_lock lock(mu_);
        cv_.wait(lock, [&] { return !free_.empty() || !error_.ok(); });
        if (!error_.ok()) return error_;
        current_ = free_.front();
        free_.pop_front();
        current_->size = 0;
      }
      const size_t take = std::min(bytes.size(), kChunk - current_->size);
      std::memcpy(current_->data.get() + current_->size, bytes.data(), take);
      current_->size += take;
      bytes = bytes.subspan(take);
      if (current_->size == kChunk) Submit();
    }
    std::lock_guard lock(mu_);
    return error_;
  }

  Result<std::string> Finish() override {
    if (current_ && current_->size > 0) Submit();
    Stop();
    if (!error_.ok()) return error_;
    return inner_->Finish();
  }

 private:
  static constexpr size_t kChunk = size_t{1} << 20;
  struct Chunk {
    std::unique_ptr<std::byte[]> data;
    size_t size = 0;
  };
  void Submit() {
    {
      std::lock_guard lock(mu_);
      full_.push_back(current_);
    }
    current_ = nullptr;
    cv_.notify_all();
  }
  void Stop() {
    {
      std::lock_guard lock(mu_);
      stopping_ = true;
    }
    cv_.notify_all();
    if (thread_.joinable()) thread_.join();
  }
  void Loop() {
    std::unique_lock lock(mu_);
    while (true) {
      cv_.wait(lock, [&] { return !full_.empty() || stopping_; });
      if (full_.empty()) return;  // stopping and drained
      Chunk* c = full_.front();
      full_.pop_front();
      const bool failed = !error_.ok();
      lock.unlock();
      Status st = failed ? Status::Ok() : inner_->Write(std::span<const std::byte>(c->data.get(), c->size));
      lock.lock();
      if (!st.ok() && error_.ok()) error_ = st;
      free_.push_back(c);
      cv_.notify_all();
    }
  }

  std::unique_ptr<BlobStore::Writer> inner_;  // used by the thread until Stop(), then by Finish()
  std::array<Chunk, 4> chunks_;
  Chunk* current_ = nullptr;  // being filled by the caller's thread
  std::mutex mu_;             // guards free_, full_, stopping_, error_
  std::condition_variable cv_;
  std::deque<Chunk*> free_, full_;
  bool stopping_ = false;
  Status error_;
  std::thread thread_;
};

class Engine {
 public:
  Engine(const AggregateRequest& req, const EngineMode& mode) : req_(req), o_(req.options), mode_(mode) {}

  Result<AggregateResult> Run(const WriterFactory& make_model_writer, const WriterFactory& make_state_writer);

 private:
  Status OpenGlobal();
  void OpenInputs();
  Status ValidateValues();  // pass 0
  Status CheckPreconditions();
  Status KrumSelect();      // pass 1
  Status OpenState();
  Status WriteModel(BlobStore::Writer& model_out, BlobStore::Writer* state_out);
  Status LoadGlobal(const TensorInfo& t, uint64_t first, size_t n, float* g);
  // Delta of input `in` for schema tensor `s` (unscaled) as fp32 into `out`.
  Status LoadDelta(const Input& in, size_t s, uint64_t first, size_t n, const float* g, float* out);
  Status ComputeDelta(size_t s, uint64_t first, size_t n, const float* g, float* delta);
  void Reject(Input& in, RejectReason r, const std::string& msg) {
    in.rejected = true;
    rejected_.push_back({in.site, r, msg});
  }

  const AggregateRequest& req_;
  const RuleOptions& o_;
  EngineMode mode_;
  Source global_;
  ModelSchema schema_;
  std::vector<const TensorInfo*> global_of_schema_;  // per schema tensor
  std::vector<size_t> schema_order_;                 // schema indices in global data order
  std::vector<std::unique_ptr<Input>> all_;           // site order
  std::vector<Input*> used_;                           // accepted (and, for Krum, selected)
  std::vector<RejectedUpdate> rejected_;
  std::optional<Source> state_in_;
  std::vector<const TensorInfo*> state_of_schema_;
  std::vector<std::pair<uint32_t, uint32_t>> network_;

  // Reused buffers (block-sized).
  size_t block_ = 0;
  std::vector<float> g_, acc_, x_, out_, state_;
  std::vector<uint16_t> h_;
  std::vector<std::byte> raw_;
  std::vector<std::vector<float>> rows_;
};

Status Engine::OpenGlobal() {
  HANSE_RETURN_IF_ERROR(global_.Open(mode_.layout ? *mode_.layout : req_.global_model));
  if (req_.schema) {
    schema_ = *req_.schema;
  } else {
    HANSE_ASSIGN_OR_RETURN(schema_, SchemaFromModel(*global_.st));
  }
  for (const auto& s : schema_.tensors) {
    const TensorInfo* t = global_.st->Find(s.name);
    if (!t) return Status::InvalidArgument("schema " + Quote(s.name) + " is not in the global model " + global_.path.string());
    if (t->shape != s.shape || !IsFloat(t->dtype)) {
      return Status::InvalidArgument("schema " + Quote(s.name) + " does not fit the global model (shape or dtype)");
    }
    global_of_schema_.push_back(t);
  }
  schema_order_.resize(schema_.tensors.size());
  std::iota(schema_order_.begin(), schema_order_.end(), 0);
  std::sort(schema_order_.begin(), schema_order_.end(),
            [&](size_t a, size_t b) { return global_of_schema_[a]->begin < global_of_schema_[b]->begin; });
  return Status::Ok();
}

void Engine::OpenInputs() {
  std::vector<const UpdateRef*> refs;
  for (const auto& u : req_.updates) refs.push_back(&u);
  std::stable_sort(refs.begin(), refs.end(), [](auto* a, auto* b) { return a->site < b->site; });
  for (size_t i = 0; i < refs.size(); ++i) {
    auto in = std::make_unique<Input>();
    in->site = refs[i]->site;
    in->examples = refs[i]->examples;
    in->norm = refs[i]->l2_norm;
    Input& u = *in;
    all_.push_back(std::move(in));
    // Every copy of a duplicated site is rejected: keeping "the first" would
    // depend on arrival order.
    bool dup = (i > 0 && refs[i - 1]->site == u.site) || (i + 1 < refs.size() && refs[i + 1]->site == u.site);
    if (dup) {
      Reject(u, RejectReason::kDuplicateSite, "site '" + u.site + "' sent more than one update");
      continue;
    }
    if (Status st = u.src.Open(refs[i]->file); !st.ok()) {
      Reject(u, st.code() == Code::kCorruption || st.code() == Code::kInvalidArgument ? RejectReason::kMalformed
                                                                                      : RejectReason::kUnreadable,
             st.ToString());
      continue;
    }
    // The header against the schema (the values were checked on arrival, or are in pass 0).
    std::vector<const TensorInfo*> sorted;
    for (const auto& t : u.src.st->tensors()) sorted.push_back(&t);
    std::sort(sorted.begin(), sorted.end(), [](auto* a, auto* b) { return a->name < b->name; });
    bool bad = false;
    for (const TensorInfo* t : sorted) {
      const TensorSchema* want = schema_.Find(t->name);
      // A full model also carries the tensors that are not trained (copied from the global model).
      if (!want && mode_.inputs_are_models && global_.st->Find(t->name)) continue;
      if (!want && mode_.global_is_zero && global_.st->Find(t->name) && !IsFloat(t->dtype)) continue;
      if (!want) {
        Reject(u, RejectReason::kExtraTensor, Quote(t->name) + ": not part of the model's trainable tensors");
      } else if (std::find(schema_.allowed_dtypes.begin(), schema_.allowed_dtypes.end(), t->dtype) ==
                     schema_.allowed_dtypes.end() ||
                 !IsFloat(t->dtype)) {
        Reject(u, RejectReason::kWrongDType, Quote(t->name) + ": dtype " + DTypeName(t->dtype) + " is not allowed");
      } else if (t->shape != want->shape) {
        Reject(u, RejectReason::kWrongShape, Quote(t->name) + ": shape does not match the global model");
      } else {
        continue;
      }
      bad = true;
      break;
    }
    if (bad) continue;
    for (const auto& s : schema_.tensors) {
      const TensorInfo* t = u.src.st->Find(s.name);
      if (!t) {
        Reject(u, RejectReason::kMissingTensor, Quote(s.name) + ": missing");
        bad = true;
        break;
      }
      u.tensors.push_back(t);
    }
    if (bad) continue;
    if (u.norm && !std::isfinite(*u.norm)) {
      Reject(u, RejectReason::kNonFinite, "update norm is not finite");
    }
  }
}

Status Engine::LoadGlobal(const TensorInfo& t, uint64_t first, size_t n, float* g) {
  if (mode_.global_is_zero) {
    std::fill(g, g + n, 0.0f);
    return Status::Ok();
  }
  if (t.dtype == DType::kF32) return global_.Read(t, first, n, g);
  HANSE_RETURN_IF_ERROR(global_.Read(t, first, n, h_.data()));
  if (t.dtype == DType::kBF16) {
    kernels::BF16ToF32(g, h_.data(), n);
  } else {
    kernels::F16ToF32(g, h_.data(), n);
  }
  return Status::Ok();
}

Status Engine::LoadDelta(const Input& in, size_t s, uint64_t first, size_t n, const float* g, float* out) {
  const TensorInfo& t = *in.tensors[s];
  if (t.dtype == DType::kF32) {
    HANSE_RETURN_IF_ERROR(in.src.Read(t, first, n, out));
  } else {
    HANSE_RETURN_IF_ERROR(in.src.Read(t, first, n, h_.data()));
    if (t.dtype == DType::kBF16) {
      kernels::BF16ToF32(out, h_.data(), n);
    } else {
      kernels::F16ToF32(out, h_.data(), n);
    }
  }
  if (mode_.inputs_are_models) kernels::Sub(out, g, n);
  return Status::Ok();
}

Status Engine::ValidateValues() {
  std::vector<Input*> todo;
  for (auto& in : all_) {
    if (!in->rejected && !in->norm) {
      todo.push_back(in.get());
      in->sumsq.assign(schema_.tensors.size(), 0.0);
    }
  }
  if (todo.empty()) return Status::Ok();
  for (size_t s : schema_order_) {
    const TensorInfo& gt = *global_of_schema_[s];
    const uint64_t numel = gt.numel();
    std::vector<kernels::SumSq> sums(todo.size());
    for (uint64_t first = 0; first < numel; first += block_) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(block_, numel - first));
      if (mode_.inputs_are_models) HANSE_RETURN_IF_ERROR(LoadGlobal(gt, first, n, g_.data()));
      for (size_t k = 0; k < todo.size(); ++k) {
        Input& in = *todo[k];
        if (in.rejected) continue;
        if (Status st = LoadDelta(in, s, first, n, g_.data(), x_.data()); !st.ok()) {
          Reject(in, RejectReason::kUnreadable, st.ToString());
          continue;
        }
        size_t bad = 0;
        if (!kernels::AllFinite(x_.data(), n, &bad)) {
          // In models mode the delta may overflow even though the input is finite.
          const float v = x_[bad];
          Reject(in, RejectReason::kNonFinite,
                 Quote(gt.name) + ": element " + std::to_string(first + bad) + " is " +
                     (std::isnan(v) ? "NaN" : (v > 0 ? "+Inf" : "-Inf")));
          continue;
        }
        sums[k].Add(x_.data(), n);
      }
    }
    for (size_t k = 0; k < todo.size(); ++k) todo[k]->sumsq[s] = sums[k].Total();
  }
  for (Input* in : todo) {
    if (in->rejected) continue;
    double total = 0;  // schema (name) order, as UpdateValidator does
    for (double v : in->sumsq) total += v;
    in->norm = std::sqrt(total);
  }
  return Status::Ok();
}

Status Engine::CheckPreconditions() {
  for (auto& in : all_) {
    if (in->rejected) continue;
    if (o_.max_update_norm && *in->norm > *o_.max_update_norm) {
      std::string largest;
      if (!in->sumsq.empty()) {
        size_t best = 0;
        for (size_t s = 1; s < in->sumsq.size(); ++s) {
          if (in->sumsq[s] > in->sumsq[best]) best = s;
        }
        largest = " (largest: " + Quote(schema_.tensors[best].name) + ", norm " + Num(std::sqrt(in->sumsq[best])) + ")";
      }
      Reject(*in, RejectReason::kNormTooLarge,
             "update L2 norm " + Num(*in->norm) + " exceeds max_update_norm " + Num(*o_.max_update_norm) + largest);
      continue;
    }
    used_.push_back(in.get());
  }
  std::sort(rejected_.begin(), rejected_.end(),
            [](const RejectedUpdate& a, const RejectedUpdate& b) { return a.site < b.site; });
  if (mode_.fail_on_reject && !rejected_.empty()) {
    const auto& r = rejected_.front();
    return Status::InvalidArgument(r.site + " rejected (" + RejectReasonName(r.reason) + "): " + r.message);
  }
  const size_t k = used_.size();
  if (k == 0) return Status::FailedPrecondition("no valid update to aggregate (" + std::to_string(rejected_.size()) + " rejected)");
  for (Input* in : used_) {
    in->scale = 1.0f;
    if (o_.clip_norm && *in->norm > *o_.clip_norm) in->scale = static_cast<float>(*o_.clip_norm / *in->norm);
  }
  switch (o_.rule) {
    case Rule::kFedAvg:
    case Rule::kFedProx:
    case Rule::kFedAdam:
    case Rule::kFedYogi:
    case Rule::kFedAdagrad: {
      long double total = 0;
      for (Input* in : used_) total += in->examples;
      if (total == 0) return Status::FailedPrecondition(std::string(RuleName(o_.rule)) + " needs example counts: all are 0");
      for (Input* in : used_) {
        in->coef = static_cast<float>(static_cast<double>(in->examples / total) * in->scale);
      }
      break;
    }
    case Rule::kKrum:
    case Rule::kMultiKrum: {
      const uint64_t f = o_.krum_f;
      if (k <= 2 * f + 2) {
        return Status::FailedPrecondition(std::string(RuleName(o_.rule)) + " needs K > 2f + 2: K = " +
                                          std::to_string(k) + " valid updates, f = " + std::to_string(f));
      }
      if (o_.rule == Rule::kMultiKrum && (o_.krum_m < 1 || o_.krum_m > k - f)) {
        return Status::FailedPrecondition("multi_krum needs 1 <= m <= K - f: m = " + std::to_string(o_.krum_m) +
                                          ", K = " + std::to_string(k) + ", f = " + std::to_string(f));
      }
      break;
    }
    case Rule::kTrimmedMean:
    case Rule::kMedian:
      network_ = kernels::SortingNetwork(static_cast<uint32_t>(k));
      break;
  }
  return Status::Ok();
}

Status Engine::KrumSelect() {
  const size_t k = used_.size();
  std::vector<double> dist(k * k, 0.0);
  for (size_t s : schema_order_) {
    const TensorInfo& gt = *global_of_schema_[s];
    const uint64_t numel = gt.numel();
    for (uint64_t first = 0; first < numel; first += block_) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(block_, numel - first));
      if (mode_.inputs_are_models) HANSE_RETURN_IF_ERROR(LoadGlobal(gt, first, n, g_.data()));
      for (size_t i = 0; i < k; ++i) {
        HANSE_RETURN_IF_ERROR(LoadDelta(*used_[i], s, first, n, g_.data(), rows_[i].data()));
        if (used_[i]->scale != 1.0f) kernels::Scale(rows_[i].data(), used_[i]->scale, n);
      }
      for (size_t i = 0; i < k; ++i) {
        for (size_t j = i + 1; j < k; ++j) {
          const double d = kernels::SquaredDistance(rows_[i].data(), rows_[j].data(), n);
          dist[i * k + j] += d;
          dist[j * k + i] += d;
        }
      }
    }
  }
  // Score: sum of the K - f - 2 smallest squared distances to the others.
  const size_t nearest = k - o_.krum_f - 2;
  std::vector<double> score(k);
  for (size_t i = 0; i < k; ++i) {
    std::vector<double> d;
    for (size_t j = 0; j < k; ++j) {
      if (j != i) d.push_back(dist[i * k + j]);
    }
    std::sort(d.begin(), d.end());
    score[i] = std::accumulate(d.begin(), d.begin() + static_cast<std::ptrdiff_t>(nearest), 0.0);
  }
  std::vector<size_t> order(k);
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t a, size_t b) { return score[a] < score[b]; });
  const size_t m = o_.rule == Rule::kKrum ? 1 : o_.krum_m;
  order.resize(m);
  std::sort(order.begin(), order.end());  // fold the selected ones in site order
  std::vector<Input*> selected;
  for (size_t i : order) {
    selected.push_back(used_[i]);
    used_[i]->coef = used_[i]->scale / static_cast<float>(m);
  }
  used_ = std::move(selected);
  return Status::Ok();
}

Status Engine::OpenState() {
  if (!IsFedOpt(o_.rule) || !req_.optimizer_state) return Status::Ok();
  state_in_.emplace();
  HANSE_RETURN_IF_ERROR(state_in_->Open(*req_.optimizer_state));
  const auto& md = state_in_->st->metadata();
  auto it = md.find(kStateKey);
  const std::string ctx = "optimizer state " + req_.optimizer_state->string();
  if (it == md.end()) return Status::FailedPrecondition(ctx + ": no '" + kStateKey + "' metadata");
  if (it->second != RuleName(o_.rule)) {
    return Status::FailedPrecondition(ctx + " was written by " + it->second + ", the job uses " + RuleName(o_.rule));
  }
  if (state_in_->st->tensors().size() != schema_.tensors.size()) {
    return Status::FailedPrecondition(ctx + ": holds " + std::to_string(state_in_->st->tensors().size()) +
                                      " tensors, the schema has " + std::to_string(schema_.tensors.size()));
  }
  for (const auto& s : schema_.tensors) {
    const TensorInfo* t = state_in_->st->Find(s.name);
    auto want = s.shape;
    want.push_back(2);
    if (!t) return Status::FailedPrecondition(ctx + ": " + Quote(s.name) + " is missing");
    if (t->dtype != DType::kF32 || t->shape != want) {
      return Status::FailedPrecondition(ctx + ": " + Quote(s.name) + " must be F32 of shape [..., 2]");
    }
    state_of_schema_.push_back(t);
  }
  return Status::Ok();
}

Status Engine::ComputeDelta(size_t s, uint64_t first, size_t n, const float* g, float* delta) {
  switch (o_.rule) {
    case Rule::kMedian:
    case Rule::kTrimmedMean: {
      const size_t k = used_.size();
      std::vector<float*> rows(k);
      for (size_t i = 0; i < k; ++i) {
        rows[i] = rows_[i].data();
        HANSE_RETURN_IF_ERROR(LoadDelta(*used_[i], s, first, n, g, rows[i]));
        if (used_[i]->scale != 1.0f) kernels::Scale(rows[i], used_[i]->scale, n);
      }
      kernels::SortColumns(rows.data(), network_, n);
      if (o_.rule == Rule::kMedian) {
        if (k % 2 == 1) {
          std::memcpy(delta, rows[k / 2], n * sizeof(float));
        } else {
          const float* a = rows[k / 2 - 1];
          const float* b = rows[k / 2];
          for (size_t e = 0; e < n; ++e) delta[e] = 0.5f * (a[e] + b[e]);
        }
      } else {
        const size_t cut = static_cast<size_t>(std::floor(o_.trim_beta * static_cast<double>(k)));
        std::fill(delta, delta + n, 0.0f);
        for (size_t i = cut; i < k - cut; ++i) kernels::FoldF32(delta, rows[i], 1.0f, n);
        const float kept = static_cast<float>(k - 2 * cut);
        for (size_t e = 0; e < n; ++e) delta[e] /= kept;  // a division, not x (1/kept): the exact mean
      }
      return Status::Ok();
    }
    default: {
      // Weighted fold (FedAvg, FedProx, FedOpt, and Krum's selection with equal weights).
      std::fill(delta, delta + n, 0.0f);
      for (Input* in : used_) {
        const TensorInfo& t = *in->tensors[s];
        if (mode_.inputs_are_models) {
          HANSE_RETURN_IF_ERROR(LoadDelta(*in, s, first, n, g, x_.data()));
          kernels::FoldF32(delta, x_.data(), in->coef, n);
        } else if (t.dtype == DType::kF32) {
          HANSE_RETURN_IF_ERROR(in->src.Read(t, first, n, x_.data()));
          kernels::FoldF32(delta, x_.data(), in->coef, n);
        } else {
          HANSE_RETURN_IF_ERROR(in->src.Read(t, first, n, h_.data()));
          if (t.dtype == DType::kBF16) {
            kernels::FoldBF16(delta, h_.data(), in->coef, n);
          } else {
            kernels::FoldF16(delta, h_.data(), in->coef, n);
          }
        }
      }
      return Status::Ok();
    }
  }
}

// FedOpt server step on one block; st holds (m, v) interleaved.
void FedOptStep(Rule rule, const RuleOptions& o, const float* __restrict g, const float* __restrict d,
                float* __restrict st, float* __restrict out, size_t n) {
  const float b1 = static_cast<float>(o.beta1), b2 = static_cast<float>(o.beta2);
  const float lr = static_cast<float>(o.server_lr), tau = static_cast<float>(o.tau);
  for (size_t i = 0; i < n; ++i) {
    const float di = d[i];
    const float d2 = di * di;
    const float m = b1 * st[2 * i] + (1.0f - b1) * di;
    float v = st[2 * i + 1];
    if (rule == Rule::kFedAdam) {
      v = b2 * v + (1.0f - b2) * d2;
    } else if (rule == Rule::kFedYogi) {
      const float diff = v - d2;
      const float sign = diff > 0.0f ? 1.0f : (diff < 0.0f ? -1.0f : 0.0f);
      v = v - (1.0f - b2) * d2 * sign;
    } else {
      v = v + d2;
    }
    st[2 * i] = m;
    st[2 * i + 1] = v;
    out[i] = g[i] + lr * m / (std::sqrt(v) + tau);
  }
}

Status Engine::WriteModel(BlobStore::Writer& model_out, BlobStore::Writer* state_out) {
  const auto& tensors = global_.st->tensors();  // ascending data offset
  std::vector<TensorSpec> specs;
  for (const auto& t : tensors) specs.push_back({t.name, t.dtype, t.shape});
  HANSE_ASSIGN_OR_RETURN(auto writer,
                         SafetensorsWriter::Begin(std::move(specs), global_.st->metadata(),
                                                  [&](std::span<const std::byte> b) { return model_out.Write(b); }));
  std::unique_ptr<SafetensorsWriter> state_writer;
  if (state_out) {
    std::vector<TensorSpec> sspecs;
    for (size_t s : schema_order_) {
      auto shape = schema_.tensors[s].shape;
      shape.push_back(2);
      sspecs.push_back({schema_.tensors[s].name, DType::kF32, shape});
    }
    std::map<std::string, std::string> md = {{kStateKey, RuleName(o_.rule)}, {kStateLayoutKey, kStateLayout}};
    HANSE_ASSIGN_OR_RETURN(state_writer,
                           SafetensorsWriter::Begin(std::move(sspecs), std::move(md),
                                                    [&](std::span<const std::byte> b) { return state_out->Write(b); }));
  }
  std::map<const TensorInfo*, size_t> schema_of_global;
  for (size_t s = 0; s < global_of_schema_.size(); ++s) schema_of_global[global_of_schema_[s]] = s;

  for (const auto& t : tensors) {
    const uint64_t numel = t.numel();
    auto it = schema_of_global.find(&t);
    if (it == schema_of_global.end()) {
      // Not trained: copied unchanged, in block-sized pieces.
      for (uint64_t pos = 0; pos < t.nbytes(); pos += raw_.size()) {
        const size_t len = static_cast<size_t>(std::min<uint64_t>(raw_.size(), t.nbytes() - pos));
        HANSE_ASSIGN_OR_RETURN(uint64_t got,
                               PreadFull(global_.fd.get(), global_.st->data_offset() + t.begin + pos,
                                         std::span(raw_).first(len), global_.path));
        if (got != len) return Status::Corruption(global_.path.string() + ": " + Quote(t.name) + " is truncated");
        HANSE_RETURN_IF_ERROR(writer->Write(std::span(raw_).first(len)));
      }
      continue;
    }
    const size_t s = it->second;
    for (uint64_t first = 0; first < numel; first += block_) {
      const size_t n = static_cast<size_t>(std::min<uint64_t>(block_, numel - first));
      HANSE_RETURN_IF_ERROR(LoadGlobal(t, first, n, g_.data()));
      HANSE_RETURN_IF_ERROR(ComputeDelta(s, first, n, g_.data(), acc_.data()));
      if (IsFedOpt(o_.rule)) {
        if (state_in_) {
          HANSE_RETURN_IF_ERROR(state_in_->Read(*state_of_schema_[s], 2 * first, 2 * n, state_.data()));
        } else {
          std::fill(state_.begin(), state_.begin() + static_cast<std::ptrdiff_t>(2 * n), 0.0f);
        }
        FedOptStep(o_.rule, o_, g_.data(), acc_.data(), state_.data(), out_.data(), n);
        HANSE_RETURN_IF_ERROR(state_writer->Write(std::as_bytes(std::span(state_).first(2 * n))));
      } else {
        kernels::Add(out_.data(), g_.data(), acc_.data(), n);
      }
      if (t.dtype == DType::kF32) {
        HANSE_RETURN_IF_ERROR(writer->Write(std::as_bytes(std::span(out_).first(n))));
      } else {
        if (t.dtype == DType::kBF16) {
          kernels::F32ToBF16(h_.data(), out_.data(), n);
        } else {
          kernels::F32ToF16(h_.data(), out_.data(), n);
        }
        HANSE_RETURN_IF_ERROR(writer->Write(std::as_bytes(std::span(h_).first(n))));
      }
    }
  }
  HANSE_RETURN_IF_ERROR(writer->Finish());
  if (state_writer) HANSE_RETURN_IF_ERROR(state_writer->Finish());
  return Status::Ok();
}

Result<AggregateResult> Engine::Run(const WriterFactory& make_model_writer, const WriterFactory& make_state_writer) {
  HANSE_RETURN_IF_ERROR(ValidateRuleOptions(o_));
  HANSE_RETURN_IF_ERROR(OpenGlobal());
  // Buffers no larger than the largest tensor needs: fresh pages cost ~13 us
  // each to touch, which would dominate small models.
  uint64_t largest = 1, largest_copy = 1;
  for (const TensorInfo* t : global_of_schema_) largest = std::max(largest, t->numel());
  for (const auto& t : global_.st->tensors()) largest_copy = std::max(largest_copy, t.nbytes());
  block_ = static_cast<size_t>(std::min<uint64_t>(o_.block_elems, largest));
  g_.resize(block_);
  acc_.resize(block_);
  x_.resize(block_);
  out_.resize(block_);
  h_.resize(block_);
  raw_.resize(static_cast<size_t>(std::min<uint64_t>(o_.block_elems * sizeof(float), largest_copy)));
  OpenInputs();
  HANSE_RETURN_IF_ERROR(ValidateValues());
  HANSE_RETURN_IF_ERROR(CheckPreconditions());

  AggregateResult result;
  result.rejected = rejected_;
  for (Input* in : used_) {
    result.accepted_sites.push_back(in->site);
    if (in->scale != 1.0f) result.clipped_sites.push_back(in->site);
  }
  const bool wide = o_.rule == Rule::kMedian || o_.rule == Rule::kTrimmedMean || o_.rule == Rule::kKrum ||
                    o_.rule == Rule::kMultiKrum;
  if (wide) {
    // K rows of a block are sorted or compared pairwise many times: keep them
    // within ~1 MiB (L2) rather than K x block_elems.
    const size_t fit = std::max<size_t>(4096, (size_t{1} << 18) / used_.size());
    block_ = std::min(block_, fit);
    rows_.assign(used_.size(), std::vector<float>(block_));
  }
  if (o_.rule == Rule::kKrum || o_.rule == Rule::kMultiKrum) {
    HANSE_RETURN_IF_ERROR(KrumSelect());
    rows_.clear();
    rows_.shrink_to_fit();
  }
  for (Input* in : used_) result.used_sites.push_back(in->site);
  HANSE_RETURN_IF_ERROR(OpenState());
  if (IsFedOpt(o_.rule)) state_.resize(2 * block_);

  HANSE_ASSIGN_OR_RETURN(auto model_file, make_model_writer());
  auto model_out = std::make_unique<PipelinedWriter>(std::move(model_file));
  std::unique_ptr<BlobStore::Writer> state_out;
  if (IsFedOpt(o_.rule)) {
    HANSE_ASSIGN_OR_RETURN(auto state_file, make_state_writer());
    state_out = std::make_unique<PipelinedWriter>(std::move(state_file));
  }
  HANSE_RETURN_IF_ERROR(WriteModel(*model_out, state_out.get()));
  HANSE_ASSIGN_OR_RETURN(result.model_hash, model_out->Finish());
  if (state_out) {
    HANSE_ASSIGN_OR_RETURN(std::string h, state_out->Finish());
    result.state_hash = h;
  }
  return result;
}

}  // namespace

Result<std::unique_ptr<BlobStore::Writer>> NewFileWriter(const std::filesystem::path& target) {
  HANSE_ASSIGN_OR_RETURN(auto w, FileWriter::Create(target));
  return std::unique_ptr<BlobStore::Writer>(std::move(w));
}

Result<AggregateResult> RunEngine(const AggregateRequest& request, const EngineMode& mode,
                                  const WriterFactory& make_model_writer, const WriterFactory& make_state_writer) {
  Engine e(request, mode);
  return e.Run(make_model_writer, make_state_writer);
}

Result<AggregateResult> Aggregate(const AggregateRequest& request, BlobStore& out_store) {
  auto make = [&]() { return out_store.NewWriter(); };
  return RunEngine(request, EngineMode{}, make, make);
}

Result<AggregateResult> AggregateToFiles(const AggregateRequest& request, const std::filesystem::path& model_out,
                                         const std::filesystem::path& state_out) {
  if (IsFedOpt(request.options.rule) && state_out.empty()) {
    return Status::InvalidArgument(std::string(RuleName(request.options.rule)) + " needs a path for its optimizer state");
  }
  return RunEngine(
      request, EngineMode{}, [&]() { return NewFileWriter(model_out); }, [&]() { return NewFileWriter(state_out); });
}

}  // namespace hanse::agg
