// NcclGroup on real GPUs (worker/collective/nccl_group.h): communicators, all-reduces on the
// backend's stream, and the watchdog on a live communicator. The parts that need no GPU are
// tests/unit/nccl_group_test.cc.
//
// Skips: every test without a CUDA device (CudaBackend::DeviceCount() == 0), so the binary
// passes, all SKIPPED, on machines with nvcc and NCCL but no GPU. NCCL refuses two ranks of one
// communicator on one GPU, so the multi-rank tests (ranks are threads here, one GPU each) skip
// unless there are at least 2 devices.
//
// One-GPU stand-ins for a stalled peer: a host function enqueued on the stream before the
// collective blocks the stream (so the collective cannot complete, exactly what a peer that
// never arrives looks like from the waiting loop) until the test releases it; it also releases
// itself after 20 s so a failing test cannot wedge the process.
#include "worker/collective/nccl_group.h"

#include <cuda_runtime.h>

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gloo/rendezvous/hash_store.h"
#include "gtest/gtest.h"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {
namespace {

using Clock = std::chrono::steady_clock;
using std::chrono::milliseconds;

int Devices() {
  static const int n = CudaBackend::DeviceCount();
  return n;
}

#define SKIP_WITHOUT_GPUS(n)                                                \
  if (Devices() < (n))                                                      \
  GTEST_SKIP() << "needs " << (n) << " CUDA device(s), found " << Devices() \
               << " (cudaGetDeviceCount failed or found fewer): NCCL device test skipped"

double MsSince(Clock::time_point t) {
  return std::chrono::duration<double, std::milli>(Clock::now() - t).count();
}

std::vector<float> Pattern(size_t n, int rank) {
  std::vector<float> v(n);
  // Small integers: sums over a few ranks are exact in fp32, whatever the reduction order.
  for (size_t i = 0; i < n; ++i) v[i] = static_cast<float>((i * 7 + rank * 3) % 1001) - 500.f;
  return v;
}

absl::StatusOr<std::unique_ptr<NcclGroup>> OneRankGroup(CudaBackend& backend,
                                                        gloo::rendezvous::HashStore& store,
                                                        milliseconds timeout) {
  absl::StatusOr<NcclGroupOptions> options = NcclGroupOptionsFor(backend, 0, 1, timeout);
  if (!options.ok()) return options.status();
  return NcclGroup::Connect(store, *options);
}

// Blocks the stream it is enqueued on until Release() (or 20 s).
class StreamBlocker {
 public:
  explicit StreamBlocker(CUstream_st* stream) {
    EXPECT_EQ(cudaLaunchHostFunc(stream, &StreamBlocker::Run, this), cudaSuccess);
  }
  ~StreamBlocker() {
    Release();
    while (!finished_.load()) std::this_thread::sleep_for(milliseconds(1));
  }
  void Release() { released_.store(true); }

