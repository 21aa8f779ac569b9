// NcclGroup's parts that need no GPU (worker/collective/nccl_group.h), with the real NCCL library
// and a real rendezvous store (Gloo's in-memory HashStore, the store data_parallel_test's Gloo
// groups meet through; CoordinatorStore implements the same interface over the coordinator):
//   - NCCL results map to the Status codes the coordinator's retry rules expect, with NCCL's
//     own strings;
//   - rank 0's ncclGetUniqueId reaches every other rank byte for byte through the store, the
//     waiting ranks really wait, and a missing or malformed id fails with the key named;
//   - the waiting loop every NCCL operation goes through: an operation that stays in progress
//     forever (what a collective with a lost peer looks like) ends with DEADLINE_EXCEEDED at its
//     deadline, and Abort() from another thread ends it with ABORTED within milliseconds;
//   - a group's life before and after a failed bootstrap: unusable, with the first error's code.
// The device side (a communicator, collectives, aborting a live one) is tests/cuda/
// nccl_group_test.cc, which skips without a GPU.
//
// Built only when the build has NCCL (tests/CMakeLists.txt).
#include "worker/collective/nccl_group.h"

#include <nccl.h>

#include <atomic>
#include <chrono>
#include <memory>
#include <set>
#include <string>
#include <thread>
#include <vector>

#include "gloo/rendezvous/hash_store.h"
#include "gtest/gtest.h"
#include "worker/engine/backend_factory.h"

namespace raptr {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

bool Contains(const absl::Status& s, const std::string& part) {
  return std::string(s.message()).find(part) != std::string::npos;
}

// ---- error mapping -------------------------------------------------------------------------

TEST(NcclStatus, SuccessIsOk) { EXPECT_TRUE(NcclStatus(ncclSuccess, "ncclAllReduce").ok()); }

TEST(NcclStatus, LostPeersAndNetworkFailuresAreUnavailable) {
  for (ncclResult_t r : {ncclRemoteError, ncclSystemError}) {
    const absl::Status s = NcclStatus(r, "all-reduce of 8 floats on rank 1 of 2", "socket closed");
    EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable) << s;
    EXPECT_TRUE(Contains(s, "all-reduce of 8 floats on rank 1 of 2")) << s;
    EXPECT_TRUE(Contains(s, ncclGetErrorString(r))) << s;  // NCCL's own words
    EXPECT_TRUE(Contains(s, "socket closed")) << s;        // ncclGetLastError's
  }
}

TEST(NcclStatus, CudaInternalAndUsageErrorsAreInternalNotInvalidArgument) {
  // INVALID_ARGUMENT would tell the coordinator the job can never run (job_runner.cc's retry
  // rule); NCCL's arguments are raptr's, so these are raptr's or the machine's problems.
  for (ncclResult_t r :
       {ncclUnhandledCudaError, ncclInternalError, ncclInvalidArgument, ncclInvalidUsage}) {
    const absl::Status s = NcclStatus(r, "ncclCommInitRankConfig");
    EXPECT_EQ(s.code(), absl::StatusCode::kInternal) << s;
    EXPECT_TRUE(Contains(s, ncclGetErrorString(r))) << s;
    EXPECT_TRUE(Contains(s, "NCCL error " + std::to_string(static_cast<int>(r)))) << s;
    // No last error given: no dangling ": " after NCCL's string.
    EXPECT_FALSE(Contains(s, std::string(ncclGetErrorString(r)) + "): ")) << s;
  }
}

TEST(NcclStatus, AnythingElseIsUnknown) {
  EXPECT_EQ(NcclStatus(ncclInProgress, "x").code(), absl::StatusCode::kUnknown);
  EXPECT_EQ(NcclStatus(99, "x").code(), absl::StatusCode::kUnknown);
}

// ---- the unique id and its exchange ----------------------------------------------------------

TEST(NcclUniqueId, IsNcclsSizeAndUniquePerCall) {
  absl::StatusOr<std::string> a = NewNcclUniqueId();
  absl::StatusOr<std::string> b = NewNcclUniqueId();
  ASSERT_TRUE(a.ok()) << a.status();
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->size(), sizeof(ncclUniqueId));
  EXPECT_EQ(a->size(), kNcclUniqueIdBytes);
  EXPECT_NE(*a, *b);
}

