// Data parallelism over real Gloo TCP collectives (ranks are threads of this process, meeting
// through Gloo's in-memory store): W ranks on slices of the global batch end with the weights of
// one process on the whole batch, within fp32 summation-order tolerance, and the replicas stay
// bitwise identical to each other.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "gloo/rendezvous/hash_store.h"
#include "gtest/gtest.h"
#include "tests/unit/small_run.h"
#include "worker/collective/gloo_group.h"
#include "worker/engine/session.h"

namespace raptr {
namespace {

using testing::FreshDir;
using testing::SmallConfig;

StepInput PlannedStep(const TrainerConfig& cfg, int64_t step) {
  const PathPlan plan = PlanPath(cfg.schedule, cfg.model.num_layers, cfg.seed, step);
  StepInput input;
  input.step = step;
  input.stage = plan.stage;
  input.active = ActiveLayerSet::Of(cfg.model.num_layers, {});
  for (int l = 0; l < cfg.model.num_layers; ++l) {
    input.active.set_active(l, plan.active[l]);
    input.active.set_scale(l, plan.scale[l]);
  }
  input.copies = StackingCopiesAtStep(cfg.schedule, cfg.model.num_layers, step);
  return input;
}

struct RankResult {
  absl::Status status;
  std::vector<float> params;
  uint64_t digest = 0;
  std::vector<double> loss_sums;  // per step: local loss * local targets
  std::vector<int64_t> targets;   // per step
  double eval_loss_sum = 0;
  int64_t eval_targets = 0;
};

RankResult RunRank(const TrainerConfig& cfg, int rank, int world, GradientReducer* reducer) {
  RankResult out;
  absl::StatusOr<std::unique_ptr<TrainingSession>> session =
      TrainingSession::Create(cfg, rank, world);
  if (!session.ok()) {
    out.status = session.status();
    return out;
  }
  for (int64_t step = 0; step < cfg.steps; ++step) {
    absl::StatusOr<StepOutcome> step_out = (*session)->RunStep(PlannedStep(cfg, step), reducer);
    if (!step_out.ok()) {
      out.status = step_out.status();
      return out;
    }
    out.loss_sums.push_back(step_out->local_loss * static_cast<double>(step_out->local_targets));
    out.targets.push_back(step_out->local_targets);
  }
  absl::StatusOr<EvalOutcome> eval =
      (*session)->Evaluate(cfg.eval_batches, ActiveLayerSet::Full(cfg.model.num_layers));
  if (!eval.ok()) {
    out.status = eval.status();
    return out;
  }
  out.eval_loss_sum = eval->loss * static_cast<double>(eval->scored_targets);
  out.eval_targets = eval->scored_targets;
  Model<float>& model = (*session)->model();
  out.params.assign(model.params(), model.params() + model.layout().total());
  out.digest = (*session)->StateDigest();
  return out;
}

// Runs `world` ranks as threads over one Gloo group.
std::vector<RankResult> RunGroup(const TrainerConfig& cfg, int world) {
  gloo::rendezvous::HashStore store;
  std::vector<RankResult> results(world);
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      absl::StatusOr<std::unique_ptr<GlooGroup>> group =
          GlooGroup::Connect(store, rank, world, "127.0.0.1", std::chrono::seconds(30));
      if (!group.ok()) {
        results[rank].status = group.status();
        return;
      }
      results[rank] = RunRank(cfg, rank, world, group->get());
    });
  }
  for (std::thread& t : threads) t.join();
  return results;
}

void ExpectMatchesSingleProcess(const TrainerConfig& cfg, int world) {
  const RankResult single = RunRank(cfg, 0, 1, nullptr);
  ASSERT_TRUE(single.status.ok()) << single.status;
  const std::vector<RankResult> ranks = RunGroup(cfg, world);
  for (int r = 0; r < world; ++r) ASSERT_TRUE(ranks[r].status.ok()) << r << ": " << ranks[r].status;
  // Replicas: bitwise the same parameters and moments.
  for (int r = 1; r < world; ++r) EXPECT_EQ(ranks[r].digest, ranks[0].digest) << "rank " << r;
  // Against one process: the same math up to the order of fp32 sums.
  double max_param = 0, max_diff = 0;
  for (size_t i = 0; i < single.params.size(); ++i) {
    max_param = std::max(max_param, std::fabs(static_cast<double>(single.params[i])));
    max_diff = std::max(max_diff, std::fabs(static_cast<double>(single.params[i]) -
                                            static_cast<double>(ranks[0].params[i])));
  }
  EXPECT_LT(max_diff, 2e-5 * max_param) << "world " << world;
  // The job's loss (targets-weighted over ranks) is the single process's loss.
  for (size_t step = 0; step < single.targets.size(); ++step) {
    double sum = 0;
    int64_t targets = 0;
    for (const RankResult& r : ranks) {
      sum += r.loss_sums[step];
      targets += r.targets[step];
    }
    EXPECT_EQ(targets, single.targets[step]) << "step " << step;
    EXPECT_NEAR(sum / static_cast<double>(targets),
                single.loss_sums[step] / static_cast<double>(single.targets[step]), 2e-5)
        << "step " << step;
  }
  double eval_sum = 0;
  int64_t eval_targets = 0;
  for (const RankResult& r : ranks) {
    eval_sum += r.eval_loss_sum;
    eval_targets += r.eval_targets;
  }
  EXPECT_EQ(eval_targets, single.eval_targets);
  EXPECT_NEAR(eval_sum / static_cast<double>(eval_targets),
              single.eval_loss_sum / static_cast<double>(single.eval_targets), 2e-5);
}

