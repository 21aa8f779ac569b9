// The coordinator's decisions as plain classes, tested without a server: placement of waiting
// jobs on free workers, the progress watchdog's deadlines, and rank votes.
#include <cstdint>
#include <optional>
#include <vector>

#include "coordinator/placement.h"
#include "coordinator/progress_watchdog.h"
#include "coordinator/rank_votes.h"
#include "gtest/gtest.h"

namespace raptr {
namespace {

WaitingJob Job(const char* id, int min, int max, int batch, v1::Backend backend = v1::BACKEND_CPU) {
  return WaitingJob{id, backend, min, max, batch};
}

TEST(Placement, TakesTheLargestWorldThatDividesTheBatch) {
  EXPECT_EQ(WorldSize(1, 4, 8, 3), 2);   // 3 free: 3 does not divide 8
  EXPECT_EQ(WorldSize(1, 4, 8, 8), 4);   // capped by max_workers
  EXPECT_EQ(WorldSize(3, 4, 8, 8), 4);
  EXPECT_EQ(WorldSize(3, 3, 8, 8), 0);   // no size in range divides the batch
  EXPECT_EQ(WorldSize(2, 2, 8, 1), 0);   // not enough workers
  const std::vector<Placement> placed =
      PlaceJobs({Job("a", 1, 4, 8)}, {{v1::BACKEND_CPU, {11, 12, 13}}});
  ASSERT_EQ(placed.size(), 1u);
  EXPECT_EQ(placed[0].job_id, "a");
  EXPECT_EQ(placed[0].workers, (std::vector<int64_t>{11, 12}));  // ranks in the given order
}

TEST(Placement, AJobThatCannotStartHoldsBackItsBackendOnly) {
  const std::vector<Placement> placed = PlaceJobs(
      {Job("big", 4, 4, 8), Job("small", 1, 1, 8), Job("gpu", 1, 1, 8, v1::BACKEND_CUDA)},
      {{v1::BACKEND_CPU, {1, 2}}, {v1::BACKEND_CUDA, {7}}});
  ASSERT_EQ(placed.size(), 1u);  // "small" waits behind "big"; "gpu" has its own queue
  EXPECT_EQ(placed[0].job_id, "gpu");
  EXPECT_EQ(placed[0].workers, (std::vector<int64_t>{7}));
}

TEST(Placement, SeveralJobsShareTheFreeWorkersInOrder) {
  const std::vector<Placement> placed =
      PlaceJobs({Job("a", 2, 2, 8), Job("b", 1, 2, 6), Job("c", 1, 1, 1)},
                {{v1::BACKEND_CPU, {1, 2, 3, 4}}});
  ASSERT_EQ(placed.size(), 2u);  // "c" finds nothing left, which blocks no one after it
  EXPECT_EQ(placed[0].workers, (std::vector<int64_t>{1, 2}));
  EXPECT_EQ(placed[1].workers, (std::vector<int64_t>{3, 4}));
  EXPECT_TRUE(PlaceJobs({Job("a", 1, 1, 8)}, {}).empty());
}

WaitingJob BigJob(const char* id, int min, int64_t memory, v1::Backend backend = v1::BACKEND_CPU) {
  WaitingJob job = Job(id, min, min, 8, backend);
  job.min_memory_bytes = memory;
  return job;
}

constexpr int64_t kGiB = int64_t{1} << 30;

TEST(Placement, ReportedMemoryIsTheDevicesForCudaAndTheHostsForCpu) {
  v1::Hello cpu;
  cpu.set_backend(v1::BACKEND_CPU);
  cpu.set_memory_bytes(64 * kGiB);
  EXPECT_EQ(ReportedMemoryBytes(cpu), 64 * kGiB);
  cpu.set_backend(v1::BACKEND_UNSPECIFIED);  // a CPU worker
  EXPECT_EQ(ReportedMemoryBytes(cpu), 64 * kGiB);
  v1::Hello cuda = cpu;
  cuda.set_backend(v1::BACKEND_CUDA);
  EXPECT_EQ(ReportedMemoryBytes(cuda), 0);  // no device named: not judged
  cuda.add_devices()->set_memory_bytes(80 * kGiB);
  cuda.add_devices()->set_memory_bytes(40 * kGiB);
  EXPECT_EQ(ReportedMemoryBytes(cuda), 40 * kGiB);  // the host's 64 GiB do not count
}

// Three free CPU workers of 1, 8 and 2 GiB (sessions 1, 2, 3) and one busy of 16 GiB (4).
WorkerPool MixedPool() {
  WorkerPool pool;
  pool.free[v1::BACKEND_CPU] = {1, 2, 3};
  pool.connected[v1::BACKEND_CPU] = {1, 2, 3, 4};
  pool.memory_bytes = {{1, 1 * kGiB}, {2, 8 * kGiB}, {3, 2 * kGiB}, {4, 16 * kGiB}};
  return pool;
}

TEST(Placement, AJobGoesOnlyToWorkersReportingItsMemory) {
  const PlacementPass pass = Place({BigJob("a", 2, 2 * kGiB), BigJob("b", 1, 0)}, MixedPool());
  ASSERT_EQ(pass.placements.size(), 2u);
  EXPECT_EQ(pass.placements[0].workers, (std::vector<int64_t>{2, 3}));  // 1 GiB is too small
  EXPECT_EQ(pass.placements[1].workers, (std::vector<int64_t>{1}));     // no requirement
  EXPECT_TRUE(pass.wait_reasons.empty());
  // A worker that reported no memory is not judged (older workers).
  WorkerPool unreported = MixedPool();
  unreported.memory_bytes.clear();
  EXPECT_EQ(Place({BigJob("a", 2, 100 * kGiB)}, unreported).placements.size(), 1u);
}

TEST(Placement, FreeWorkersTooSmallHoldTheQueueNamingBothSizes) {
  // Only the busy 16 GiB worker could hold 12 GiB: the job waits for it, first in line.
  const PlacementPass pass =
      Place({BigJob("big", 1, 12 * kGiB), BigJob("small", 1, 0)}, MixedPool());
  EXPECT_TRUE(pass.placements.empty());
  EXPECT_EQ(pass.wait_reasons.at("big"),
            "needs 1 free cpu worker with at least 12.00 GiB (12884901888 bytes) for its "
            "weights, gradients and AdamW moments; 0 of the 3 free report that much, the others "
            "at most 8.00 GiB (8589934592 bytes)");
  EXPECT_EQ(pass.wait_reasons.at("small"),
            "waiting behind big, the first cpu job in priority and submission order");
}

TEST(Placement, AJobNoConnectedWorkerCanHoldWaitsWithoutHoldingTheQueue) {
  const PlacementPass pass =
      Place({BigJob("huge", 2, 10 * kGiB), BigJob("small", 1, 0)}, MixedPool());
  ASSERT_EQ(pass.placements.size(), 1u);  // one oversized submission does not stall the backend
  EXPECT_EQ(pass.placements[0].job_id, "small");
  EXPECT_EQ(pass.wait_reasons.at("huge"),
            "needs 2 cpu workers with at least 10.00 GiB (10737418240 bytes) for its weights, "
            "gradients and AdamW moments; 1 of the 4 connected reports that much, the others at "
            "most 8.00 GiB (8589934592 bytes) (it waits for larger workers without holding back "
            "the jobs behind it)");
  EXPECT_EQ(pass.wait_reasons.count("small"), 0u);
  // CUDA jobs are judged by their workers' device memory, in their own queue.
  WorkerPool gpus;
  gpus.free[v1::BACKEND_CUDA] = {7};
  gpus.connected[v1::BACKEND_CUDA] = {7};
  gpus.memory_bytes = {{7, 512 << 20}};
  EXPECT_EQ(Place({BigJob("g", 1, kGiB, v1::BACKEND_CUDA)}, gpus).wait_reasons.at("g"),
            "needs 1 cuda worker with at least 1.00 GiB (1073741824 bytes) for its weights, "
            "gradients and AdamW moments; 0 of the 1 connected report that much, the others at "
            "most 512.00 MiB (536870912 bytes) (it waits for larger workers without holding back "
            "the jobs behind it)");
}

TEST(Placement, EveryOtherWaitIsExplainedAsTheClusterAlwaysDid) {
  WorkerPool pool;
  pool.free[v1::BACKEND_CPU] = {1};
  pool.connected[v1::BACKEND_CPU] = {1, 2, 3};
  pool.connected[v1::BACKEND_CUDA] = {};
  PlacementPass pass = Place(
      {Job("gpu", 1, 1, 8, v1::BACKEND_CUDA), Job("two", 2, 2, 8), Job("next", 1, 1, 8)}, pool);
  EXPECT_TRUE(pass.placements.empty());
  EXPECT_EQ(pass.wait_reasons.at("gpu"),
            "no cuda workers are connected (it needs 1; 3 cpu workers are)");
  EXPECT_EQ(pass.wait_reasons.at("two"), "needs 2 free cpu workers; 1 of the 3 connected is free");
  EXPECT_EQ(pass.wait_reasons.at("next"),
            "waiting behind two, the first cpu job in priority and submission order");
  pool.free[v1::BACKEND_CPU] = {1, 2, 3};
  pass = Place({Job("odd", 3, 3, 8)}, pool);
  EXPECT_EQ(pass.wait_reasons.at("odd"),
            "no world size in [3, 3] that 3 free cpu workers allow divides its batch of 8");
  EXPECT_EQ(Place({Job("x", 1, 1, 1)}, WorkerPool()).wait_reasons.at("x"),
            "no cpu workers are connected (it needs 1; no workers at all)");
}

ProgressWatchdogOptions Options() {
  ProgressWatchdogOptions options;
  options.floor_seconds = 30;
  options.factor = 10;
  options.startup_seconds = 120;
  options.checkpoint_seconds = 60;
  return options;
}

TEST(ProgressWatchdog, StartupDeadlineUntilTheFirstStep) {
  ProgressWatchdog dog(Options(), 2, /*now=*/1000);
  const std::vector<int> no_eval(2, 0);
  const std::vector<bool> no_checkpoint(2, false);
  EXPECT_FALSE(dog.Check(1119, no_eval, no_checkpoint).has_value());
  std::optional<ProgressWatchdog::Stall> stall = dog.Check(1121, no_eval, no_checkpoint);
  ASSERT_TRUE(stall.has_value());
  EXPECT_DOUBLE_EQ(stall->deadline_seconds, 120);
}

TEST(ProgressWatchdog, DeadlineFollowsTheMedianStepAndBlamesTheSilentRank) {
  ProgressWatchdog dog(Options(), 2, 0);
  for (int step = 0; step < 10; ++step) {
    dog.RankProgressed(0, step * 5.0);
    dog.RankProgressed(1, step * 5.0);
    dog.StepCompleted(step == 9 ? 100.0 : 5.0);  // one outlier does not move the median
  }
  EXPECT_DOUBLE_EQ(dog.MedianStepSeconds(), 5.0);
  dog.RankProgressed(0, 60);  // rank 0 goes on; rank 1 was last heard at 45
  const std::vector<int> no_eval(2, 0);
  const std::vector<bool> no_checkpoint(2, false);
  EXPECT_FALSE(dog.Check(45 + 50, no_eval, no_checkpoint).has_value());  // deadline 10 x 5 s
  std::optional<ProgressWatchdog::Stall> stall = dog.Check(45 + 51, no_eval, no_checkpoint);
  ASSERT_TRUE(stall.has_value());
  EXPECT_EQ(stall->rank, 1);
  EXPECT_DOUBLE_EQ(stall->deadline_seconds, 50);
  EXPECT_NE(stall->Describe().find("rank 1 made no progress"), std::string::npos);
  // An evaluation of 4 batches outstanding on rank 1 adds 4 median steps; a checkpoint 60 s.
  EXPECT_FALSE(dog.Check(45 + 51, {0, 4}, no_checkpoint).has_value());
  EXPECT_FALSE(dog.Check(45 + 100, no_eval, {true, true}).has_value());
  stall = dog.Check(45 + 111, no_eval, {true, true});
  ASSERT_TRUE(stall.has_value());
  EXPECT_EQ(stall->rank, 1);
  EXPECT_DOUBLE_EQ(stall->deadline_seconds, 110);
}

TEST(ProgressWatchdog, FloorForFastSteps) {
  ProgressWatchdog dog(Options(), 1, 0);
  dog.StepCompleted(0.01);
  dog.RankProgressed(0, 0);
  EXPECT_FALSE(dog.Check(30, {0}, {false}).has_value());
  EXPECT_TRUE(dog.Check(31, {0}, {false}).has_value());
}

TEST(RankVotes, CountsDistinctRanks) {
  RankVotes votes(3);
  EXPECT_EQ(votes.Add(0), RankVotes::Result::kCounted);
  EXPECT_EQ(votes.Add(0), RankVotes::Result::kDuplicate);  // cannot stand in for rank 2
  EXPECT_EQ(votes.Add(1), RankVotes::Result::kCounted);
  EXPECT_FALSE(votes.Complete());
  EXPECT_EQ(votes.Add(3), RankVotes::Result::kOutOfRange);
  EXPECT_EQ(votes.Add(-1), RankVotes::Result::kOutOfRange);
  EXPECT_EQ(votes.Add(2), RankVotes::Result::kCounted);
  EXPECT_TRUE(votes.Complete());
  EXPECT_TRUE(votes.Answered(2));
  EXPECT_FALSE(RankVotes().Complete());
}

}  // namespace
}  // namespace raptr
