// Data parallelism over real Gloo TCP collectives (ranks are threads of this process, meeting
// through Gloo's in-memory store): at every step, from the same weights, W ranks on slices of the
// global batch compute the single process's gradient and loss within derived fp32 bounds (see
// docs/TESTING.md), and the replicas stay bitwise identical to each other.
#include <algorithm>
#include <atomic>
#include <chrono>
#include <cmath>
#include <cstddef>
#include <cstdio>
#include <memory>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gloo/rendezvous/hash_store.h"
#include "gtest/gtest.h"
#include "tests/unit/host_view.h"
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

// fp32 unit roundoff: every fp32 operation returns the exact result times (1 + d), |d| <= u.
constexpr double kUnitRoundoff = 0x1p-24;

// gamma_n = n u / (1 - n u): a sum or dot product of n terms in ANY order is within
// gamma_n * sum |terms| of the exact one (Higham, Accuracy and Stability of Numerical
// Algorithms, 2nd ed., eq. 3.5 and Lemma 3.1).
double Gamma(int64_t n) {
  const double nu = static_cast<double>(n) * kUnitRoundoff;
  return nu / (1 - nu);
}

// The longest chain of fp32 roundings from the weights to one per-position loss: each block's
// two LayerNorms (a mean and a variance over C), the qkv, projection and MLP products (inner
// dimensions C, C, C, F), attention (scores over C/heads <= C, softmax sum and weighted sum over
// <= T positions), then ln_f, the tied head (C) and the log-sum-exp over V.
int64_t ForwardChain(const ModelConfig& m, int T) {
  const int64_t C = m.d_model, F = m.d_ff;
  const int64_t per_block = 2 * C + C + (C + 2 * T) + C + 2 * C + C + F;
  return m.num_layers * per_block + 2 * C + C + m.vocab_size;
}

// The same for one gradient entry: back through the same chain (the backward pass mirrors every
// forward reduction), then the sum over every scored position of the step.
int64_t GradientChain(const TrainerConfig& cfg) {
  return 2 * ForwardChain(cfg.model, cfg.seq) +
         static_cast<int64_t>(cfg.micro_batches) * cfg.batch * cfg.seq;
}

// Wraps a group (or nothing: a world of one) and records, at the gradient's offsets, what this
// rank contributed to each all-reduce and what came back.
class RecordingReducer : public GradientReducer {
 public:
  explicit RecordingReducer(GradientReducer* group) : group_(group) {}
  // REQUIRES: before each step; `grads` is the session's gradient buffer of `total` floats.
  void Reset(const float* grads, size_t total) {
    grads_ = grads;
    contribution_.assign(total, 0.0f);
    reduced_.assign(total, 0.0f);
  }
  absl::Status AllReduceSum(float* data, size_t count) override {
    const size_t offset = static_cast<size_t>(data - grads_);
    std::copy(data, data + count, contribution_.begin() + static_cast<std::ptrdiff_t>(offset));
    if (group_ != nullptr) {
      absl::Status status = group_->AllReduceSum(data, count);
      if (!status.ok()) return status;
    }
    std::copy(data, data + count, reduced_.begin() + static_cast<std::ptrdiff_t>(offset));
    return absl::OkStatus();
  }
  const std::vector<float>& contribution() const { return contribution_; }
  const std::vector<float>& reduced() const { return reduced_; }

 private:
  GradientReducer* group_;
  const float* grads_ = nullptr;
  std::vector<float> contribution_, reduced_;
};

// One step on one rank (or on the single process).
struct StepRecord {
  std::vector<float> contribution;  // this rank's gradient before the all-reduce
  std::vector<float> reduced;       // after it: the gradient the optimizer used
  double loss_sum = 0;              // local loss * local targets
  int64_t targets = 0;
};

struct LockstepResult {
  absl::Status status;
  std::vector<std::vector<StepRecord>> ranks;  // [rank][step]
  std::vector<StepRecord> single;              // [step]
  std::vector<uint64_t> digests;               // per rank, after the last step
  std::vector<double> eval_sums;               // per rank, then the single process last
  std::vector<int64_t> eval_targets;
};

