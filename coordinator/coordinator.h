// The coordinator process: one loop thread that owns the CURVE ROUTER socket,
// the blob sender/receiver, the SQLite store and the job runners. It admits the
// sites, leads and admins of its config by public key, serves tasks to sites
// one at a time, pulls updates, answers the admin API and logs every decision.
#pragma once

#include <atomic>
#include <chrono>
#include <memory>
#include <string>

#include "core/config.h"
#include "core/status.h"

namespace hanse::coord {

struct CoordinatorOptions {
  std::chrono::milliseconds poll{20};              // longest wait for a message before ticking
  std::chrono::milliseconds select_grace{5000};    // see RunnerOptions::select_grace
  std::chrono::milliseconds persist_every{1000};   // deadline checkpoints
};

class Coordinator {
 public:
  // Opens the data folder (SQLite + blob store), loads keys, binds the socket and
  // resumes every running job. Errors name the file or endpoint.
  static Result<std::unique_ptr<Coordinator>> Open(const CoordinatorConfig& config,
                                                   const CoordinatorOptions& options = {});
  ~Coordinator();
  Coordinator(const Coordinator&) = delete;
  Coordinator& operator=(const Coordinator&) = delete;

  std::string endpoint() const;
  // Serves until `stop` becomes true (checked at least every `poll`). Blocks the calling thread.
  Status Run(const std::atomic<bool>& stop);

  struct Impl;

 private:
  explicit Coordinator(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace hanse::coord
