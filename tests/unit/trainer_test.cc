// Trainer and optimizer behaviour: determinism, bitwise resume, gradient accumulation, and what
// AdamW does to skipped blocks under `zero_grad` and `frozen`.
#include "worker/engine/trainer.h"

#include <cmath>
#include <filesystem>
#include <string>
#include <vector>

#include "common/random.h"
#include "gtest/gtest.h"
#include "worker/engine/cpu/cpu_backend.h"
#include "worker/engine/data/shard.h"
#include "worker/engine/model.h"
#include "worker/engine/optimizer.h"

namespace raptr {
namespace {

namespace fs = std::filesystem;

std::string FreshDir(const std::string& name) {
  const fs::path dir = fs::path(::testing::TempDir()) / ("raptr_trainer_" + name);
  fs::remove_all(dir);
  fs::create_directories(dir);
  return dir.string();
}

// A small corpus with structure (a noisy repeating pattern), so the loss can fall.
std::vector<uint16_t> SyntheticTokens(size_t n, int vocab, uint64_t seed) {
  CounterRng rng(seed, 0);
  std::vector<uint16_t> t(n);
  for (size_t i = 0; i < n; ++i) {
    t[i] = rng.Uniform() < 0.8 ? static_cast<uint16_t>((i * 7) % (vocab - 4) + 4)
                               : static_cast<uint16_t>(rng.Below(vocab));
  }
  return t;
}

TrainerConfig SmallConfig(const std::string& dir, ModelKind kind) {
  TrainerConfig c;
  c.model.kind = kind;
  c.model.num_layers = 4;
  c.model.d_model = 32;
  c.model.num_heads = 4;
  c.model.d_ff = 64;
  c.model.vocab_size = 64;
  c.model.max_seq = 16;
  c.batch = 4;
  c.seq = 16;
  c.steps = 8;
  c.seed = 11;
  c.eval_batches = 2;
  c.log_every = 0;
  c.mask_id = 3;
  c.optimizer.lr = 3e-3;
  c.optimizer.warmup_steps = 2;
  c.optimizer.total_steps = c.steps;
  c.schedule = DefaultRaptrSchedule(c.model.num_layers, c.steps);
  const std::string train = dir + "/train.bin", val = dir + "/val.bin";
  EXPECT_TRUE(WriteShard(train, SyntheticTokens(5000, 64, 1)).ok());
  EXPECT_TRUE(WriteShard(val, SyntheticTokens(1000, 64, 2)).ok());
  c.train_shards = {train};
  c.val_shards = {val};
  return c;
}

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
  const std::vector<float> whole(model.grads(), model.grads() + model.layout().total());
  model.ZeroGrads();
  for (int half = 0; half < 2; ++half) {
    ASSERT_TRUE(
        model.Forward(in.data() + half * 16, tg.data() + half * 16, 2, 8, active, true).ok());
    ASSERT_TRUE(model.Backward(1.0f / scored).ok());
  }
  double max_abs = 0, max_err = 0;
  for (size_t i = 0; i < whole.size(); ++i) {
    max_abs = std::max(max_abs, std::abs(static_cast<double>(whole[i])));
    max_err = std::max(max_err, std::abs(static_cast<double>(whole[i]) - model.grads()[i]));
  }
  EXPECT_LT(max_err, 1e-5 * max_abs);
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
      opt->m()[i] = static_cast<float>(0.01 * rng.Normal());
      opt->v()[i] = static_cast<float>(1e-4 * rng.Uniform());
    }
    std::vector<int32_t> in = {1, 2, 3, 4, 5, 6, 7, 8}, tg = {2, 3, 4, 5, 6, 7, 8, 9};
    const ActiveLayerSet active = ActiveLayerSet::Of(3, {0, 2});
    EXPECT_TRUE(model->Forward(in.data(), tg.data(), 2, 4, active, true).ok());
    EXPECT_TRUE(model->Backward(1.0f / 8).ok());
    params0.assign(model->params(), model->params() + n);
    m0.assign(opt->m(), opt->m() + n);
    v0.assign(opt->v(), opt->v() + n);
  }
  ParamRange Skipped() const { return model->layout().LayerRange(1); }
};

TEST(OptimizerSkippedLayers, SkippedBlockHasZeroGradient) {
  OptimizerFixture f(SkippedLayerPolicy::kFrozen);
  const ParamRange r = f.Skipped();
  for (size_t i = r.begin; i < r.end; ++i) ASSERT_EQ(f.model->grads()[i], 0.0f);
  // ...and an active block does have one.
  const ParamRange a = f.model->layout().LayerRange(0);
  double norm = 0;
  for (size_t i = a.begin; i < a.end; ++i) norm += std::abs(f.model->grads()[i]);
  EXPECT_GT(norm, 0);
}

TEST(OptimizerSkippedLayers, FrozenLeavesWeightsAndMomentsUntouched) {
  OptimizerFixture f(SkippedLayerPolicy::kFrozen);
  f.opt->Step(f.model->params(), f.model->grads(), ActiveLayerSet::Of(3, {0, 2}), 0);
  const ParamRange r = f.Skipped();
  for (size_t i = r.begin; i < r.end; ++i) {
    ASSERT_EQ(f.model->params()[i], f.params0[i]);
    ASSERT_EQ(f.opt->m()[i], f.m0[i]);
    ASSERT_EQ(f.opt->v()[i], f.v0[i]);
  }
  const ParamRange a = f.model->layout().LayerRange(0);
  EXPECT_NE(f.model->params()[a.begin + 20], f.params0[a.begin + 20]);
}

TEST(OptimizerSkippedLayers, ZeroGradDecaysMomentsAndAppliesWeightDecay) {
  OptimizerFixture f(SkippedLayerPolicy::kZeroGrad);
  f.opt->Step(f.model->params(), f.model->grads(), ActiveLayerSet::Of(3, {0, 2}), 0);
  const ParamRange r = f.Skipped();
  for (size_t i = r.begin; i < r.end; ++i) {
    ASSERT_FLOAT_EQ(f.opt->m()[i], 0.9f * f.m0[i]);
    ASSERT_FLOAT_EQ(f.opt->v()[i], 0.95f * f.v0[i]);
  }
  // A decayed matrix of the skipped block moved (moment update + weight decay).
  const size_t w = f.model->layout().block(1, kFcW);
  EXPECT_NE(f.model->params()[w], f.params0[w]);
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
  for (size_t i = 0; i < f.model->layout().total(); ++i) ASSERT_EQ(f.model->grads()[i], 0.0f);
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

}  // namespace
}  // namespace raptr
