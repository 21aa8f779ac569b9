// NCCL collectives for data-parallel GPU training (see nccl_group.h).
#include "worker/collective/nccl_group.h"

#include <cuda_runtime.h>
#include <nccl.h>

#include <algorithm>
#include <cstring>
#include <exception>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/time.h"
#include "gloo/rendezvous/store.h"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {

static_assert(sizeof(ncclUniqueId) == kNcclUniqueIdBytes, "kNcclUniqueIdBytes is NCCL's size");

namespace {

using Clock = std::chrono::steady_clock;

// A CUDA runtime failure of `call` as a Status. Clears the thread's last error (cuda.md B1), so
// the backend's next launch check does not report this one again; a sticky error stays.
absl::Status CudaStatus(cudaError_t error, const std::string& call) {
  if (error == cudaSuccess) return absl::OkStatus();
  (void)cudaGetLastError();
  return absl::InternalError(absl::StrCat(call, ": CUDA error ", static_cast<int>(error), " (",
                                          cudaGetErrorName(error),
                                          "): ", cudaGetErrorString(error)));
}

// ncclGetLastError's text ("" rather than a null pointer).
std::string LastError(ncclComm_t comm) {
  const char* text = ncclGetLastError(comm);
  return text == nullptr ? std::string() : std::string(text);
}

std::string Seconds(std::chrono::milliseconds d) {
  return absl::StrFormat("%.3g s", std::chrono::duration<double>(d).count());
}

}  // namespace

absl::Status NcclStatus(int result, const std::string& call, const std::string& last_error) {
  if (result == ncclSuccess) return absl::OkStatus();
  std::string message = absl::StrCat(call, ": NCCL error ", result, " (",
                                     ncclGetErrorString(static_cast<ncclResult_t>(result)), ")");
  if (!last_error.empty()) absl::StrAppend(&message, ": ", last_error);
  switch (result) {
    case ncclRemoteError:
    case ncclSystemError:
      return absl::UnavailableError(message);
    case ncclUnhandledCudaError:
    case ncclInternalError:
    case ncclInvalidArgument:
    case ncclInvalidUsage:
      return absl::InternalError(message);
    default:
      return absl::UnknownError(message);
  }
}

absl::StatusOr<std::string> NewNcclUniqueId() {
  ncclUniqueId id;
  const ncclResult_t result = ncclGetUniqueId(&id);
  if (result != ncclSuccess) {
    return NcclStatus(result, "ncclGetUniqueId", LastError(nullptr));
  }
  return std::string(id.internal, sizeof(id.internal));
}

absl::StatusOr<std::string> ExchangeNcclUniqueId(
    gloo::rendezvous::Store& store, int rank, const std::string& key,
    std::chrono::milliseconds timeout,
    const std::function<absl::StatusOr<std::string>()>& make_id) {
  if (rank == 0) {
    absl::StatusOr<std::string> id = make_id();
    if (!id.ok()) return id.status();
    if (id->size() != kNcclUniqueIdBytes) {
      return absl::InternalError(
          absl::StrCat("NCCL unique id of ", id->size(), " bytes, not ", kNcclUniqueIdBytes));
    }
    try {
      store.set(key, std::vector<char>(id->begin(), id->end()));
    } catch (const std::exception& e) {
      return absl::UnavailableError(
          absl::StrCat("NCCL bootstrap of rank 0: publishing \"", key, "\" failed: ", e.what()));
    }
    return id;
  }
  std::vector<char> value;
  try {
    store.wait({key}, timeout);
    value = store.get(key);
  } catch (const std::exception& e) {
    return absl::UnavailableError(absl::StrCat("NCCL bootstrap of rank ", rank, ": waiting ",
                                               Seconds(timeout), " for rank 0's \"", key,
                                               "\" failed: ", e.what()));
  }
  if (value.size() != kNcclUniqueIdBytes) {
    return absl::InternalError(absl::StrCat("NCCL bootstrap of rank ", rank, ": \"", key,
                                            "\" holds ", value.size(), " bytes, not ",
                                            kNcclUniqueIdBytes));
  }
  return std::string(value.begin(), value.end());
}

