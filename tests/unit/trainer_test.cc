// Trainer and optimizer behaviour: determinism, bitwise resume, gradient accumulation, and what
// AdamW does to skipped blocks under `zero_grad` and `frozen`.
#include "worker/engine/trainer.h"

#include <cstring>
#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "common/random.h"
#include "gtest/gtest.h"
#include "tests/unit/host_view.h"
#include "tests/unit/small_run.h"
#include "worker/engine/checkpoint/checkpoint.h"
#include "worker/engine/cpu/cpu_backend.h"
#include "worker/engine/data/data_loader.h"
#include "worker/engine/data/shard.h"
#include "worker/engine/model.h"
#include "worker/engine/optimizer.h"

namespace raptr {
namespace {

namespace fs = std::filesystem;

using testing::FreshDir;
using testing::SmallConfig;
using testing::SyntheticTokens;

struct TrainRun {
  std::vector<double> losses;
  TrainResult result;
};

TrainRun TrainOnce(const TrainerConfig& cfg) {
  TrainRun run;
  absl::Status s = Train(
      cfg, [&](const StepReport& r) { run.losses.push_back(r.loss); }, &run.result, true);
  EXPECT_TRUE(s.ok()) << s;
  return run;
}

TEST(Trainer, SameSeedGivesBitwiseSameRun) {
  const std::string dir = FreshDir("determinism");
  const TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  const TrainRun a = TrainOnce(cfg);
  const TrainRun b = TrainOnce(cfg);
  ASSERT_EQ(a.losses.size(), 8u);
  EXPECT_EQ(a.losses, b.losses);
  EXPECT_TRUE(a.result.final_params == b.result.final_params);
  EXPECT_LT(a.result.final_eval_loss, std::log(64.0));  // learned something
  // RaPTr's first stages skip blocks, so it spends less than full training.
  EXPECT_LT(a.result.total_flops, a.result.total_flops_full);
}

TEST(Trainer, ResumeIsBitwiseIdentical) {
  for (ModelKind kind : {ModelKind::kGpt, ModelKind::kBert}) {
    const std::string name = ModelKindName(kind);
    const std::string dir = FreshDir("resume_" + name);
    TrainerConfig cfg = SmallConfig(dir, kind);
    // BERT also exercises `frozen`, whose per-block update counts must survive the checkpoint.
    if (kind == ModelKind::kBert) cfg.optimizer.skipped = SkippedLayerPolicy::kFrozen;
    const TrainRun straight = TrainOnce(cfg);

    cfg.run_dir = dir + "/run";
    cfg.stop_after = 2;  // steps 0..2, checkpoint at step 3, stop
    const TrainRun first = TrainOnce(cfg);
    EXPECT_EQ(first.result.steps_done, 3);
    cfg.stop_after = -1;
    const TrainRun second = TrainOnce(cfg);  // resumes at step 3
    EXPECT_EQ(second.result.steps_done, 8);
    std::vector<double> joined = first.losses;
    joined.insert(joined.end(), second.losses.begin(), second.losses.end());
    EXPECT_EQ(joined, straight.losses) << name;
    EXPECT_TRUE(second.result.final_params == straight.result.final_params) << name;
    EXPECT_EQ(second.result.total_flops, straight.result.total_flops) << name;
  }
}

TEST(Trainer, RefusesCheckpointOfAnotherSeed) {
  const std::string dir = FreshDir("seed_mismatch");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  cfg.run_dir = dir + "/run";
  cfg.stop_after = 1;
  TrainOnce(cfg);
  cfg.seed = 12;
  TrainResult result;
  const absl::Status s = Train(cfg, nullptr, &result);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
}

TEST(Trainer, RejectsDataOutsideVocabulary) {
  const std::string dir = FreshDir("bad_vocab");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  cfg.model.vocab_size = 32;  // the shards hold ids up to 63
  TrainResult result;
  const absl::Status s = Train(cfg, nullptr, &result);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument) << s;
  EXPECT_NE(s.message().find("vocab_size"), std::string::npos) << s;
}

// The gradient of a (4,8) batch in one pass equals the sum of its two (2,8) halves, each
// normalised by the whole step's scored positions.
void ExpectHalvesEqualWholeBatch(const ModelConfig& cfg, const std::vector<int32_t>& in,
                                 const std::vector<int32_t>& tg, const ActiveLayerSet& active) {
  CpuBackend<float> backend;
  Model<float> model(cfg, &backend);
  model.InitWeights(3);
  float scored = 0;
  for (int32_t t : tg) scored += t >= 0 ? 1.0f : 0.0f;
  ASSERT_TRUE(model.Forward(in.data(), tg.data(), 4, 8, active, true).ok());
  ASSERT_TRUE(model.Backward(1.0f / scored).ok());
  const std::vector<float> whole(Host(model.grads()), Host(model.grads()) + model.layout().total());
  model.ZeroGrads();
  std::vector<float> first_half;
  for (int half = 0; half < 2; ++half) {
    ASSERT_TRUE(
        model.Forward(in.data() + half * 16, tg.data() + half * 16, 2, 8, active, true).ok());
    ASSERT_TRUE(model.Backward(1.0f / scored).ok());
    if (half == 0)
      first_half.assign(Host(model.grads()), Host(model.grads()) + model.layout().total());
  }
  // Derived bound (docs/TESTING.md): both are fp32 results of the same real sum over the 32
  // positions, rounded differently (other GEMM row counts, other summation grouping). Worst-case
  // first-order analysis puts each within gamma_D * S of exact, D = the longest rounding chain
  // (forward and back through every block, then the sum over positions), S = the magnitude of
  // what is summed, here max_i |half 1| + |half 2|; so |whole - halves| <= 2 gamma_D S.
  const int64_t C = cfg.d_model, F = cfg.d_ff, T = 8;
  const int64_t forward =
      cfg.num_layers * (2 * C + C + (C + 2 * T) + C + 2 * C + C + F) + 3 * C + cfg.vocab_size;
  const double d_u = static_cast<double>(2 * forward + 32) * 0x1p-24;
  const double bound_factor = 2 * d_u / (1 - d_u);
  double max_scale = 0, max_err = 0, max_abs = 0;
  for (size_t i = 0; i < whole.size(); ++i) {
    const double h1 = first_half[i], halves = Host(model.grads())[i];
    max_scale = std::max(max_scale, std::abs(h1) + std::abs(halves - h1));
    max_abs = std::max(max_abs, std::abs(static_cast<double>(whole[i])));
    max_err = std::max(max_err, std::abs(static_cast<double>(whole[i]) - halves));
  }
  EXPECT_LE(max_err, bound_factor * max_scale);
  // And it can fail: half 2's share missing, or everything off by 1%, exceeds it.
  EXPECT_GT(max_abs * 0.01, bound_factor * max_scale);
  double missing = 0;
  for (size_t i = 0; i < whole.size(); ++i) {
    missing = std::max(missing, std::abs(static_cast<double>(whole[i]) - first_half[i]));
  }
  EXPECT_GT(missing, bound_factor * max_scale);
}

ModelConfig AccumulationConfig(ModelKind kind) {
  ModelConfig cfg;
  cfg.kind = kind;
  cfg.num_layers = 3;
  cfg.d_model = 16;
  cfg.num_heads = 2;
  cfg.d_ff = 32;
  cfg.vocab_size = 40;
  cfg.max_seq = 8;
  return cfg;
}

TEST(GradientAccumulation, TwoHalvesEqualOneBatch) {
  CounterRng rng(9, 0);
  std::vector<int32_t> in(4 * 8), tg(4 * 8);
  for (size_t i = 0; i < in.size(); ++i) {
    in[i] = static_cast<int32_t>(rng.Below(40));
    tg[i] = static_cast<int32_t>(rng.Below(40));
  }
  ExpectHalvesEqualWholeBatch(AccumulationConfig(ModelKind::kGpt), in, tg,
                              ActiveLayerSet::Of(3, {0, 2}));
}

TEST(GradientAccumulation, BertSplitInvariantDespiteUnevenMaskCounts) {
  // Halves with different numbers of scored positions (4 and 16): a mean of per-half means
  // would weight the first half's positions four times as much.
  CounterRng rng(10, 0);
  std::vector<int32_t> in(4 * 8), tg(4 * 8, -1);
  for (size_t i = 0; i < in.size(); ++i) in[i] = static_cast<int32_t>(rng.Below(40));
  for (size_t i = 0; i < 16; i += 4) tg[i] = 7;
  for (size_t i = 16; i < 32; ++i) tg[i] = static_cast<int32_t>(9 + i % 3);
  ExpectHalvesEqualWholeBatch(AccumulationConfig(ModelKind::kBert), in, tg,
                              ActiveLayerSet::Full(3));
}

TEST(ModelState, BackwardNeedsAPendingTrainingForward) {
  ModelConfig cfg;
  cfg.num_layers = 2;
  cfg.d_model = 8;
  cfg.num_heads = 2;
  cfg.d_ff = 16;
  cfg.vocab_size = 20;
  cfg.max_seq = 4;
  CpuBackend<float> backend;
  Model<float> model(cfg, &backend);
  model.InitWeights(1);
  std::vector<int32_t> in = {1, 2, 3, 4}, tg = {2, 3, 4, 5};
  const ActiveLayerSet full = ActiveLayerSet::Full(2);
  EXPECT_EQ(model.Backward(1.0f).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(model.Forward(in.data(), tg.data(), 1, 4, full, true).ok());
  // An evaluation in between clobbers the saved activations: Backward must refuse, not no-op.
  ASSERT_TRUE(model.Forward(in.data(), tg.data(), 1, 4, full, false).ok());
  EXPECT_EQ(model.Backward(1.0f).code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(model.Forward(in.data(), tg.data(), 1, 4, full, true).ok());
  in[0] = 99;  // a failed Forward also cancels the pending one
  EXPECT_FALSE(model.Forward(in.data(), tg.data(), 1, 4, full, true).ok());
  EXPECT_EQ(model.Backward(1.0f).code(), absl::StatusCode::kFailedPrecondition);
}

TEST(Trainer, RefusesToResumeWithOtherSettings) {
  const std::string dir = FreshDir("settings_mismatch");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  cfg.run_dir = dir + "/run";
  cfg.stop_after = 1;
  TrainOnce(cfg);
  cfg.stop_after = -1;
  cfg.optimizer.lr *= 2;
  TrainResult result;
  const absl::Status s = Train(cfg, nullptr, &result);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("optimizer.lr"), std::string::npos) << s;
}

TEST(Trainer, RefusesToOverwriteARunWithoutResume) {
  const std::string dir = FreshDir("no_overwrite");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  cfg.run_dir = dir + "/run";
  cfg.stop_after = 1;
  TrainOnce(cfg);
  cfg.resume = false;
  TrainResult result;
  const absl::Status s = Train(cfg, nullptr, &result);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
}

TEST(Trainer, RejectsWarmupNotShorterThanTheRun) {
  const std::string dir = FreshDir("warmup");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  cfg.optimizer.warmup_steps = cfg.steps;
  TrainResult result;
  EXPECT_EQ(Train(cfg, nullptr, &result).code(), absl::StatusCode::kInvalidArgument);
}

// AdamW on a model whose block 1 was skipped this step.
struct OptimizerFixture {
  ModelConfig cfg;
  std::unique_ptr<CpuBackend<float>> backend = std::make_unique<CpuBackend<float>>();
  std::unique_ptr<Model<float>> model;
  std::unique_ptr<AdamWOptimizer<float>> opt;
  std::vector<float> params0, m0, v0;

  explicit OptimizerFixture(SkippedLayerPolicy policy) {
    cfg.num_layers = 3;
    cfg.d_model = 8;
    cfg.num_heads = 2;
    cfg.d_ff = 16;
    cfg.vocab_size = 20;
    cfg.max_seq = 4;
    model = std::make_unique<Model<float>>(cfg, backend.get());
    model->InitWeights(1);
    OptimizerConfig o;
    o.skipped = policy;
    o.lr = 1e-2;
    opt = std::make_unique<AdamWOptimizer<float>>(o, model->layout(), backend.get());
    const size_t n = model->layout().total();
    CounterRng rng(5, 0);
    for (size_t i = 0; i < n; ++i) {
      Host(opt->m())[i] = static_cast<float>(0.01 * rng.Normal());
      Host(opt->v())[i] = static_cast<float>(1e-4 * rng.Uniform());
    }
    std::vector<int32_t> in = {1, 2, 3, 4, 5, 6, 7, 8}, tg = {2, 3, 4, 5, 6, 7, 8, 9};
    const ActiveLayerSet active = ActiveLayerSet::Of(3, {0, 2});
    EXPECT_TRUE(model->Forward(in.data(), tg.data(), 2, 4, active, true).ok());
    EXPECT_TRUE(model->Backward(1.0f / 8).ok());
    params0.assign(Host(model->params()), Host(model->params()) + n);
    m0.assign(Host(opt->m()), Host(opt->m()) + n);
    v0.assign(Host(opt->v()), Host(opt->v()) + n);
  }
  ParamRange Skipped() const { return model->layout().LayerRange(1); }
};

TEST(OptimizerSkippedLayers, SkippedBlockHasZeroGradient) {
  OptimizerFixture f(SkippedLayerPolicy::kFrozen);
  const ParamRange r = f.Skipped();
  for (size_t i = r.begin; i < r.end; ++i) ASSERT_EQ(Host(f.model->grads())[i], 0.0f);
  // ...and an active block does have one.
  const ParamRange a = f.model->layout().LayerRange(0);
  double norm = 0;
  for (size_t i = a.begin; i < a.end; ++i) norm += std::abs(Host(f.model->grads())[i]);
  EXPECT_GT(norm, 0);
}

TEST(OptimizerSkippedLayers, FrozenLeavesWeightsAndMomentsUntouched) {
  OptimizerFixture f(SkippedLayerPolicy::kFrozen);
  f.opt->Step(f.model->params(), f.model->grads(), ActiveLayerSet::Of(3, {0, 2}), 0);
  const ParamRange r = f.Skipped();
  for (size_t i = r.begin; i < r.end; ++i) {
    ASSERT_EQ(Host(f.model->params())[i], f.params0[i]);
    ASSERT_EQ(Host(f.opt->m())[i], f.m0[i]);
    ASSERT_EQ(Host(f.opt->v())[i], f.v0[i]);
  }
  const ParamRange a = f.model->layout().LayerRange(0);
  EXPECT_NE(Host(f.model->params())[a.begin + 20], f.params0[a.begin + 20]);
}

TEST(OptimizerSkippedLayers, ZeroGradDecaysMomentsAndAppliesWeightDecay) {
  OptimizerFixture f(SkippedLayerPolicy::kZeroGrad);
  f.opt->Step(f.model->params(), f.model->grads(), ActiveLayerSet::Of(3, {0, 2}), 0);
  const ParamRange r = f.Skipped();
  for (size_t i = r.begin; i < r.end; ++i) {
    ASSERT_FLOAT_EQ(Host(f.opt->m())[i], 0.9f * f.m0[i]);
    ASSERT_FLOAT_EQ(Host(f.opt->v())[i], 0.95f * f.v0[i]);
  }
  // A decayed matrix of the skipped block moved (moment update + weight decay).
  const size_t w = f.model->layout().block(1, kFcW);
  EXPECT_NE(Host(f.model->params())[w], f.params0[w]);
}

// zero_grad_no_decay: the skipped block's step is zero_grad's without the decay term; the
// active blocks' steps are zero_grad's exactly.
TEST(OptimizerSkippedLayers, ZeroGradNoDecaySkipsOnlyTheDecay) {
  OptimizerFixture z(SkippedLayerPolicy::kZeroGrad);
  OptimizerFixture n(SkippedLayerPolicy::kZeroGradNoDecay);
  const ActiveLayerSet skip1 = ActiveLayerSet::Of(3, {0, 2});
  z.opt->Step(z.model->params(), z.model->grads(), skip1, 0);
  n.opt->Step(n.model->params(), n.model->grads(), skip1, 0);
  const size_t total = z.model->layout().total();
  const ParamRange r = z.Skipped();
  const size_t w = z.model->layout().block(1, kFcW);  // a decayed matrix of the skipped block
  for (size_t i = 0; i < total; ++i) {
    ASSERT_EQ(Host(n.opt->m())[i], Host(z.opt->m())[i]) << i;
    ASSERT_EQ(Host(n.opt->v())[i], Host(z.opt->v())[i]) << i;
    if (i < r.begin || i >= r.end) {
      ASSERT_EQ(Host(n.model->params())[i], Host(z.model->params())[i]) << i;
    }
  }
  // Both moved it by the moments; only zero_grad also decayed it: p_z = p_n - lr * wd * p0.
  const float lr = 1e-2f, wd = 0.1f;
  EXPECT_NE(Host(n.model->params())[w], n.params0[w]);
  EXPECT_NEAR(Host(z.model->params())[w], Host(n.model->params())[w] - lr * wd * z.params0[w],
              1e-7f * std::abs(z.params0[w]) + 1e-9f);
}

// moments_only: the skipped block's moments decay as under zero_grad, its parameters stay.
TEST(OptimizerSkippedLayers, MomentsOnlyDecaysTheMomentsAndMovesNothing) {
  OptimizerFixture f(SkippedLayerPolicy::kMomentsOnly);
  f.opt->Step(f.model->params(), f.model->grads(), ActiveLayerSet::Of(3, {0, 2}), 0);
  const ParamRange r = f.Skipped();
  for (size_t i = r.begin; i < r.end; ++i) {
    ASSERT_EQ(Host(f.model->params())[i], f.params0[i]) << i;
    ASSERT_FLOAT_EQ(Host(f.opt->m())[i], 0.9f * f.m0[i]);
    ASSERT_FLOAT_EQ(Host(f.opt->v())[i], 0.95f * f.v0[i]);
  }
  // Bit for bit (memcmp: -0 stays -0), and every other parameter and moment as zero_grad's.
  EXPECT_EQ(0, std::memcmp(Host(f.model->params()) + r.begin, f.params0.data() + r.begin,
                           r.size() * sizeof(float)));
  OptimizerFixture z(SkippedLayerPolicy::kZeroGrad);
  z.opt->Step(z.model->params(), z.model->grads(), ActiveLayerSet::Of(3, {0, 2}), 0);
  const size_t n = f.model->layout().total();
  EXPECT_EQ(0, std::memcmp(Host(f.opt->m()), Host(z.opt->m()), n * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(Host(f.opt->v()), Host(z.opt->v()), n * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(Host(f.model->params()), Host(z.model->params()),
                           r.begin * sizeof(float)));
  EXPECT_EQ(0, std::memcmp(Host(f.model->params()) + r.end, Host(z.model->params()) + r.end,
                           (n - r.end) * sizeof(float)));
  EXPECT_EQ(f.opt->layer_steps(), (std::vector<int64_t>{1, 1, 1}));  // counted as zero_grad
}

TEST(OptimizerSkippedLayers, FrozenBlocksCountTheirOwnUpdates) {
  // Bias correction follows each block's own update count (PyTorch's per-parameter step): a
  // block first trained at global step 4 gets a first-step-sized update, not a shrunken one.
  OptimizerFixture f(SkippedLayerPolicy::kFrozen);
  const ActiveLayerSet skip1 = ActiveLayerSet::Of(3, {0, 2});
  for (int64_t step = 0; step < 3; ++step) {
    f.opt->Step(f.model->params(), f.model->grads(), skip1, step);
  }
  f.opt->Step(f.model->params(), f.model->grads(), ActiveLayerSet::Full(3), 3);
  EXPECT_EQ(f.opt->shared_steps(), 4);
  EXPECT_EQ(f.opt->layer_steps(), (std::vector<int64_t>{4, 1, 4}));
  OptimizerFixture z(SkippedLayerPolicy::kZeroGrad);
  for (int64_t step = 0; step < 3; ++step) {
    z.opt->Step(z.model->params(), z.model->grads(), skip1, step);
  }
  EXPECT_EQ(z.opt->layer_steps(), (std::vector<int64_t>{3, 3, 3}));
}

TEST(OptimizerSkippedLayers, StepLeavesGradientsZero) {
  OptimizerFixture f(SkippedLayerPolicy::kZeroGrad);
  f.opt->Step(f.model->params(), f.model->grads(), ActiveLayerSet::Of(3, {0, 2}), 0);
  for (size_t i = 0; i < f.model->layout().total(); ++i) ASSERT_EQ(Host(f.model->grads())[i], 0.0f);
}

TEST(LearningRate, WarmupThenCosineToMin) {
  OptimizerConfig c;
  c.lr = 1.0;
  c.min_lr_ratio = 0.1;
  c.warmup_steps = 10;
  c.total_steps = 110;
  EXPECT_DOUBLE_EQ(LearningRate(c, 0), 0.1);
  EXPECT_DOUBLE_EQ(LearningRate(c, 9), 1.0);
  EXPECT_DOUBLE_EQ(LearningRate(c, 10), 1.0);
  EXPECT_NEAR(LearningRate(c, 60), 0.55, 1e-12);
  EXPECT_NEAR(LearningRate(c, 110), 0.1, 1e-12);
  c.decay = LrDecay::kLinear;
  EXPECT_NEAR(LearningRate(c, 60), 0.55, 1e-12);
  EXPECT_NEAR(LearningRate(c, 35), 1.0 - 0.9 * 0.25, 1e-12);
}

// ---------------------------------------------------------------------------------------------
// The baseline schedules in the trainer: stacking's growth at stage transitions, resume across
// it, and PLD / LayerDrop runs.

// SmallConfig (4 blocks, 8 steps) with gradual stacking 2 -> 4 blocks, growing at step 3.
TrainerConfig StackingConfig(const std::string& dir) {
  TrainerConfig c = SmallConfig(dir, ModelKind::kGpt);
  c.schedule = PathScheduleConfig{};
  c.schedule.kind = PathScheduleConfig::Kind::kStacking;
  c.schedule.stages = {{2, 3}, {4, 5}};
  return c;
}

std::vector<float> Slice(const float* data, ParamRange r) {
  return std::vector<float>(data + r.begin, data + r.end);
}

TEST(TrainerStacking, ApplyStackingCopiesCopiesWeightsAndStartsFreshMoments) {
  OptimizerFixture f(SkippedLayerPolicy::kZeroGrad);
  for (int64_t step = 0; step < 3; ++step) {
    f.opt->Step(f.model->params(), f.model->grads(), ActiveLayerSet::Full(3), step);
  }
  const ParamLayout& layout = f.model->layout();
  const DeviceSpan<float> span = f.model->params();
  float* p = Host(span);
  const std::vector<float> block0 = Slice(p, layout.LayerRange(0));
  const std::vector<float> block1_m = Slice(Host(f.opt->m()), layout.LayerRange(1));
  const std::vector<float> block1 = Slice(p, layout.LayerRange(1));
  const std::vector<float> shared_before = Slice(p, layout.SharedRanges()[0]);
  ASSERT_TRUE(ApplyStackingCopies({{2, 0}}, layout, span, *f.opt).ok());
  EXPECT_EQ(Slice(p, layout.LayerRange(2)), block0);
  EXPECT_EQ(Slice(p, layout.LayerRange(0)), block0);  // the source is untouched
  EXPECT_EQ(Slice(p, layout.LayerRange(1)), block1);
  EXPECT_EQ(Slice(Host(f.opt->m()), layout.LayerRange(1)), block1_m);
  EXPECT_EQ(Slice(p, layout.SharedRanges()[0]), shared_before);
  const ParamRange r2 = layout.LayerRange(2);
  for (size_t i = r2.begin; i < r2.end; ++i) {
    ASSERT_EQ(Host(f.opt->m())[i], 0.0f);
    ASSERT_EQ(Host(f.opt->v())[i], 0.0f);
  }
  EXPECT_EQ(f.opt->layer_steps(), (std::vector<int64_t>{3, 3, 0}));
  EXPECT_EQ(f.opt->shared_steps(), 3);
  // Refused, changing nothing: a block out of range, or a destination that is also a source.
  const std::vector<float> before(p, p + layout.total());
  EXPECT_EQ(ApplyStackingCopies({{3, 0}}, layout, span, *f.opt).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(ApplyStackingCopies({{1, 0}, {2, 1}}, layout, span, *f.opt).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_TRUE(std::vector<float>(p, p + layout.total()) == before);
}

// Mean training loss of `step`'s batch on `params` with the step's plan: what the trainer's
// forward computes (one micro-batch, GPT).
double StepLoss(const TrainerConfig& cfg, const float* params, int64_t step) {
  CpuBackend<float> backend;
  Model<float> model(cfg.model, &backend);
  std::copy(params, params + model.layout().total(), Host(model.params()));
  auto train = TokenDataset::Open(cfg.train_shards);
  EXPECT_TRUE(train.ok()) << train.status();
  BatchSpec spec;
  spec.seed = cfg.seed;
  spec.step = step;
  spec.B = cfg.batch;
  spec.T = cfg.seq;
  std::vector<int32_t> in(static_cast<size_t>(cfg.batch) * cfg.seq), tg(in.size());
  EXPECT_TRUE(train->GetBatch(spec, in.data(), tg.data()).ok());
  const PathPlan plan = PlanPath(cfg.schedule, cfg.model.num_layers, cfg.seed, step);
  ActiveLayerSet active = ActiveLayerSet::Of(cfg.model.num_layers, {});
  for (int l = 0; l < cfg.model.num_layers; ++l) {
    active.set_active(l, plan.active[l]);
    active.set_scale(l, plan.scale[l]);
  }
  auto loss = model.Forward(in.data(), tg.data(), cfg.batch, cfg.seq, active, true);
  EXPECT_TRUE(loss.ok()) << loss.status();
  return loss.ok() ? *loss : -1;
}

TEST(TrainerStacking, TransitionStepTrainsOnTheCopiedBlocks) {
  const std::string dir = FreshDir("stacking_copy");
  TrainerConfig cfg = StackingConfig(dir);
  ASSERT_EQ(StackingCopiesAtStep(cfg.schedule, 4, 3),
            (std::vector<std::pair<int, int>>{{2, 0}, {3, 1}}));
  cfg.run_dir = dir + "/run";
  cfg.stop_after = 2;  // steps 0..2 (2 blocks); the checkpoint holds the state before step 3
  const TrainRun before = TrainOnce(cfg);
  ASSERT_EQ(before.result.steps_done, 3);
  auto ckpt = LatestCheckpoint(cfg.run_dir);
  ASSERT_TRUE(ckpt.ok()) << ckpt.status();

  // What the transition must produce: the checkpoint with blocks 2, 3 := blocks 0, 1.
  CpuBackend<float> backend;
  Model<float> model(cfg.model, &backend);
  AdamWOptimizer<float> opt(cfg.optimizer, model.layout(), &backend);
  TrainState state;
  ASSERT_TRUE(LoadCheckpoint(*ckpt, cfg.model, model.layout(), Host(model.params()), Host(opt.m()),
                             Host(opt.v()), &state)
                  .ok());
  ASSERT_EQ(state.step, 3);
  const std::vector<float> loaded(Host(model.params()),
                                  Host(model.params()) + model.layout().total());
  ASSERT_TRUE(ApplyStackingCopies(StackingCopiesAtStep(cfg.schedule, 4, 3), model.layout(),
                                  model.params(), opt)
                  .ok());
  const ParamLayout& layout = model.layout();
  EXPECT_EQ(Slice(Host(model.params()), layout.LayerRange(2)),
            Slice(loaded.data(), layout.LayerRange(0)));
  EXPECT_EQ(Slice(Host(model.params()), layout.LayerRange(3)),
            Slice(loaded.data(), layout.LayerRange(1)));
  // Blocks 2, 3 never trained (under zero_grad only weight decay moved them), so they differ
  // from the blocks they are about to copy.
  EXPECT_NE(Slice(loaded.data(), layout.LayerRange(2)), Slice(loaded.data(), layout.LayerRange(0)));

  // The resumed run's step 3 (the first of stage 1) computed its loss on exactly those weights:
  // B*T = 64 scored positions, so the reported mean is the forward's loss bitwise.
  cfg.stop_after = 3;
  const TrainRun resumed = TrainOnce(cfg);
  ASSERT_EQ(resumed.losses.size(), 1u);
  const double grown = StepLoss(cfg, Host(model.params()), 3);
  EXPECT_EQ(resumed.losses[0], grown);
  EXPECT_NE(StepLoss(cfg, loaded.data(), 3), grown);  // without the copies: another loss
}

TEST(TrainerStacking, ResumeAcrossATransitionIsBitwiseIdentical) {
  for (SkippedLayerPolicy policy : {SkippedLayerPolicy::kZeroGrad, SkippedLayerPolicy::kFrozen}) {
    const std::string name = policy == SkippedLayerPolicy::kFrozen ? "frozen" : "zero_grad";
    const std::string dir = FreshDir("stacking_resume_" + name);
    TrainerConfig cfg = StackingConfig(dir);
    cfg.optimizer.skipped = policy;
    const TrainRun straight = TrainOnce(cfg);
    ASSERT_EQ(straight.losses.size(), 8u);
    // Stop at the step before the transition, and (another run) at the transition itself.
    for (int64_t stop : {2, 3}) {
      cfg.run_dir = dir + "/run_" + std::to_string(stop);
      cfg.stop_after = stop;
      const TrainRun first = TrainOnce(cfg);
      EXPECT_EQ(first.result.steps_done, stop + 1);
      cfg.stop_after = -1;
      const TrainRun second = TrainOnce(cfg);
      EXPECT_EQ(second.result.steps_done, 8);
      std::vector<double> joined = first.losses;
      joined.insert(joined.end(), second.losses.begin(), second.losses.end());
      EXPECT_EQ(joined, straight.losses) << name << " stop " << stop;
      EXPECT_TRUE(second.result.final_params == straight.result.final_params)
          << name << " stop " << stop;
      EXPECT_EQ(second.result.total_flops, straight.result.total_flops) << name;
    }
    // 3 steps of 2 blocks and 5 of 4: less than full training.
    EXPECT_LT(straight.result.total_flops, straight.result.total_flops_full);
  }
}

TEST(TrainerBaselines, PldAndLayerDropTrainAndResumeBitwise) {
  for (PathScheduleConfig::Kind kind :
       {PathScheduleConfig::Kind::kPld, PathScheduleConfig::Kind::kLayerDrop}) {
    const std::string name = PathScheduleKindName(kind);
    const std::string dir = FreshDir("baseline_" + name);
    TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
    cfg.schedule = PathScheduleConfig{};
    cfg.schedule.kind = kind;
    cfg.schedule.pld_gamma = 0.5;  // theta falls from 1 towards 0.5 within the 8 steps
    cfg.schedule.keep_prob = 0.5;
    const TrainRun straight = TrainOnce(cfg);
    ASSERT_EQ(straight.losses.size(), 8u) << name;
    EXPECT_LT(straight.result.total_flops, straight.result.total_flops_full) << name;
    cfg.run_dir = dir + "/run";
    cfg.stop_after = 3;
    const TrainRun first = TrainOnce(cfg);
    cfg.stop_after = -1;
    const TrainRun second = TrainOnce(cfg);
    std::vector<double> joined = first.losses;
    joined.insert(joined.end(), second.losses.begin(), second.losses.end());
    EXPECT_EQ(joined, straight.losses) << name;
    EXPECT_TRUE(second.result.final_params == straight.result.final_params) << name;
  }
}

TEST(TrainerBaselines, RefusesToResumeWithAnotherScheduleOrKeepProb) {
  const std::string dir = FreshDir("baseline_mismatch");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  cfg.schedule = PathScheduleConfig{};
  cfg.schedule.kind = PathScheduleConfig::Kind::kLayerDrop;
  cfg.run_dir = dir + "/run";
  cfg.stop_after = 1;
  TrainOnce(cfg);
  cfg.stop_after = -1;
  TrainResult result;
  TrainerConfig other = cfg;
  other.schedule.keep_prob = 0.5;
  absl::Status s = Train(other, nullptr, &result);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("schedule.keep_prob"), std::string::npos) << s;
  other = cfg;
  other.schedule.kind = PathScheduleConfig::Kind::kPld;
  s = Train(other, nullptr, &result);
  EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
  EXPECT_NE(s.message().find("schedule.kind"), std::string::npos) << s;
}

}  // namespace
}  // namespace raptr