// Runs `world` ranks as threads over one Gloo group for cfg.steps steps. Before each step, rank 0
// copies its state (weights, AdamW moments) into a single-process session and runs that step on
// the whole batch first: every step compares the two gradients at the SAME weights, so the
// comparison is of one step's fp32 rounding, not of a trajectory that AdamW amplifies (its update
// is ~ lr * sign(g) where |g| is at rounding level) over many steps.
LockstepResult RunLockstep(const TrainerConfig& cfg, int world) {
  LockstepResult out;
  out.ranks.resize(world);
  out.digests.resize(world);
  out.eval_sums.resize(world + 1);
  out.eval_targets.resize(world + 1);
  std::vector<absl::Status> statuses(world);
  gloo::rendezvous::HashStore store;
  std::vector<std::thread> threads;
  for (int rank = 0; rank < world; ++rank) {
    threads.emplace_back([&, rank] {
      absl::Status& status = statuses[rank];
      absl::StatusOr<std::unique_ptr<GlooGroup>> group =
          GlooGroup::Connect(store, rank, world, "127.0.0.1", std::chrono::seconds(30));
      absl::StatusOr<std::unique_ptr<TrainingSession>> session =
          TrainingSession::Create(cfg, rank, world);
      absl::StatusOr<std::unique_ptr<TrainingSession>> single = TrainingSession::Create(cfg, 0, 1);
      if (!group.ok() || !session.ok() || !single.ok()) {
        status = !group.ok() ? group.status() : !session.ok() ? session.status() : single.status();
        return;
      }
      const size_t total = (*session)->model().layout().total();
      RecordingReducer reducer(group->get());
      RecordingReducer alone(nullptr);
      for (int64_t step = 0; step < cfg.steps; ++step) {
        const StepInput input = PlannedStep(cfg, step);
        if (rank == 0) {
          TrainingSession& s = **single;
          std::copy_n(Host((*session)->model().params()), total, Host(s.model().params()));
          std::copy_n(Host((*session)->optimizer().m()), total, Host(s.optimizer().m()));
          std::copy_n(Host((*session)->optimizer().v()), total, Host(s.optimizer().v()));
          alone.Reset(Host(s.model().grads()), total);
          absl::StatusOr<StepOutcome> r = s.RunStep(input, &alone);
          if (!r.ok()) {
            status = r.status();
            return;
          }
          out.single.push_back({alone.contribution(), alone.reduced(),
                                r->local_loss * static_cast<double>(r->local_targets),
                                r->local_targets});
        }
        reducer.Reset(Host((*session)->model().grads()), total);
        absl::StatusOr<StepOutcome> r = (*session)->RunStep(input, &reducer);
        if (!r.ok()) {
          status = r.status();
          return;
        }
        out.ranks[rank].push_back({reducer.contribution(), reducer.reduced(),
                                   r->local_loss * static_cast<double>(r->local_targets),
                                   r->local_targets});
      }
      out.digests[rank] = *(*session)->StateDigest();
      const ActiveLayerSet full = ActiveLayerSet::Full(cfg.model.num_layers);
      std::vector<std::pair<TrainingSession*, int>> evals = {{session->get(), rank}};
      if (rank == 0) {
        TrainingSession& s = **single;
        std::copy_n(Host((*session)->model().params()), total, Host(s.model().params()));
        evals.push_back({single->get(), world});
      }
      for (auto [s, slot] : evals) {
        absl::StatusOr<EvalOutcome> eval = s->Evaluate(cfg.eval_batches, full);
        if (!eval.ok()) {
          status = eval.status();
          return;
        }
        out.eval_sums[slot] = eval->loss * static_cast<double>(eval->scored_targets);
        out.eval_targets[slot] = eval->scored_targets;
      }
    });
  }
  for (std::thread& t : threads) t.join();
  for (int r = 0; r < world; ++r) {
    if (!statuses[r].ok())
      out.status = absl::InternalError(absl::StrCat("rank ", r, ": ", statuses[r].message()));
  }
  return out;
}

// For every tensor: the largest |gradient - reference| and the bound it must stay under.
struct TensorCheck {
  std::string name;
  double max_diff = 0;
  double bound = 0;
};

