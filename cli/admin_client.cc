#include "cli/admin_client.h"

#include <cstdlib>

#include "core/keys.h"
#include "protocol/blob_client.h"
#include "protocol/blob_stream.h"
#include "protocol/transport.h"

namespace hanse::cli {

namespace fs = std::filesystem;
using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

fs::path DefaultBlobCache() {
  if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return fs::path(x) / "hanse";
  if (const char* h = std::getenv("HOME"); h && *h) return fs::path(h) / ".cache" / "hanse";
  return fs::temp_directory_path() / "hanse-cache";
}

AdminClient::~AdminClient() = default;

Result<ClientKeys> LoadClientKeys(const ClientConfig& config) {
  ClientKeys k;
  HANSE_ASSIGN_OR_RETURN(k.secret_key, LoadSecretKey(config.secret_key_file));
  if (!config.public_key_file.empty() && fs::exists(config.public_key_file)) {
    HANSE_ASSIGN_OR_RETURN(k.public_key, LoadPublicKey(config.public_key_file));
  } else {
    HANSE_ASSIGN_OR_RETURN(k.public_key, PublicKeyOf(k.secret_key));
  }
  k.server_public_key = config.coordinator_public_key;
  if (k.server_public_key.empty()) {
    HANSE_ASSIGN_OR_RETURN(k.server_public_key, LoadPublicKey(config.coordinator_public_key_file));
  }
  return k;
}

Result<std::unique_ptr<AdminClient>> AdminClient::Connect(const std::string& endpoint, const ClientKeys& keys,
                                                          const AdminClientOptions& options) {
  proto::ClientOptions co;
  co.endpoint = endpoint;
  co.server_public_key = keys.server_public_key;
  co.secret_key = keys.secret_key;
  co.public_key = keys.public_key;
  co.tuning.handshake_timeout = options.connect_timeout;
  auto client = proto::Client::Connect(co);
  if (!client.ok()) return client.status().WithContext("cannot connect to the coordinator at " + endpoint);

  std::unique_ptr<AdminClient> self(new AdminClient());
  self->endpoint_ = endpoint;
  self->options_ = options;
  if (self->options_.blob_cache.empty()) self->options_.blob_cache = DefaultBlobCache();
  self->client_ = std::move(client).value();

  Status st = self->client_->WaitConnected(options.connect_timeout);
  if (!st.ok()) {
    double secs = std::chrono::duration<double>(options.connect_timeout).count();
    char buf[32];
    std::snprintf(buf, sizeof buf, "%g", secs);
    if (st.code() == Code::kPermissionDenied) {
      return Status::PermissionDenied("the coordinator at " + endpoint +
                                      " refused the connection: our key (" + keys.public_key +
                                      ") is not listed in its config, or coordinator_public_key is wrong (" +
                                      st.message() + ")");
    }
    return Status::DeadlineExceeded("cannot reach the coordinator at " + endpoint + " within " + buf +
                                    " s (is it running? is coordinator_public_key right?)");
  }
  return self;
}

Status AdminClient::OpenStore() {
  if (store_) return Status::Ok();
  auto s = BlobStore::Open(options_.blob_cache);
  if (!s.ok()) return s.status().WithContext("local blob cache " + options_.blob_cache.string());
  store_ = std::move(s).value();
  return Status::Ok();
}

Result<uint64_t> AdminClient::Send(proto::Message message) {
  proto::Envelope env;
  env.message_id = next_id_++;
  env.message = std::move(message);
  HANSE_RETURN_IF_ERROR(client_->Send(env));
  return env.message_id;
}

Status AdminClient::HandleBlobRequest(const proto::Envelope& env) {
  const auto& req = std::get<proto::BlobRequest>(env.message);
  if (req.credits == 0) return Status::Ok();  // the coordinator acknowledging chunks
  requested_.insert(req.hash);
  auto reply_reject = [&](proto::Reason code, const std::string& text) {
    proto::Envelope out;
    out.message_id = next_id_++;
    out.in_reply_to = env.message_id;
    out.message = proto::Reject{code, text, req.hash};
    return client_->Send(out);
  };
  if (Status s = OpenStore(); !s.ok()) return reply_reject(proto::Reason::kInternal, s.ToString());
  if (!store_->Contains(req.hash)) return reply_reject(proto::Reason::kBlobNotFound, "no such blob here");
  proto::BlobSender sender(*store_, proto::StreamOptions{options_.upload_chunk_bytes, options_.window});
  return sender.Serve(req, [&](const proto::BlobChunk& chunk) -> Status {
    proto::Envelope out;
    out.message_id = next_id_++;
    out.in_reply_to = env.message_id;
    out.message = chunk;
    HANSE_RETURN_IF_ERROR(client_->Send(out));
    if (chunk.last || chunk.offset + chunk.bytes.size() >= chunk.total_size) uploaded_.insert(chunk.hash);
    return Status::Ok();
  });
}

Result<std::optional<proto::Envelope>> AdminClient::Next(milliseconds timeout) {
  if (!pending_.empty()) {
    proto::Envelope env = std::move(pending_.front());
    pending_.pop_front();
    return std::optional<proto::Envelope>(std::move(env));
  }
  auto deadline = Clock::now() + timeout;
  while (true) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    if (left.count() < 0) left = milliseconds(0);
    HANSE_ASSIGN_OR_RETURN(auto env, client_->Receive(left));
    if (!env) return std::optional<proto::Envelope>();
    if (std::holds_alternative<proto::Heartbeat>(env->message)) {
      // handled by the transport; nothing to do
    } else if (std::holds_alternative<proto::BlobRequest>(env->message)) {
      HANSE_RETURN_IF_ERROR(HandleBlobRequest(*env));
    } else {
      return env;
    }
    if (Clock::now() >= deadline) return std::optional<proto::Envelope>();
  }
}