 private:
  static void Run(void* self) {
    auto* blocker = static_cast<StreamBlocker*>(self);
    const Clock::time_point until = Clock::now() + std::chrono::seconds(20);
    while (!blocker->released_.load() && Clock::now() < until) {
      std::this_thread::sleep_for(milliseconds(1));
    }
    blocker->finished_.store(true);
  }
  std::atomic<bool> released_{false};
  std::atomic<bool> finished_{false};
};

// ---- one GPU ---------------------------------------------------------------------------------

TEST(NcclGroupDevice, OneRankAllReduceIsTheIdentityOnTheBackendsStream) {
  SKIP_WITHOUT_GPUS(1);
  CudaBackend backend;
  gloo::rendezvous::HashStore store;
  absl::StatusOr<std::unique_ptr<NcclGroup>> group =
      OneRankGroup(backend, store, milliseconds(30000));
  ASSERT_TRUE(group.ok()) << group.status();
  EXPECT_EQ((*group)->device(), 0);
  const size_t n = (1 << 20) + 3;  // not a multiple of anything NCCL chunks by
  const std::vector<float> host = Pattern(n, 0);
  float* src = backend.Alloc(n);
  float* buf = backend.Alloc(n);
  backend.CopyToDevice(src, host.data(), n * sizeof(float));
  // Ordering: a backend op queued before the collective, another after, no host sync between.
  backend.Copy(buf, src, n);
  ASSERT_TRUE((*group)->AllReduceSum(buf, n).ok());
  backend.Copy(src, buf, n);
  std::vector<float> out(n, -1.f);
  backend.CopyToHost(out.data(), src, n * sizeof(float));
  EXPECT_EQ(std::memcmp(out.data(), host.data(), n * sizeof(float)), 0);
  EXPECT_EQ((*group)->bytes_reduced(), static_cast<int64_t>(n * sizeof(float)));

  // Several ranges in one NCCL group call, one empty.
  std::vector<NcclGroup::Range> ranges = {{buf, 1000}, {buf + 5000, 0}, {buf + 8000, 77777}};
  ASSERT_TRUE((*group)->AllReduceSumRanges(ranges).ok());
  backend.CopyToHost(out.data(), buf, n * sizeof(float));
  EXPECT_EQ(std::memcmp(out.data(), host.data(), n * sizeof(float)), 0);
  EXPECT_TRUE((*group)->AllReduceSum(buf, 0).ok());
  backend.FreeBytes(src);
  backend.FreeBytes(buf);
  EXPECT_EQ(backend.device_fault(), "");
}

TEST(NcclGroupDevice, AnAbortedOneRankGroupFailsEveryLaterCall) {
  SKIP_WITHOUT_GPUS(1);
  CudaBackend backend;
  gloo::rendezvous::HashStore store;
  absl::StatusOr<std::unique_ptr<NcclGroup>> group =
      OneRankGroup(backend, store, milliseconds(30000));
  ASSERT_TRUE(group.ok()) << group.status();
  float* buf = backend.Alloc(64);
  ASSERT_TRUE((*group)->AllReduceSum(buf, 64).ok());
  (*group)->Abort();
  const absl::Status s = (*group)->AllReduceSum(buf, 64);
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  group->reset();  // ncclCommAbort of an idle communicator
  // The backend (the same device and stream) is unharmed.
  backend.Zero(buf, 64);
  std::vector<float> out(64, 1.f);
  backend.CopyToHost(out.data(), buf, 64 * sizeof(float));
  EXPECT_EQ(out, std::vector<float>(64, 0.f));
  backend.FreeBytes(buf);
}

TEST(NcclGroupDevice, InitWaitingForAMissingPeerTimesOut) {
  SKIP_WITHOUT_GPUS(1);
  CudaBackend backend;
  gloo::rendezvous::HashStore store;
  absl::StatusOr<NcclGroupOptions> options = NcclGroupOptionsFor(backend, 0, 2, milliseconds(2000));
  ASSERT_TRUE(options.ok()) << options.status();
  const Clock::time_point start = Clock::now();
  absl::StatusOr<std::unique_ptr<NcclGroup>> group = NcclGroup::Connect(store, *options);
  const double ms = MsSince(start);
  ASSERT_FALSE(group.ok());
  EXPECT_EQ(group.status().code(), absl::StatusCode::kDeadlineExceeded) << group.status();
  EXPECT_GE(ms, 2000);
  EXPECT_LT(ms, 2000 + 10000) << "ncclCommAbort of the initialising communicator was slow";
}

TEST(NcclGroupDevice, AbortFromAnotherThreadEndsAnInitWaitingForAMissingPeer) {
  SKIP_WITHOUT_GPUS(1);
  CudaBackend backend;
  gloo::rendezvous::HashStore store;
  absl::StatusOr<NcclGroupOptions> options =
      NcclGroupOptionsFor(backend, 0, 2, milliseconds(60000));
  ASSERT_TRUE(options.ok()) << options.status();
  absl::StatusOr<std::unique_ptr<NcclGroup>> group = NcclGroup::Create(*options);
  ASSERT_TRUE(group.ok()) << group.status();
  std::thread aborter([&] {
    std::this_thread::sleep_for(milliseconds(500));
    (*group)->Abort();
  });
  const Clock::time_point start = Clock::now();
  const absl::Status joined = (*group)->Join(store);
  const double ms = MsSince(start);
  aborter.join();
  EXPECT_EQ(joined.code(), absl::StatusCode::kAborted) << joined;
  EXPECT_LT(ms, 500 + 10000);
}

TEST(NcclGroupDevice, ACollectiveThatCannotCompleteTimesOutAndTheGroupIsUnusable) {
  SKIP_WITHOUT_GPUS(1);
  CudaBackend backend;
  gloo::rendezvous::HashStore store;
  absl::StatusOr<std::unique_ptr<NcclGroup>> group =
      OneRankGroup(backend, store, milliseconds(1000));
  ASSERT_TRUE(group.ok()) << group.status();
  float* buf = backend.Alloc(1024);
  absl::Status s;
  double ms = 0;
  {
    StreamBlocker blocker(backend.stream());
    // ncclCommAbort (on the waiting thread, at the timeout) may wait for the stream: release it
    // soon after the deadline; the aborted collective's kernel then exits at once.
    std::thread releaser([&] {
      std::this_thread::sleep_for(milliseconds(1300));
      blocker.Release();
    });
    const Clock::time_point start = Clock::now();
    s = (*group)->AllReduceSum(buf, 1024);
    ms = MsSince(start);
    releaser.join();
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_GE(ms, 1000);
  EXPECT_LT(ms, 1000 + 5000);
  const absl::Status after = (*group)->AllReduceSum(buf, 1024);
  EXPECT_EQ(after.code(), absl::StatusCode::kDeadlineExceeded) << after;
  group->reset();
  backend.Synchronize();
  EXPECT_EQ(backend.device_fault(), "");
  backend.FreeBytes(buf);
}

TEST(NcclGroupDevice, AbortFromAnotherThreadEndsAWaitingCollective) {
  SKIP_WITHOUT_GPUS(1);
  CudaBackend backend;
  gloo::rendezvous::HashStore store;
  absl::StatusOr<std::unique_ptr<NcclGroup>> group =
      OneRankGroup(backend, store, milliseconds(60000));
  ASSERT_TRUE(group.ok()) << group.status();
  float* buf = backend.Alloc(1024);
  absl::Status s;
  double ms = 0;
  {
    StreamBlocker blocker(backend.stream());
    std::thread aborter([&] {
      std::this_thread::sleep_for(milliseconds(300));
      (*group)->Abort();
      // ncclCommAbort (on the waiting thread) may wait for the stream: let it drain soon after.
      std::this_thread::sleep_for(milliseconds(200));
      blocker.Release();
    });
    const Clock::time_point start = Clock::now();
    s = (*group)->AllReduceSum(buf, 1024);
    ms = MsSince(start);
    aborter.join();
  }
  EXPECT_EQ(s.code(), absl::StatusCode::kAborted) << s;
  EXPECT_LT(ms, 300 + 5000);
  group->reset();
  backend.Synchronize();
  EXPECT_EQ(backend.device_fault(), "");
  backend.FreeBytes(buf);
}

// ---- two or more GPUs ------------------------------------------------------------------------

TEST(NcclGroupDevice, TwoRanksSumExactlyAndAgreeBitwise) {
  SKIP_WITHOUT_GPUS(2);
  constexpr int kWorld = 2;
  const size_t n = (1 << 22) + 5;
  gloo::rendezvous::HashStore store;
  std::vector<std::vector<float>> results(kWorld);
  std::vector<absl::Status> statuses(kWorld);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < kWorld; ++rank) {
    threads.emplace_back([&, rank] {
      CudaBackendOptions backend_options;
      backend_options.device = rank;
      CudaBackend backend(backend_options);
      absl::StatusOr<NcclGroupOptions> options =
          NcclGroupOptionsFor(backend, rank, kWorld, milliseconds(60000));
      if (!options.ok()) {
        statuses[rank] = options.status();
        return;
      }
      absl::StatusOr<std::unique_ptr<NcclGroup>> group = NcclGroup::Connect(store, *options);
      if (!group.ok()) {
        statuses[rank] = group.status();
        return;
      }
      const std::vector<float> host = Pattern(n, rank);
      float* buf = backend.Alloc(n);
      backend.CopyToDevice(buf, host.data(), n * sizeof(float));
      statuses[rank] = (*group)->AllReduceSum(buf, n);
      if (statuses[rank].ok()) {
        // Two ranges in one group call: [0, 100) and [200, n) are summed again, [100, 200) not.
        std::vector<NcclGroup::Range> ranges = {{buf, 100}, {buf + 200, n - 200}};
        statuses[rank] = (*group)->AllReduceSumRanges(ranges);
      }
      results[rank].resize(n);
      backend.CopyToHost(results[rank].data(), buf, n * sizeof(float));
      backend.FreeBytes(buf);
    });
  }
  for (std::thread& t : threads) t.join();
  for (int rank = 0; rank < kWorld; ++rank) ASSERT_TRUE(statuses[rank].ok()) << statuses[rank];
  const std::vector<float> a = Pattern(n, 0), b = Pattern(n, 1);
  for (size_t i = 0; i < n; ++i) {
    const float once = a[i] + b[i];
    const float expected = (i >= 100 && i < 200) ? once : 2 * once;
    ASSERT_EQ(results[0][i], expected) << "element " << i;
  }
  EXPECT_EQ(std::memcmp(results[0].data(), results[1].data(), n * sizeof(float)), 0);
}

TEST(NcclGroupDevice, TwoRanksALostPeerTimesTheCollectiveOut) {
  SKIP_WITHOUT_GPUS(2);
  gloo::rendezvous::HashStore store;
  std::atomic<bool> rank0_done{false};
  absl::Status rank0;
  double ms = 0;
  std::vector<std::thread> threads;
  for (int rank = 0; rank < 2; ++rank) {
    threads.emplace_back([&, rank] {
      CudaBackendOptions backend_options;
      backend_options.device = rank;
      CudaBackend backend(backend_options);
      absl::StatusOr<NcclGroupOptions> options =
          NcclGroupOptionsFor(backend, rank, 2, milliseconds(2000));
      ASSERT_TRUE(options.ok()) << options.status();
      absl::StatusOr<std::unique_ptr<NcclGroup>> group = NcclGroup::Connect(store, *options);
      ASSERT_TRUE(group.ok()) << group.status();
      float* buf = backend.Alloc(4096);
      if (rank == 0) {
        const Clock::time_point start = Clock::now();
        rank0 = (*group)->AllReduceSum(buf, 4096);
        ms = MsSince(start);
        rank0_done.store(true);
      } else {
        // Rank 1 never joins the collective (a stalled peer), and stays until rank 0 gave up.
        const Clock::time_point until = Clock::now() + std::chrono::seconds(30);
        while (!rank0_done.load() && Clock::now() < until) {
          std::this_thread::sleep_for(milliseconds(5));
        }
        (*group)->Abort();
      }
      group->reset();
      backend.FreeBytes(buf);
    });
  }
  for (std::thread& t : threads) t.join();
  EXPECT_EQ(rank0.code(), absl::StatusCode::kDeadlineExceeded) << rank0;
  EXPECT_GE(ms, 2000);
  EXPECT_LT(ms, 2000 + 10000);
}

}  // namespace
}  // namespace raptr