// A data-parallel gradient against the single process's, tensor by tensor. Both are the same
// real sum over the step's positions of per-position terms, rounded differently: the single
// process reduces all positions in one GEMM/kernel pass, the group per rank and then over ranks,
// and the per-position terms themselves may round differently (BLAS kernels chosen by the row
// count, e.g. OpenBLAS's small-matrix path on AVX-512). Worst-case first-order analysis bounds
// each of the two results within gamma_D * (sum of the magnitudes involved) of the exact value,
// D = GradientChain(cfg), hence |a - b| <= 2 gamma_D * S. We take S per tensor as
// max_i sum_r |contribution_r[i]| (sum over ranks of the pre-reduce magnitudes): the scale of the
// quantities summed. Elementwise bounds would be wrong where a gradient entry cancels to ~0.
std::vector<TensorCheck> CheckAgainstSingle(const ParamLayout& layout, const TrainerConfig& cfg,
                                            const std::vector<const StepRecord*>& ranks,
                                            const std::vector<float>& gradient,
                                            const std::vector<float>& reference) {
  const double factor = 2 * Gamma(GradientChain(cfg));
  std::vector<TensorCheck> checks;
  for (const ParamTensor& t : layout.tensors()) {
    TensorCheck c{t.name, 0, 0};
    double scale = 0;
    for (size_t i = t.offset; i < t.offset + t.numel; ++i) {
      double magnitude = 0;
      for (const StepRecord* r : ranks) magnitude += std::fabs(r->contribution[i]);
      scale = std::max(scale, magnitude);
      c.max_diff = std::max(c.max_diff, std::fabs(static_cast<double>(gradient[i]) -
                                                  static_cast<double>(reference[i])));
    }
    c.bound = factor * scale;
    checks.push_back(c);
  }
  return checks;
}

bool AnyExceeds(const std::vector<TensorCheck>& checks) {
  return std::any_of(checks.begin(), checks.end(),
                     [](const TensorCheck& c) { return c.max_diff > c.bound; });
}

// A job loss (double sum of fp32 per-position losses, divided by the target count) against the
// single process's at the same weights. A per-position loss lse(z) - z_y moves by at most twice
// the largest error of its logits, and a logit is within gamma_F * (its scale) of exact, F =
// ForwardChain; the logits' scale here is O(1) (weights initialised with std 0.02, a few units
// after these short runs), so max(1, loss) stands for it. The double sum adds < n 2^-53, nothing.
double LossBound(const TrainerConfig& cfg, double loss) {
  return 2 * 2 * Gamma(ForwardChain(cfg.model, cfg.seq)) * std::max(1.0, loss);
}