TEST(DataParallel, TwoGptRanksMatchOneProcess) {
  ExpectMatchesSingleProcess(SmallConfig(FreshDir("dp_gpt2"), ModelKind::kGpt), 2);
}

TEST(DataParallel, FourGptRanksWithMicroBatchesMatchOneProcess) {
  TrainerConfig cfg = SmallConfig(FreshDir("dp_gpt4"), ModelKind::kGpt);
  cfg.micro_batches = 2;
  ExpectMatchesSingleProcess(cfg, 4);
}

// BERT's masked-target count differs between ranks' slices; the global normaliser keeps the sum
// of the ranks' gradients equal to the whole batch's.
TEST(DataParallel, TwoBertRanksMatchOneProcess) {
  ExpectMatchesSingleProcess(SmallConfig(FreshDir("dp_bert2"), ModelKind::kBert), 2);
}

TEST(DataParallel, StackingGrowsTheSameOnEveryRank) {
  TrainerConfig cfg = SmallConfig(FreshDir("dp_stacking"), ModelKind::kGpt);
  cfg.schedule = DefaultStackingSchedule(cfg.model.num_layers, cfg.steps);
  ExpectMatchesSingleProcess(cfg, 2);
}

TEST(DataParallel, RejectsABatchThatDoesNotSplit) {
  TrainerConfig cfg = SmallConfig(FreshDir("dp_split"), ModelKind::kGpt);
  absl::StatusOr<std::unique_ptr<TrainingSession>> session = TrainingSession::Create(cfg, 0, 3);
  ASSERT_FALSE(session.ok());
  EXPECT_EQ(session.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(session.status().message().find("does not split over 3"), std::string::npos);
}

TEST(DataParallel, LostPeerFailsTheCollectiveInsteadOfHanging) {
  gloo::rendezvous::HashStore store;
  std::atomic<bool> both_connected{false};
  absl::Status peer_status;
  std::thread peer([&] {
    absl::StatusOr<std::unique_ptr<GlooGroup>> group =
        GlooGroup::Connect(store, 1, 2, "127.0.0.1", std::chrono::seconds(30));
    peer_status = group.status();
    // Stays until rank 0's side of the mesh is up too, then leaves: its group (and sockets) are
    // destroyed when this thread ends.
    while (group.ok() && !both_connected.load()) std::this_thread::yield();
  });
  absl::StatusOr<std::unique_ptr<GlooGroup>> group =
      GlooGroup::Connect(store, 0, 2, "127.0.0.1", std::chrono::seconds(30));
  both_connected.store(true);
  peer.join();
  ASSERT_TRUE(peer_status.ok()) << peer_status;
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<float> data(1024, 1.0f);
  const auto start = std::chrono::steady_clock::now();
  const absl::Status reduced = (*group)->AllReduceSum(data.data(), data.size());
  EXPECT_FALSE(reduced.ok());
  EXPECT_EQ(reduced.code(), absl::StatusCode::kUnavailable);
  EXPECT_LT(std::chrono::steady_clock::now() - start, std::chrono::seconds(20));
}

// A peer that stops without closing its sockets (SIGSTOP, a hang) leaves the others blocked in the
// collective until its timeout; Abort() from another thread (the agent's session thread, told by
// the coordinator that the group is gone) must end that wait at once.
TEST(DataParallel, AbortEndsACollectiveBlockedOnASilentPeer) {
  gloo::rendezvous::HashStore store;
  std::atomic<bool> release_peer{false};
  absl::Status peer_status;
  std::thread peer([&] {
    absl::StatusOr<std::unique_ptr<GlooGroup>> group =
        GlooGroup::Connect(store, 1, 2, "127.0.0.1", std::chrono::seconds(60));
    peer_status = group.status();
    // Connected, then silent: never enters the all-reduce, keeps its sockets open.
    while (!release_peer.load()) std::this_thread::sleep_for(std::chrono::milliseconds(10));
  });
  absl::StatusOr<std::unique_ptr<GlooGroup>> group =
      GlooGroup::Connect(store, 0, 2, "127.0.0.1", std::chrono::seconds(60));
  ASSERT_TRUE(group.ok()) << group.status();
  std::vector<float> data(1 << 16, 1.0f);
  absl::Status reduced;
  std::chrono::steady_clock::time_point returned;
  std::thread reducer([&] {
    reduced = (*group)->AllReduceSum(data.data(), data.size());
    returned = std::chrono::steady_clock::now();
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(300));  // blocked in the collective now
  const auto aborted = std::chrono::steady_clock::now();
  (*group)->Abort();
  reducer.join();
  release_peer.store(true);
  peer.join();
  ASSERT_TRUE(peer_status.ok()) << peer_status;
  EXPECT_EQ(reduced.code(), absl::StatusCode::kAborted) << reduced;
  // The collective's own timeout is 60 s; the abort must not wait for it.
  EXPECT_LT(returned - aborted, std::chrono::seconds(5));
  // Every later collective fails at once too.
  EXPECT_EQ((*group)->AllReduceSum(data.data(), data.size()).code(), absl::StatusCode::kAborted);
}

}  // namespace
}  // namespace raptr
