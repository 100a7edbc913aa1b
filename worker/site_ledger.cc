#include "worker/site_ledger.h"

#include <fcntl.h>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/fsutil.h"

namespace hanse::site {

namespace fs = std::filesystem;

Result<std::unique_ptr<SiteLedger>> SiteLedger::Open(const fs::path& file) {
  std::unique_ptr<SiteLedger> ledger(new SiteLedger());
  ledger->path_ = file;
  std::error_code ec;
  if (file.has_parent_path()) fs::create_directories(file.parent_path(), ec);

  uint64_t keep_bytes = 0;
  bool torn = false;
  if (fs::exists(file, ec)) {
    HANSE_ASSIGN_OR_RETURN(std::string text, ReadWholeFile(file));
    size_t pos = 0;
    uint64_t line_no = 0;
    while (pos < text.size()) {
      ++line_no;
      size_t nl = text.find('\n', pos);
      if (nl == std::string::npos) {  // torn by a crash mid-append: never counted, drop it
        torn = true;
        break;
      }
      std::string line = text.substr(pos, nl - pos);
      auto bad = [&](const std::string& why) {
        return Status::Corruption(file.string() + ":" + std::to_string(line_no) + ": " + why);
      };
      nlohmann::json j;
      try {
        j = nlohmann::json::parse(line);
      } catch (const nlohmann::json::exception& e) {
        return bad(std::string("not valid JSON: ") + e.what());
      }
      if (!j.is_object() || !j.contains("lead") || !j["lead"].is_string() || !j.contains("month") ||
          !j["month"].is_string() || !j.contains("device_seconds") || !j["device_seconds"].is_number()) {
        return bad("needs string \"lead\", string \"month\" and number \"device_seconds\"");
      }
      double seconds = j["device_seconds"].get<double>();
      if (!(seconds >= 0)) return bad("device_seconds must be >= 0");
      ledger->seconds_[{j["lead"].get<std::string>(), j["month"].get<std::string>()}] += seconds;
      pos = nl + 1;
      keep_bytes = pos;
    }
  }
  auto fd = OpenFd(file, O_WRONLY | O_CREAT | O_APPEND, 0640);
  if (!fd.ok()) return fd.status();
  if (torn) {
    if (::ftruncate(fd->get(), static_cast<off_t>(keep_bytes)) != 0) {
      return ErrnoStatus("truncate torn line of", file, errno);
    }
    HANSE_RETURN_IF_ERROR(Fsync(fd->get(), file));
  }
  ledger->fd_ = fd->Release();
  return ledger;
}

SiteLedger::~SiteLedger() {
  if (fd_ >= 0) ::close(fd_);
}

Status SiteLedger::Record(const LedgerRecord& r) {
  nlohmann::ordered_json j;
  j["time"] = r.time;
  j["month"] = r.month;
  j["lead"] = r.lead;
  j["job"] = r.job_id;
  j["task"] = r.task_id;
  j["device_seconds"] = r.device_seconds;
  j["cpu_seconds"] = r.cpu_seconds;
  j["gpu_seconds"] = r.gpu_seconds;
  j["device_kind"] = r.device_kind;
  std::string line = j.dump(-1, ' ', false, nlohmann::ordered_json::error_handler_t::replace) + "\n";
  std::lock_guard lock(mu_);
  HANSE_RETURN_IF_ERROR(WriteAll(fd_, std::as_bytes(std::span(line.data(), line.size())), path_));
  HANSE_RETURN_IF_ERROR(Fsync(fd_, path_));
  seconds_[{r.lead, r.month}] += r.device_seconds;
  return Status::Ok();
}

double SiteLedger::DeviceSeconds(const std::string& lead, const std::string& month) const {
  std::lock_guard lock(mu_);
  auto it = seconds_.find({lead, month});
  return it == seconds_.end() ? 0.0 : it->second;
}

}  // namespace hanse::site