void NcclAbortSignal::Raise() {
  absl::MutexLock lock(&mu_);
  raised_ = true;
}

bool NcclAbortSignal::raised() const {
  absl::MutexLock lock(&mu_);
  return raised_;
}

bool NcclAbortSignal::SleepUnlessRaised(std::chrono::nanoseconds duration) {
  absl::MutexLock lock(&mu_);
  mu_.AwaitWithTimeout(absl::Condition(&raised_), absl::FromChrono(duration));
  return raised_;
}

absl::Status AwaitNccl(const NcclPoll& poll, Clock::time_point deadline,
                       std::chrono::milliseconds timeout, NcclAbortSignal& abort,
                       const std::string& what) {
  constexpr auto kSpin = std::chrono::microseconds(100);
  constexpr auto kFirstSleep = std::chrono::microseconds(10);
  constexpr auto kMaxSleep = std::chrono::microseconds(1000);
  const Clock::time_point start = Clock::now();
  std::chrono::microseconds sleep = kFirstSleep;
  while (true) {
    if (abort.raised()) return absl::AbortedError(absl::StrCat(what, ": the group was aborted"));
    absl::StatusOr<bool> done = poll();
    if (!done.ok()) return done.status();
    if (*done) return absl::OkStatus();
    const Clock::time_point now = Clock::now();
    if (now >= deadline) {
      return absl::DeadlineExceededError(
          absl::StrCat(what, ": still in progress after ", Seconds(timeout),
                       " (the collective timeout): a peer is lost or stalled"));
    }
    if (now - start < kSpin) {
      std::this_thread::yield();
      continue;
    }
    const auto left = std::chrono::duration_cast<std::chrono::microseconds>(deadline - now);
    abort.SleepUnlessRaised(std::min(sleep, left + std::chrono::microseconds(1)));
    sleep = std::min(sleep * 2, kMaxSleep);
  }
}

// ---------------------------------------------------------------------------------------------

NcclGroup::NcclGroup(NcclGroupOptions options) : options_(std::move(options)) {}

absl::StatusOr<std::unique_ptr<NcclGroup>> NcclGroup::Create(const NcclGroupOptions& options) {
  if (options.size < 1 || options.rank < 0 || options.rank >= options.size) {
    return absl::InvalidArgumentError(
        absl::StrCat("rank ", options.rank, " is not in a group of ", options.size));
  }
  if (options.stream == nullptr) {
    return absl::InvalidArgumentError("an NCCL group needs the backend's stream (got null)");
  }
  if (options.timeout <= std::chrono::milliseconds(0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("collective timeout must be positive, got ", options.timeout.count(), " ms"));
  }
  return std::unique_ptr<NcclGroup>(new NcclGroup(options));
}

absl::StatusOr<std::unique_ptr<NcclGroup>> NcclGroup::Connect(gloo::rendezvous::Store& store,
                                                              const NcclGroupOptions& options) {
  absl::StatusOr<std::unique_ptr<NcclGroup>> group = Create(options);
  if (!group.ok()) return group.status();
  absl::Status joined = (*group)->Join(store);
  if (!joined.ok()) return joined;
  return group;
}

NcclGroup::~NcclGroup() {
  if (comm_ != nullptr) {
    bool clean = false;
    // A healthy group is finalized (its queued work flushed) before it is destroyed; a broken or
    // aborted one, whose kernels may spin on a lost peer, is aborted at once.
    if (!aborted_.load() && broken_.ok() && cudaSetDevice(options_.device) == cudaSuccess) {
      const ncclResult_t result = ncclCommFinalize(comm_);
      if (result == ncclSuccess || result == ncclInProgress) {
        clean = Await(absl::StrCat("ncclCommFinalize on rank ", options_.rank),
                      Clock::now() + options_.timeout, /*event=*/false)
                    .ok();
      }
      if (clean) {
        (void)ncclCommDestroy(comm_);
        comm_ = nullptr;
      }
    }
    AbortComm();  // the communicator if it was not finalized
  }
  if (done_ != nullptr) {
    (void)cudaSetDevice(options_.device);
    (void)cudaEventDestroy(done_);
  }
  (void)cudaGetLastError();
}