void ExpectMatchesSingleProcess(const TrainerConfig& cfg, int world) {
  const LockstepResult run = RunLockstep(cfg, world);
  ASSERT_TRUE(run.status.ok()) << run.status;
  // Replicas: bitwise the same parameters and moments (the design's promise: every rank applies
  // the same update to the same state).
  for (int r = 1; r < world; ++r) EXPECT_EQ(run.digests[r], run.digests[0]) << "rank " << r;
  absl::StatusOr<std::unique_ptr<TrainingSession>> probe = TrainingSession::Create(cfg, 0, 1);
  ASSERT_TRUE(probe.ok()) << probe.status();
  const ParamLayout& layout = (*probe)->model().layout();
  // Measured / bound, printed so the margins show in the test log.
  double worst_ratio = 0, worst_loss_ratio = 0, worst_reduce_ratio = 0;
  for (int64_t step = 0; step < cfg.steps; ++step) {
    std::vector<const StepRecord*> ranks;
    for (int r = 0; r < world; ++r) ranks.push_back(&run.ranks[r][step]);
    const std::vector<float>& gradient = ranks[0]->reduced;
    // Every rank ends the all-reduce with the same bits.
    for (int r = 1; r < world; ++r) {
      ASSERT_TRUE(ranks[r]->reduced == gradient) << "rank " << r << " step " << step;
    }
    // The all-reduce itself: W fp32 addends in whatever order the ring uses are within
    // gamma_{W-1} * sum_r |c_r| of their exact (double) sum (Higham Lemma 3.1); elementwise,
    // rigorous. (The double reference sum itself is off by < W 2^-53 sum |c_r|: added.)
    const double reduce_factor = Gamma(world - 1) + world * 0x1p-53;
    size_t reduce_violations = 0;
    for (size_t i = 0; i < gradient.size(); ++i) {
      double exact = 0, magnitude = 0;
      for (const StepRecord* r : ranks) {
        exact += r->contribution[i];
        magnitude += std::fabs(r->contribution[i]);
      }
      const double diff = std::fabs(static_cast<double>(gradient[i]) - exact);
      reduce_violations += diff > reduce_factor * magnitude ? 1 : 0;
      if (magnitude > 0) {
        worst_reduce_ratio = std::max(worst_reduce_ratio, diff / (reduce_factor * magnitude));
      }
    }
    EXPECT_EQ(reduce_violations, 0u) << "step " << step << ": all-reduce outside gamma_{W-1}";
    // Against the single process at the same weights.
    const std::vector<float>& reference = run.single[step].reduced;
    for (const TensorCheck& c : CheckAgainstSingle(layout, cfg, ranks, gradient, reference)) {
      EXPECT_LE(c.max_diff, c.bound) << "step " << step << " " << c.name;
      if (c.bound > 0) worst_ratio = std::max(worst_ratio, c.max_diff / c.bound);
    }
    // The bound still catches a wrong gradient: one rank's share dropped, or the whole gradient
    // off by 1% (a wrong normaliser).
    if (step == 0) {
      std::vector<float> dropped = gradient, scaled = gradient;
      for (size_t i = 0; i < gradient.size(); ++i) {
        dropped[i] -= ranks[world - 1]->contribution[i];
        scaled[i] *= 1.01f;
      }
      EXPECT_TRUE(AnyExceeds(CheckAgainstSingle(layout, cfg, ranks, dropped, reference)))
          << "a gradient missing rank " << world - 1 << "'s share passes the bound";
      EXPECT_TRUE(AnyExceeds(CheckAgainstSingle(layout, cfg, ranks, scaled, reference)))
          << "a gradient scaled by 1.01 passes the bound";
    }
    // The job's loss (targets-weighted over ranks) is the single process's loss.
    double sum = 0;
    int64_t targets = 0;
    for (const StepRecord* r : ranks) {
      sum += r->loss_sum;
      targets += r->targets;
    }
    ASSERT_EQ(targets, run.single[step].targets) << "step " << step;
    const double single_loss = run.single[step].loss_sum / static_cast<double>(targets);
    const double loss_diff = std::fabs(sum / static_cast<double>(targets) - single_loss);
    EXPECT_LE(loss_diff, LossBound(cfg, single_loss)) << "step " << step;
    worst_loss_ratio = std::max(worst_loss_ratio, loss_diff / LossBound(cfg, single_loss));
  }
  double eval_sum = 0;
  int64_t eval_targets = 0;
  for (int r = 0; r < world; ++r) {
    eval_sum += run.eval_sums[r];
    eval_targets += run.eval_targets[r];
  }
  ASSERT_EQ(eval_targets, run.eval_targets[world]);
  const double single_eval = run.eval_sums[world] / static_cast<double>(eval_targets);
  EXPECT_LE(std::fabs(eval_sum / static_cast<double>(eval_targets) - single_eval),
            LossBound(cfg, single_eval));
  std::printf(
      "world %d: all-reduce error / bound <= %.3g, gradient |a-b| / bound <= %.3g, "
      "loss |a-b| / bound <= %.3g (bound factors: gradient %.3g x scale, loss %.3g x "
      "max(1, loss))\n",
      world, worst_reduce_ratio, worst_ratio, worst_loss_ratio, 2 * Gamma(GradientChain(cfg)),
      2 * 2 * Gamma(ForwardChain(cfg.model, cfg.seq)));
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

// A rank whose connection does not come from the address it published is refused before any
// collective: rank 1 publishes 127.0.0.2 (Linux routes all of 127/8 to lo) but its outgoing
// connections leave from 127.0.0.1, as a third party's would.
TEST(DataParallel, APeerConnectingFromAnotherAddressIsRefused) {
  gloo::rendezvous::HashStore store;
  // Each rank's group lives until both have returned: a rank that passed its own check and
  // closed its sockets at once would fail the other's mesh before that one's check ran.
  absl::StatusOr<std::unique_ptr<GlooGroup>> groups[2] = {absl::UnknownError("not run"),
                                                          absl::UnknownError("not run")};
  std::thread peer([&] {
    groups[1] = GlooGroup::Connect(store, 1, 2, "127.0.0.2", std::chrono::seconds(10));
  });
  groups[0] = GlooGroup::Connect(store, 0, 2, "127.0.0.1", std::chrono::seconds(10));
  peer.join();
  const absl::Status statuses[2] = {groups[0].status(), groups[1].status()};
  int refused = 0;
  for (const absl::Status& status : statuses) {
    if (status.code() == absl::StatusCode::kPermissionDenied) {
      ++refused;
      EXPECT_NE(status.message().find("comes from 127.0.0.1, not from 127.0.0.2 (127.0.0.2)"),
                std::string_view::npos)
          << status;
    }
  }
  EXPECT_GE(refused, 1) << statuses[0] << " / " << statuses[1];
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
