// NcclGroup: a data-parallel group's collectives over NCCL, for workers training on GPUs: the
// gradients are summed where they are (the backend's device memory), on the backend's stream,
// with no host staging. GlooGroup (gloo_group.h) is the CPU workers' counterpart; both honour
// GradientReducer's contract (session.h) and Gloo's failure contract: a lost or stalled peer fails
// a collective within the collective timeout, Abort() from any thread ends a wait at once, and
// after an error the group is unusable.
//
// Bootstrap, through the same rendezvous store the Gloo group uses (the coordinator's KvSet /
// KvGet, CoordinatorStore in kv_rendezvous_store.h, scoped to one job and generation): rank 0
// calls ncclGetUniqueId and publishes its 128 bytes under "nccl/uid"; every other rank waits for
// them; then every rank calls ncclCommInitRankConfig with a nonblocking config and polls
// ncclCommGetAsyncError until the communicator is ready. One group (one communicator) per
// generation: a regrouped job makes a new one, under the new generation's keys.
//
// Waiting. NCCL has no per-collective timeout, and a collective whose peer is gone spins on the
// GPU forever. So nothing here blocks in NCCL or CUDA: every operation is issued nonblocking and
// then awaited by AwaitNccl, a loop that polls (ncclCommGetAsyncError, then cudaEventQuery of an
// event recorded after the collective) until the operation is done, fails, its deadline (the
// collective timeout) passes, or Abort() is called. On anything but success the loop's caller
// calls ncclCommAbort, which stops the kernels still spinning, and the group is unusable. The
// loop runs on the calling (job) thread, so NCCL is only ever called from one thread; Abort()
// only raises a flag the loop sleeps on, so it is cheap and safe from any thread.
//
// Codes: DEADLINE_EXCEEDED (the timeout ran out: a peer is lost or stalled), ABORTED (Abort()),
// UNAVAILABLE (the rendezvous failed, or NCCL reports a remote or system error: a lost peer, a
// network failure), INTERNAL (CUDA errors and NCCL's internal / usage errors), each naming the
// operation, the rank, and NCCL's or CUDA's own reason (ncclGetErrorString, ncclGetLastError).
//
// This header is plain C++ (no CUDA or NCCL headers), like cuda_backend.h. Built only when the
// build has CUDA and finds NCCL (cmake/Nccl.cmake: RAPTR_WITH_NCCL; the library raptr_nccl
// defines RAPTR_HAVE_NCCL=1 for its users).
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>

#include "absl/base/thread_annotations.h"
#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/synchronization/mutex.h"
#include "worker/engine/backend.h"
#include "worker/engine/session.h"

namespace gloo {
namespace rendezvous {
class Store;
}  // namespace rendezvous
}  // namespace gloo

// Opaque CUDA / NCCL handle types, declared as cuda_runtime.h and nccl.h declare them
// (cudaStream_t is CUstream_st*, cudaEvent_t CUevent_st*, ncclComm_t ncclComm*).
struct CUstream_st;
struct CUevent_st;
struct ncclComm;

namespace raptr {

// NCCL_UNIQUE_ID_BYTES.
inline constexpr size_t kNcclUniqueIdBytes = 128;
// The rendezvous key rank 0 publishes the unique id under (one store per job and generation).
inline constexpr char kNcclUniqueIdKey[] = "nccl/uid";

// ---------------------------------------------------------------------------------------------
// The pieces that need no GPU (unit-tested without one: tests/unit/nccl_group_test.cc).
// ---------------------------------------------------------------------------------------------

// NCCL's result `result` (an ncclResult_t) of `call` as a Status: OK for ncclSuccess; otherwise
// "<call>: NCCL error <n> (<ncclGetErrorString>): <last_error>" with the code of the header
// comment: ncclRemoteError and ncclSystemError UNAVAILABLE (a peer or the network failed: another
// group may well succeed), ncclUnhandledCudaError, ncclInternalError, ncclInvalidArgument and
// ncclInvalidUsage INTERNAL (the arguments are raptr's, never the job's: not INVALID_ARGUMENT,
// which the coordinator takes for a job that can never run), anything else UNKNOWN. `last_error`
// is ncclGetLastError's text, omitted when empty.
absl::Status NcclStatus(int result, const std::string& call, const std::string& last_error = "");

// ncclGetUniqueId's 128 bytes (needs no GPU: it opens rank 0's bootstrap socket).
absl::StatusOr<std::string> NewNcclUniqueId();

// The bootstrap's exchange: rank 0 makes the id (make_id; NewNcclUniqueId in a group) and
// publishes it under `key`; every other rank waits up to `timeout` for the key and reads it.
// Returns the id, kNcclUniqueIdBytes long. UNAVAILABLE naming the key when the store fails or
// the wait runs out (as GlooGroup::Connect: the store reports both by exception), INTERNAL when
// the value is not kNcclUniqueIdBytes long, make_id's error as it is.
absl::StatusOr<std::string> ExchangeNcclUniqueId(
    gloo::rendezvous::Store& store, int rank, const std::string& key,
    std::chrono::milliseconds timeout,
    const std::function<absl::StatusOr<std::string>()>& make_id = NewNcclUniqueId);

// A flag raised once, from any thread, that a waiting loop sleeps on (so raising it wakes the
// loop at once rather than at its next poll).
class NcclAbortSignal {
 public:
  void Raise();
  bool raised() const;
  // Sleeps up to `duration` or until raised; true when raised.
  bool SleepUnlessRaised(std::chrono::nanoseconds duration);