TEST(NcclUniqueIdExchange, EveryRankGetsRankZerosIdThroughTheStore) {
  constexpr int kWorld = 4;
  gloo::rendezvous::HashStore store;
  std::vector<absl::StatusOr<std::string>> got(kWorld, absl::UnknownError("not run"));
  std::vector<std::thread> threads;
  // The others start first: they must wait for the key, not find it missing.
  for (int rank = 1; rank < kWorld; ++rank) {
    threads.emplace_back([&, rank] {
      got[rank] = ExchangeNcclUniqueId(store, rank, kNcclUniqueIdKey, milliseconds(10000));
    });
  }
  std::this_thread::sleep_for(milliseconds(50));
  got[0] = ExchangeNcclUniqueId(store, 0, kNcclUniqueIdKey, milliseconds(10000));
  for (std::thread& t : threads) t.join();
  for (int rank = 0; rank < kWorld; ++rank) {
    ASSERT_TRUE(got[rank].ok()) << "rank " << rank << ": " << got[rank].status();
    EXPECT_EQ(got[rank]->size(), kNcclUniqueIdBytes);
    EXPECT_EQ(*got[rank], *got[0]) << "rank " << rank;
  }
  const std::vector<char> stored = store.get(kNcclUniqueIdKey);
  EXPECT_EQ(std::string(stored.begin(), stored.end()), *got[0]);
}

TEST(NcclUniqueIdExchange, AMissingIdFailsAtTheTimeoutNamingTheKey) {
  gloo::rendezvous::HashStore store;
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::string> id = ExchangeNcclUniqueId(store, 1, "nccl/uid", milliseconds(200));
  const double ms = MsSince(start);
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kUnavailable) << id.status();
  EXPECT_TRUE(Contains(id.status(), "\"nccl/uid\"")) << id.status();
  EXPECT_TRUE(Contains(id.status(), "rank 1")) << id.status();
  EXPECT_GE(ms, 190);
  EXPECT_LT(ms, 5000);
}

TEST(NcclUniqueIdExchange, AMalformedIdIsRejected) {
  gloo::rendezvous::HashStore store;
  store.set("nccl/uid", std::vector<char>(5, 'x'));
  absl::StatusOr<std::string> id = ExchangeNcclUniqueId(store, 2, "nccl/uid", milliseconds(1000));
  ASSERT_FALSE(id.ok());
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInternal) << id.status();
  EXPECT_TRUE(Contains(id.status(), "5 bytes")) << id.status();
}

TEST(NcclUniqueIdExchange, RankZerosFailureToMakeAnIdPublishesNothing) {
  gloo::rendezvous::HashStore store;
  absl::StatusOr<std::string> id =
      ExchangeNcclUniqueId(store, 0, "nccl/uid", milliseconds(1000),
                           [] { return absl::StatusOr<std::string>(absl::InternalError("no")); });
  EXPECT_EQ(id.status().code(), absl::StatusCode::kInternal);
  EXPECT_THROW(store.wait({"nccl/uid"}, milliseconds(50)), std::exception);
}

TEST(NcclUniqueIdExchange, KeysOfDifferentGenerationsDoNotMix) {
  // CoordinatorStore scopes keys by (job, generation); two stores stand for two generations.
  gloo::rendezvous::HashStore generation1, generation2;
  absl::StatusOr<std::string> first =
      ExchangeNcclUniqueId(generation1, 0, "nccl/uid", milliseconds(1000));
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<std::string> second =
      ExchangeNcclUniqueId(generation2, 1, "nccl/uid", milliseconds(100));
  EXPECT_FALSE(second.ok());  // generation 2's rank 0 has not published: no stale id
}

// ---- the waiting loop ------------------------------------------------------------------------

TEST(AwaitNccl, ReturnsOnceThePollReportsDone) {
  NcclAbortSignal abort;
  int polls = 0;
  const absl::Status s =
      AwaitNccl([&]() -> absl::StatusOr<bool> { return ++polls == 3; },
                Clock::now() + milliseconds(5000), milliseconds(5000), abort, "op");
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_EQ(polls, 3);
}

TEST(AwaitNccl, AnOperationInProgressForeverTimesOutAtItsDeadline) {
  NcclAbortSignal abort;
  std::atomic<int> polls{0};
  const Clock::time_point start = Clock::now();
  const absl::Status s = AwaitNccl(
      [&]() -> absl::StatusOr<bool> {
        ++polls;
        return false;  // ncclInProgress, forever
      },
      start + milliseconds(150), milliseconds(150), abort, "all-reduce of 4 floats on rank 0 of 2");
  const double ms = MsSince(start);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_TRUE(Contains(s, "all-reduce of 4 floats on rank 0 of 2")) << s;
  EXPECT_TRUE(Contains(s, "0.15 s")) << s;
  EXPECT_GE(ms, 150);
  EXPECT_LT(ms, 150 + 100) << "the deadline fired late";
  // It kept polling (backing off to ~1 ms sleeps), not a single look and a long sleep.
  EXPECT_GT(polls.load(), 50);
}

