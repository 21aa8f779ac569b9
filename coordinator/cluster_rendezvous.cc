// The Cluster's rendezvous store (ControlService.KvSet / KvGet): keys scoped by (job,
// generation), callers named by their session's token (see cluster.h, control.proto).
#include "coordinator/cluster.h"

#include <algorithm>
#include <string>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/log.h"
#include "coordinator/cluster_util.h"

namespace raptr {

using cluster_util::kMaxKeyBytes;
using cluster_util::kMaxValueBytes;

bool Cluster::IsMember(const std::string& job_id, int64_t generation,
                       const std::string& worker_id, uint64_t token) const {
  auto run = running_.find(job_id);
  auto session = session_of_worker_.find(worker_id);
  if (run == running_.end() || run->second.generation != generation ||
      session == session_of_worker_.end() || sessions_.at(session->second).token != token) {
    return false;
  }
  const std::vector<int64_t>& members = run->second.members;
  return std::find(members.begin(), members.end(), session->second) != members.end();
}

absl::Status Cluster::KvSet(const v1::KvSetRequest& request) {
  if (request.key().empty() || request.key().size() > kMaxKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("key must be 1 .. ", kMaxKeyBytes, " bytes, got ", request.key().size()));
  }
  if (request.value().size() > kMaxValueBytes) {
    return absl::InvalidArgumentError(absl::StrCat(
        "value of key \"", request.key(), "\" is over 1 MiB (", request.value().size(), " bytes)"));
  }
  absl::MutexLock lock(&mu_);
  if (!IsMember(request.job_id(), request.generation(), request.worker_id(),
                request.session_token())) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker \"", request.worker_id(), "\" is not in generation ",
                     request.generation(), " of job \"", request.job_id(), "\""));
  }
  // Write-once per generation: every key a group uses (each rank's Gloo address, the NCCL id,
  // the collectives choice) is written once by its owner, so a second, different value is a
  // member trying to redirect another's connections. The same value again is a retried call.
  auto& values = kv_[{request.job_id(), request.generation()}].values;
  auto [it, inserted] = values.try_emplace(request.key(), request.value());
  if (!inserted && it->second != request.value()) {
    return absl::AlreadyExistsError(absl::StrCat("key \"", request.key(),
                                                 "\" is already set in generation ",
                                                 request.generation(), " of job \"",
                                                 request.job_id(), "\"; keys are written once"));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::string> Cluster::KvGet(const v1::KvGetRequest& request,
                                           std::chrono::system_clock::time_point deadline) {
  absl::MutexLock lock(&mu_);
  auto member = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return IsMember(request.job_id(), request.generation(), request.worker_id(),
                    request.session_token());
  };
  if (!member()) {
    return absl::FailedPreconditionError(
        absl::StrCat("worker \"", request.worker_id(), "\" is not in generation ",
                     request.generation(), " of job \"", request.job_id(), "\""));
  }
  const std::pair<std::string, int64_t> space{request.job_id(), request.generation()};
  auto lookup = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) -> const std::string* {
    auto kv = kv_.find(space);
    if (kv == kv_.end()) return nullptr;
    auto value = kv->second.values.find(request.key());
    return value == kv->second.values.end() ? nullptr : &value->second;
  };
  if (const std::string* value = lookup()) return *value;
  if (!request.wait()) {
    return absl::NotFoundError(absl::StrCat("key \"", request.key(), "\" is not set"));
  }
  absl::Time until = absl::InfiniteFuture();
  if (deadline < std::chrono::system_clock::now() + std::chrono::hours(24 * 365)) {
    until = absl::FromChrono(deadline);
  }
  if (request.timeout_seconds() > 0) {
    until = std::min(until, absl::Now() + absl::Seconds(request.timeout_seconds()));
  }
  auto ready = [&]() ABSL_EXCLUSIVE_LOCKS_REQUIRED(mu_) {
    return shut_down_ || !member() || lookup() != nullptr;
  };
  mu_.AwaitWithDeadline(absl::Condition(&ready), until);
  if (shut_down_) return absl::UnavailableError("the coordinator is shutting down");
  if (!member()) {
    return absl::AbortedError(absl::StrCat("generation ", request.generation(), " of job \"",
                                           request.job_id(), "\" ended while waiting"));
  }
  if (const std::string* value = lookup()) return *value;
  return absl::DeadlineExceededError(
      absl::StrCat("key \"", request.key(), "\" was not set in time"));
}

}  // namespace raptr