 private:
  mutable absl::Mutex mu_;
  bool raised_ ABSL_GUARDED_BY(mu_) = false;
};

// One look at an asynchronous operation: true once it is done, false while it is in progress,
// an error when it failed.
using NcclPoll = std::function<absl::StatusOr<bool>()>;

// The waiting loop of every NCCL operation. Polls until `poll` reports done (OK) or fails (its
// error), `deadline` passes (DEADLINE_EXCEEDED: "<what>: still in progress after <timeout>") or
// `abort` is raised (ABORTED: "<what>: the group was aborted"; checked before every poll, so a
// raised signal wins even over an operation that has completed). Polls back-to-back for the
// first ~100 µs (a small all-reduce completes in tens of µs), then sleeps on `abort` between
// polls, the sleep doubling up to 1 ms: an Abort() ends the wait within microseconds and a
// timeout fires within ~1 ms of its deadline. `timeout` only words the message.
absl::Status AwaitNccl(const NcclPoll& poll, std::chrono::steady_clock::time_point deadline,
                       std::chrono::milliseconds timeout, NcclAbortSignal& abort,
                       const std::string& what);

// ---------------------------------------------------------------------------------------------
// The group.
// ---------------------------------------------------------------------------------------------

struct NcclGroupOptions {
  int rank = 0;
  int size = 1;
  int device = 0;  // the CUDA device the communicator runs on: the backend's
  // The stream every collective is enqueued on: the backend's (CudaBackend::stream()), so a
  // collective is ordered after the backward pass that wrote the gradients and before the
  // optimizer that reads them. Required.
  CUstream_st* stream = nullptr;
  // Bounds the wait for rank 0's id, the communicator's initialisation, and every collective.
  std::chrono::milliseconds timeout{std::chrono::seconds(60)};
  std::string uid_key = kNcclUniqueIdKey;
};

class NcclGroup final : public GradientReducer {
 public:
  // Create + Join: joins the group as options.rank of options.size.
  static absl::StatusOr<std::unique_ptr<NcclGroup>> Connect(gloo::rendezvous::Store& store,
                                                            const NcclGroupOptions& options);
  // A group that has not joined yet (no CUDA or NCCL call yet), so that a caller can make it
  // reachable by its Abort() path before the bootstrap's waits start. INVALID_ARGUMENT for a
  // rank outside [0, size) or a null stream.
  static absl::StatusOr<std::unique_ptr<NcclGroup>> Create(const NcclGroupOptions& options);
  // Tears the communicator down: ncclCommFinalize (awaited under the timeout) and
  // ncclCommDestroy when the group is healthy; ncclCommAbort after an error or Abort().
  ~NcclGroup() override;
  NcclGroup(const NcclGroup&) = delete;
  NcclGroup& operator=(const NcclGroup&) = delete;

  // The bootstrap (see the header comment), once. ABORTED at once if Abort() was called; an
  // Abort() during the communicator's initialisation ends it at once. Abort() cannot end a wait
  // inside the store: a CoordinatorStore's waits end with its Cancel(), which the caller arranges
  // (JobRunner::SetRendezvous). On failure the group is unusable.
  absl::Status Join(gloo::rendezvous::Store& store);

  // In-place sum over the ranks of data[0 .. count), device memory on options.device; returns
  // once the sum is complete on the device. Ring or tree, as NCCL chooses: deterministic for a
  // fixed world size, GPU model and NCCL version, and every rank ends with the same bits.
  absl::Status AllReduceSum(float* data, size_t count) override;
  bool accepts_device_memory() const override { return true; }

  // Several in-place sums in one ncclGroupStart/End: one launch and one wait for all of them
  // (TrainingSession::ReduceGradients's merged ranges).
  using Range = ReduceRange;
  absl::Status AllReduceSumRanges(std::span<const Range> ranges) override;

  // From any thread: the wait in progress (a collective, the initialisation, the teardown's
  // finalize) ends with ABORTED within microseconds, and its thread aborts the communicator;
  // every later call fails with ABORTED. Peers blocked with this rank then fail on their own
  // timeout, or sooner where NCCL's transport notices the closed connections. Idempotent.
  void Abort() override;
  bool aborted() const { return aborted_.load(); }

  int rank() const { return options_.rank; }
  int size() const { return options_.size; }
  int device() const { return options_.device; }
  bool joined() const { return comm_ != nullptr; }
  // Bytes all-reduced so far (the payload, as GlooGroup counts it).
  int64_t bytes_reduced() const { return bytes_reduced_; }

 private:
  explicit NcclGroup(NcclGroupOptions options);
  // OK when a collective may run; else why not.
  absl::Status Usable(const std::string& what) const;
  // Records the group's first error, aborts the communicator, returns the error (ABORTED if
  // Abort() was called, whatever the cause).
  absl::Status Fail(absl::Status cause);
  void AbortComm();
  // Awaits the communicator's state leaving ncclInProgress (the initialisation, a group's
  // enqueue, finalize), or, with `event`, also the event's completion.
  absl::Status Await(const std::string& what, std::chrono::steady_clock::time_point deadline,
                     bool event);

  const NcclGroupOptions options_;
  ncclComm* comm_ = nullptr;
  CUevent_st* done_ = nullptr;  // recorded after each collective
  bool joined_once_ = false;
  absl::Status broken_;  // the first error; not OK: unusable
  NcclAbortSignal abort_;
  std::atomic<bool> aborted_{false};
  int64_t bytes_reduced_ = 0;
};

// The worker's group options for a session on `backend`: its stream and device, when it is a
// CudaBackend (FAILED_PRECONDITION otherwise: a CPU session reduces through Gloo).
absl::StatusOr<NcclGroupOptions> NcclGroupOptionsFor(Backend<float>& backend, int rank, int size,
                                                     std::chrono::milliseconds timeout);

}  // namespace raptr