TEST(AwaitNccl, AbortFromAnotherThreadEndsTheWaitPromptly) {
  NcclAbortSignal abort;
  std::atomic<bool> polled{false};
  Clock::time_point raised_at;
  std::thread aborter([&] {
    while (!polled.load()) std::this_thread::yield();
    std::this_thread::sleep_for(milliseconds(100));  // well into the sleeping phase
    raised_at = Clock::now();
    abort.Raise();
  });
  const Clock::time_point start = Clock::now();
  const absl::Status s = AwaitNccl(
      [&]() -> absl::StatusOr<bool> {
        polled.store(true);
        return false;
      },
      start + std::chrono::seconds(60), std::chrono::seconds(60), abort, "collective");
  const Clock::time_point end = Clock::now();
  aborter.join();
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_TRUE(Contains(s, "collective: the group was aborted")) << s;
  const double after_raise_ms = std::chrono::duration<double, std::milli>(end - raised_at).count();
  EXPECT_GE(after_raise_ms, 0);
  EXPECT_LT(after_raise_ms, 50) << "Abort() took " << after_raise_ms << " ms to end the wait";
  EXPECT_LT(MsSince(start), 5000);
}

TEST(AwaitNccl, ARaisedSignalWinsWithoutPolling) {
  NcclAbortSignal abort;
  abort.Raise();
  EXPECT_TRUE(abort.raised());
  int polls = 0;
  const absl::Status s = AwaitNccl(
      [&]() -> absl::StatusOr<bool> {
        ++polls;
        return true;
      },
      Clock::now() + milliseconds(1000), milliseconds(1000), abort, "op");
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted);
  EXPECT_EQ(polls, 0);
}

TEST(AwaitNccl, APollErrorIsReturnedAsItIs) {
  NcclAbortSignal abort;
  int polls = 0;
  const absl::Status s = AwaitNccl(
      [&]() -> absl::StatusOr<bool> {
        ++polls;
        return NcclStatus(ncclRemoteError, "all-reduce", "peer 1 closed the connection");
      },
      Clock::now() + milliseconds(1000), milliseconds(1000), abort, "op");
  EXPECT_EQ(s.code(), absl::StatusCode::kUnavailable);
  EXPECT_TRUE(Contains(s, "peer 1 closed the connection")) << s;
  EXPECT_EQ(polls, 1);
}

TEST(NcclAbortSignal, SleepEndsWhenRaised) {
  NcclAbortSignal abort;
  std::thread raiser([&] {
    std::this_thread::sleep_for(milliseconds(50));
    abort.Raise();
  });
  const Clock::time_point start = Clock::now();
  EXPECT_TRUE(abort.SleepUnlessRaised(std::chrono::seconds(30)));
  EXPECT_LT(MsSince(start), 5000);
  raiser.join();
  NcclAbortSignal quiet;
  EXPECT_FALSE(quiet.SleepUnlessRaised(milliseconds(5)));
}

// ---- the group, before it has a communicator -----------------------------------------------

// Join's paths tested here never reach CUDA (they end in the store), so the stream is never
// used: any non-null value passes Create's check.
NcclGroupOptions Options(int rank, int size, milliseconds timeout) {
  NcclGroupOptions options;
  options.rank = rank;
  options.size = size;
  options.stream = reinterpret_cast<CUstream_st*>(0x1);
  options.timeout = timeout;
  return options;
}