void NcclGroup::Abort() {
  aborted_.store(true);
  abort_.Raise();
}

void NcclGroup::AbortComm() {
  if (comm_ == nullptr) return;
  (void)cudaSetDevice(options_.device);
  // Sets the abort flag the kernels poll, joins NCCL's init thread, frees the communicator.
  (void)ncclCommAbort(comm_);
  comm_ = nullptr;
  (void)cudaGetLastError();
}

absl::Status NcclGroup::Fail(absl::Status cause) {
  if (aborted_.load() && cause.code() != absl::StatusCode::kAborted) {
    cause = absl::AbortedError(absl::StrCat("the group was aborted (", cause.message(), ")"));
  }
  AbortComm();
  if (broken_.ok()) broken_ = cause;
  return cause;
}

absl::Status NcclGroup::Usable(const std::string& what) const {
  if (aborted_.load()) return absl::AbortedError(absl::StrCat(what, ": the group was aborted"));
  if (!broken_.ok()) {
    return absl::Status(broken_.code(), absl::StrCat(what,
                                                     ": the group is unusable after an "
                                                     "earlier error: ",
                                                     broken_.message()));
  }
  if (comm_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(what, ": the group has not joined"));
  }
  return absl::OkStatus();
}

absl::Status NcclGroup::Await(const std::string& what, Clock::time_point deadline, bool event) {
  ncclComm* const comm = comm_;
  CUevent_st* const done = done_;
  const NcclPoll poll = [comm, done, event, what]() -> absl::StatusOr<bool> {
    ncclResult_t state = ncclSuccess;
    const ncclResult_t result = ncclCommGetAsyncError(comm, &state);
    if (result != ncclSuccess) {
      return NcclStatus(result, absl::StrCat(what, ": ncclCommGetAsyncError"), LastError(comm));
    }
    if (state == ncclInProgress) return false;
    if (state != ncclSuccess) return NcclStatus(state, what, LastError(comm));
    if (!event) return true;
    const cudaError_t queried = cudaEventQuery(done);
    if (queried == cudaSuccess) return true;
    if (queried == cudaErrorNotReady) return false;
    return CudaStatus(queried, absl::StrCat(what, ": cudaEventQuery"));
  };
  return AwaitNccl(poll, deadline, options_.timeout, abort_, what);
}

absl::Status NcclGroup::Join(gloo::rendezvous::Store& store) {
  const std::string what = absl::StrCat("NCCL initialisation of rank ", options_.rank, " of ",
                                        options_.size, " on device ", options_.device);
  if (aborted_.load()) return absl::AbortedError(absl::StrCat(what, ": the group was aborted"));
  if (joined_once_) return absl::FailedPreconditionError(absl::StrCat(what, ": joined already"));
  joined_once_ = true;

  absl::StatusOr<std::string> id =
      ExchangeNcclUniqueId(store, options_.rank, options_.uid_key, options_.timeout);
  if (!id.ok()) return Fail(id.status());
  if (aborted_.load())
    return Fail(absl::AbortedError(absl::StrCat(what, ": the group was aborted")));

  if (absl::Status s = CudaStatus(cudaSetDevice(options_.device),
                                  absl::StrCat(what, ": cudaSetDevice(", options_.device, ")"));
      !s.ok()) {
    return Fail(s);
  }
  ncclUniqueId unique_id;
  std::memcpy(unique_id.internal, id->data(), sizeof(unique_id.internal));
  ncclConfig_t config = NCCL_CONFIG_INITIALIZER;
  config.blocking = 0;  // every call returns at once; AwaitNccl does the waiting
  ncclComm_t comm = nullptr;
  const ncclResult_t result =
      ncclCommInitRankConfig(&comm, options_.size, unique_id, options_.rank, &config);
  comm_ = comm;  // also on failure: a nonblocking init may hand back a communicator to abort
  if (result != ncclSuccess && result != ncclInProgress) {
    return Fail(
        NcclStatus(result, absl::StrCat(what, ": ncclCommInitRankConfig"), LastError(comm)));
  }
  if (comm_ == nullptr) {
    return Fail(absl::InternalError(absl::StrCat(what,
                                                 ": ncclCommInitRankConfig returned no "
                                                 "communicator")));
  }
  if (absl::Status s = Await(what, Clock::now() + options_.timeout, /*event=*/false); !s.ok()) {
    return Fail(s);
  }
  CUevent_st* done = nullptr;
  if (absl::Status s = CudaStatus(cudaEventCreateWithFlags(&done, cudaEventDisableTiming),
                                  absl::StrCat(what, ": cudaEventCreateWithFlags"));
      !s.ok()) {
    return Fail(s);
  }
  done_ = done;
  return absl::OkStatus();
}