Result<proto::Message> AdminClient::Call(proto::Message request, milliseconds timeout) {
  std::string kind = proto::KindName(request);
  HANSE_ASSIGN_OR_RETURN(uint64_t id, Send(std::move(request)));
  auto deadline = Clock::now() + timeout;
  while (Clock::now() < deadline) {
    auto left = std::chrono::duration_cast<milliseconds>(deadline - Clock::now());
    auto left_ms = left.count() < 0 ? milliseconds(0) : left;
    HANSE_ASSIGN_OR_RETURN(auto env, client_->Receive(left_ms));
    if (!env) break;
    if (std::holds_alternative<proto::BlobRequest>(env->message)) {
      HANSE_RETURN_IF_ERROR(HandleBlobRequest(*env));
    } else if (env->in_reply_to == id) {
      return std::move(env->message);
    } else if (!std::holds_alternative<proto::Heartbeat>(env->message)) {
      // Not ours (watch events, late replies): kept for Next().
      pending_.push_back(std::move(*env));
    }
  }
  double secs = std::chrono::duration<double>(timeout).count();
  char buf[32];
  std::snprintf(buf, sizeof buf, "%g", secs);
  return Status::DeadlineExceeded("the coordinator at " + endpoint_ + " did not answer the " + kind + " request within " +
                                  buf + " s");
}

Result<std::pair<std::string, uint64_t>> AdminClient::Offer(const fs::path& file) {
  HANSE_RETURN_IF_ERROR(OpenStore());
  HANSE_ASSIGN_OR_RETURN(std::string hash, store_->PutFile(file));
  HANSE_ASSIGN_OR_RETURN(uint64_t size, store_->Size(hash));
  return std::make_pair(hash, size);
}

Status AdminClient::FinishUpload(const std::string& hash, milliseconds idle_timeout) {
  while (!Uploaded(hash)) {
    HANSE_ASSIGN_OR_RETURN(auto env, Next(idle_timeout));
    if (!env) {
      return Status::DeadlineExceeded("the coordinator stopped pulling blob " + hash.substr(0, 12) + " for " +
                                      std::to_string(idle_timeout.count() / 1000) + " s");
    }
  }
  return Status::Ok();
}

Result<fs::path> AdminClient::Pull(const std::string& hash, uint64_t size, milliseconds idle_timeout) {
  HANSE_RETURN_IF_ERROR(OpenStore());
  proto::BlobReceiver receiver(*store_, proto::StreamOptions{options_.upload_chunk_bytes, options_.window});
  proto::PullOptions po;
  po.idle_timeout = idle_timeout;
  Status answer_status;
  Status st = proto::PullBlob(*client_, receiver, hash, size, po, [&](const proto::Envelope& env) {
    if (std::holds_alternative<proto::BlobRequest>(env.message)) {
      if (Status s = HandleBlobRequest(env); !s.ok() && answer_status.ok()) answer_status = s;
    } else if (!std::holds_alternative<proto::Heartbeat>(env.message)) {
      pending_.push_back(env);
    }
  });
  if (!st.ok()) {
    if (st.code() == Code::kDeadlineExceeded) {
      return Status::DeadlineExceeded("download of blob " + hash.substr(0, 12) + " from " + endpoint_ +
                                      " stalled (" + st.message() + "); run the command again to resume");
    }
    return st;
  }
  return store_->PathOf(hash);
}

}  // namespace hanse::cli