TEST(NcclGroup, CreateChecksItsOptions) {
  EXPECT_EQ(NcclGroup::Create(Options(2, 2, milliseconds(1000))).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NcclGroup::Create(Options(-1, 2, milliseconds(1000))).status().code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(NcclGroup::Create(Options(0, 2, milliseconds(0))).status().code(),
            absl::StatusCode::kInvalidArgument);
  NcclGroupOptions no_stream = Options(0, 2, milliseconds(1000));
  no_stream.stream = nullptr;
  EXPECT_EQ(NcclGroup::Create(no_stream).status().code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::unique_ptr<NcclGroup>> group =
      NcclGroup::Create(Options(1, 2, milliseconds(1000)));
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_TRUE((*group)->accepts_device_memory());
  EXPECT_EQ((*group)->rank(), 1);
  EXPECT_EQ((*group)->size(), 2);
  EXPECT_FALSE((*group)->joined());
}

TEST(NcclGroup, ACollectiveBeforeJoinFailsAndAbortMakesItAborted) {
  absl::StatusOr<std::unique_ptr<NcclGroup>> group =
      NcclGroup::Create(Options(0, 2, milliseconds(1000)));
  ASSERT_TRUE(group.ok());
  float x = 1;
  EXPECT_EQ((*group)->AllReduceSum(&x, 1).code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_TRUE((*group)->AllReduceSum(&x, 0).ok());  // nothing to reduce, as GlooGroup
  (*group)->Abort();
  (*group)->Abort();  // idempotent
  EXPECT_TRUE((*group)->aborted());
  EXPECT_EQ((*group)->AllReduceSum(&x, 1).code(), absl::StatusCode::kAborted);
}

TEST(NcclGroup, AbortBeforeJoinEndsJoinWithoutTouchingTheStore) {
  gloo::rendezvous::HashStore store;
  absl::StatusOr<std::unique_ptr<NcclGroup>> group =
      NcclGroup::Create(Options(0, 2, milliseconds(1000)));
  ASSERT_TRUE(group.ok());
  (*group)->Abort();
  const absl::Status joined = (*group)->Join(store);
  EXPECT_EQ(joined.code(), absl::StatusCode::kAborted) << joined;
  EXPECT_THROW(store.wait({kNcclUniqueIdKey}, milliseconds(50)), std::exception);  // no id
}

TEST(NcclGroup, AFailedBootstrapLeavesTheGroupUnusableWithTheFirstErrorsCode) {
  gloo::rendezvous::HashStore store;  // rank 0 never comes
  absl::StatusOr<std::unique_ptr<NcclGroup>> group =
      NcclGroup::Create(Options(1, 2, milliseconds(150)));
  ASSERT_TRUE(group.ok());
  const Clock::time_point start = Clock::now();
  const absl::Status joined = (*group)->Join(store);
  EXPECT_GE(MsSince(start), 140);
  EXPECT_EQ(joined.code(), absl::StatusCode::kUnavailable) << joined;
  EXPECT_TRUE(Contains(joined, "nccl/uid")) << joined;
  EXPECT_FALSE((*group)->joined());
  float x = 1;
  const absl::Status after = (*group)->AllReduceSum(&x, 1);
  EXPECT_EQ(after.code(), absl::StatusCode::kUnavailable) << after;
  EXPECT_TRUE(Contains(after, "unusable after an earlier error")) << after;
  EXPECT_EQ((*group)->Join(store).code(), absl::StatusCode::kFailedPrecondition);  // once only
}

TEST(NcclGroup, ConnectFailsWithAStatusWhateverTheMachine) {
  // Rank 0 of 2 publishes its id and then initialises: without a GPU that fails at once (CUDA:
  // no device / driver); with one, the communicator waits for the absent rank 1 until the
  // timeout and is aborted. Either way a Status comes back (no hang, no crash) and the id was
  // published first, as rank 1 needs it.
  gloo::rendezvous::HashStore store;
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::unique_ptr<NcclGroup>> group =
      NcclGroup::Connect(store, Options(0, 2, milliseconds(500)));
  ASSERT_FALSE(group.ok());
  const absl::StatusCode code = group.status().code();
  EXPECT_TRUE(code == absl::StatusCode::kInternal || code == absl::StatusCode::kUnavailable ||
              code == absl::StatusCode::kDeadlineExceeded)
      << group.status();
  EXPECT_TRUE(Contains(group.status(), "rank 0 of 2")) << group.status();
  EXPECT_LT(MsSince(start), 30000);
  const std::vector<char> id = store.get(kNcclUniqueIdKey);
  EXPECT_EQ(id.size(), kNcclUniqueIdBytes);
}

TEST(NcclGroupOptionsFor, NeedsACudaBackend) {
  absl::StatusOr<std::unique_ptr<Backend<float>>> cpu = MakeBackend(BackendOptions{});
  ASSERT_TRUE(cpu.ok()) << cpu.status();
  absl::StatusOr<NcclGroupOptions> options = NcclGroupOptionsFor(**cpu, 0, 2, milliseconds(1000));
  EXPECT_EQ(options.status().code(), absl::StatusCode::kFailedPrecondition) << options.status();
  EXPECT_TRUE(Contains(options.status(), "\"cpu\"")) << options.status();
}

}  // namespace
}  // namespace raptr