absl::Status NcclGroup::AllReduceSum(float* data, size_t count) {
  const Range range{data, count};
  return AllReduceSumRanges(std::span<const Range>(&range, 1));
}

absl::Status NcclGroup::AllReduceSumRanges(std::span<const Range> ranges) {
  size_t total = 0;
  for (const Range& r : ranges) total += r.count;
  if (total == 0) return absl::OkStatus();
  const std::string what =
      absl::StrCat("all-reduce of ", total, " floats", ranges.size() > 1 ? " in " : "",
                   ranges.size() > 1 ? absl::StrCat(ranges.size(), " ranges") : "", " on rank ",
                   options_.rank, " of ", options_.size);
  if (absl::Status s = Usable(what); !s.ok()) return s;
  const Clock::time_point deadline = Clock::now() + options_.timeout;
  if (absl::Status s = CudaStatus(cudaSetDevice(options_.device),
                                  absl::StrCat(what, ": cudaSetDevice(", options_.device, ")"));
      !s.ok()) {
    return Fail(s);
  }
  cudaStream_t stream = options_.stream;
  // Every call inside the group returns at once; a failure shows at ncclGroupEnd or in the
  // communicator's state. The group is closed whatever happens, so NCCL's group depth is never
  // left open.
  ncclResult_t first = ncclGroupStart();
  if (first == ncclSuccess) {
    for (const Range& r : ranges) {
      if (r.count == 0) continue;
      const ncclResult_t result =
          ncclAllReduce(r.data, r.data, r.count, ncclFloat32, ncclSum, comm_, stream);
      if (result != ncclSuccess && result != ncclInProgress) {
        first = result;
        break;
      }
    }
    const ncclResult_t ended = ncclGroupEnd();
    if (first == ncclSuccess && ended != ncclInProgress) first = ended;
  }
  if (first != ncclSuccess) {
    return Fail(NcclStatus(first, absl::StrCat(what, ": enqueue"), LastError(comm_)));
  }
  // Enqueued once the communicator leaves ncclInProgress; only then is the kernel on the stream,
  // so only then may the completion event be recorded.
  if (absl::Status s = Await(what, deadline, /*event=*/false); !s.ok()) return Fail(s);
  if (absl::Status s =
          CudaStatus(cudaEventRecord(done_, stream), absl::StrCat(what, ": cudaEventRecord"));
      !s.ok()) {
    return Fail(s);
  }
  if (absl::Status s = Await(what, deadline, /*event=*/true); !s.ok()) return Fail(s);
  bytes_reduced_ += static_cast<int64_t>(total * sizeof(float));
  return absl::OkStatus();
}

absl::StatusOr<NcclGroupOptions> NcclGroupOptionsFor(Backend<float>& backend, int rank, int size,
                                                     std::chrono::milliseconds timeout) {
  auto* cuda = dynamic_cast<CudaBackend*>(&backend);
  if (cuda == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(
        "an NCCL group needs a session on the CUDA backend, not \"", backend.name(), "\""));
  }
  NcclGroupOptions options;
  options.rank = rank;
  options.size = size;
  options.stream = cuda->stream();
  options.timeout = timeout;
  int device = 0;
  if (absl::Status s = CudaStatus(cudaStreamGetDevice(options.stream, &device),
                                  "cudaStreamGetDevice(the backend's stream)");
      !s.ok()) {
    return s;
  }
  options.device = device;
  return options;
}

}  // namespace raptr
