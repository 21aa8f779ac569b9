// Job spec -> TrainerConfig: the examples, every schedule kind, and refusals naming the field.
#include "worker/job_config.h"

#include <gtest/gtest.h>

#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "common/data_roots.h"
#include "common/job_spec.h"
#include "common/path_schedule.h"
#include "tests/unit/job_fixtures.h"
#include "tests/unit/test_files.h"
#include "worker/engine/model.h"
#include "worker/engine/param_layout.h"

namespace raptr {
namespace {

using ::raptr::testing::ExamplesDir;
using ::raptr::testing::ReadFile;

constexpr char kMinimal[] = R"(name: tiny
model:
  layers: 12
  d_model: 128
  heads: 4
  vocab_size: 8192
data:
  train_shards: [a.bin, b.bin]
  val_shards: [v.bin]
training:
  batch: 16
  steps: 600
)";

absl::StatusOr<TrainerConfig> Convert(const std::string& yaml) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(yaml);
  if (!spec.ok()) return spec.status();
  return TrainerConfigFromJobSpec(*spec);
}

// Parses and converts, failing the test on an error.
TrainerConfig MustConvert(const std::string& yaml) {
  absl::StatusOr<TrainerConfig> cfg = Convert(yaml);
  EXPECT_TRUE(cfg.ok()) << cfg.status();
  return cfg.ok() ? *cfg : TrainerConfig{};
}

std::vector<std::pair<int, int64_t>> Stages(const PathScheduleConfig& s) {
  std::vector<std::pair<int, int64_t>> out;
  for (const RaptrStage& st : s.stages) out.emplace_back(st.path_length, st.steps);
  return out;
}

TEST(JobConfigTest, EveryExampleConverts) {
  int examples = 0;
  for (const auto& entry : std::filesystem::directory_iterator(ExamplesDir())) {
    if (entry.path().extension() != ".yaml") continue;
    ++examples;
    SCOPED_TRACE(entry.path().string());
    absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(ReadFile(entry.path()));
    ASSERT_TRUE(spec.ok()) << spec.status();
    absl::StatusOr<TrainerConfig> cfg = TrainerConfigFromJobSpec(*spec);
    ASSERT_TRUE(cfg.ok()) << cfg.status();
    // "gpt-raptr.yaml" -> "raptr": the file names say the schedule.
    const std::string stem = entry.path().stem().string();
    EXPECT_EQ(stem.substr(stem.find('-') + 1), PathScheduleKindName(cfg->schedule.kind));
    EXPECT_EQ(cfg->train_shards, std::vector<std::string>{"data/sotu-8k/train.bin"});
    EXPECT_EQ(cfg->val_shards, std::vector<std::string>{"data/sotu-8k/val.bin"});
    EXPECT_EQ(cfg->steps, spec->training().steps());
    EXPECT_EQ(cfg->optimizer.total_steps, cfg->steps);
    EXPECT_TRUE(ValidatePathSchedule(cfg->schedule, cfg->model.num_layers).ok());
    EXPECT_TRUE(cfg->model.Validate().ok());
  }
  EXPECT_EQ(examples, 6);
}

// gpt-raptr.yaml is the quickstart's `raptr-worker train --batch 16 --seq 64 --steps 600 --lr 2e-3
// --warmup 60` (flag defaults: 12 layers, d 128, 4 heads, the default RaPTr schedule, first and
// last block fixed); the expected config is built the way local_train.cc builds it from those.
TEST(JobConfigTest, GptRaptrEqualsTheEquivalentFlags) {
  const TrainerConfig got = MustConvert(ReadFile(ExamplesDir() / "gpt-raptr.yaml"));

  TrainerConfig want;
  want.model.kind = ModelKind::kGpt;
  want.model.num_layers = 12;
  want.model.d_model = 128;
  want.model.num_heads = 4;
  want.model.d_ff = 4 * 128;     // --d-ff 0
  want.model.vocab_size = 8192;  // data/sotu-8k/meta.json
  want.model.max_seq = 64;       // --max-seq 0: the sequence length
  want.batch = 16;
  want.seq = 64;
  want.micro_batches = 1;
  want.steps = 600;
  want.seed = 1;
  want.eval_every = 100;
  want.eval_batches = 8;
  want.optimizer.lr = 2e-3;
  want.optimizer.min_lr_ratio = 0.1;
  want.optimizer.warmup_steps = 60;
  want.optimizer.total_steps = 600;
  want.optimizer.decay = LrDecay::kCosine;
  want.optimizer.weight_decay = 0.1;
  want.optimizer.beta2 = 0.95;
  want.optimizer.grad_clip = 1.0;
  want.optimizer.skipped = SkippedLayerPolicy::kZeroGrad;
  want.schedule = DefaultRaptrSchedule(12, 600);
  want.schedule.fixed_layers = {0, 11};  // --fixed-layers first,last

  EXPECT_EQ(got.model.kind, want.model.kind);
  EXPECT_EQ(got.model.DebugString(), want.model.DebugString());
  EXPECT_EQ(got.batch, want.batch);
  EXPECT_EQ(got.seq, want.seq);
  EXPECT_EQ(got.micro_batches, want.micro_batches);
  EXPECT_EQ(got.steps, want.steps);
  EXPECT_EQ(got.seed, want.seed);
  EXPECT_EQ(got.init_seed, 0u);
  EXPECT_EQ(got.eval_every, want.eval_every);
  EXPECT_EQ(got.eval_batches, want.eval_batches);
  EXPECT_EQ(got.checkpoint_every, 100);  // the flag's default is 0; the spec says 100
  EXPECT_EQ(got.mask_id, -1);
  const OptimizerConfig& o = got.optimizer;
  EXPECT_EQ(o.lr, want.optimizer.lr);
  EXPECT_EQ(o.min_lr_ratio, want.optimizer.min_lr_ratio);
  EXPECT_EQ(o.warmup_steps, want.optimizer.warmup_steps);
  EXPECT_EQ(o.total_steps, want.optimizer.total_steps);
  EXPECT_EQ(o.decay, want.optimizer.decay);
  EXPECT_EQ(o.beta1, want.optimizer.beta1);
  EXPECT_EQ(o.beta2, want.optimizer.beta2);
  EXPECT_EQ(o.eps, want.optimizer.eps);
  EXPECT_EQ(o.weight_decay, want.optimizer.weight_decay);
  EXPECT_EQ(o.grad_clip, want.optimizer.grad_clip);
  EXPECT_EQ(o.skipped, want.optimizer.skipped);
  const PathScheduleConfig& s = got.schedule;
  EXPECT_EQ(s.kind, PathScheduleConfig::Kind::kRaptr);
  EXPECT_EQ(Stages(s), Stages(want.schedule));
  EXPECT_EQ(Stages(s),
            (std::vector<std::pair<int, int64_t>>{{6, 150}, {8, 150}, {10, 150}, {12, 150}}));
  EXPECT_EQ(s.fixed_layers, want.schedule.fixed_layers);
  EXPECT_EQ(s.sampling, want.schedule.sampling);
  EXPECT_EQ(s.scaling, want.schedule.scaling);
  EXPECT_EQ(s.full_warmup_steps, 0);
  // The local-run knobs are the caller's.
  EXPECT_EQ(got.run_dir, "");
  EXPECT_EQ(got.stop_after, -1);
}

TEST(JobConfigTest, MapsEveryModelDataTrainingAndOptimizerField) {
  const TrainerConfig cfg = MustConvert(R"(name: all
model: {kind: bert, layers: 3, d_model: 48, heads: 6, d_ff: 100, vocab_size: 300, max_seq: 40}
data: {train_shards: [t1.bin, t2.bin], val_shards: [v.bin], mask_id: 7}
training: {batch: 6, seq: 32, micro_batches: 3, steps: 50, seed: 12345678901, eval_every: 0,
           eval_batches: 2, checkpoint_every: 7}
optimizer: {lr: 0.5, min_lr_ratio: 0.25, warmup_steps: 5, decay: linear, beta1: 0.8,
            beta2: 0.99, eps: 1e-6, weight_decay: 0.01, grad_clip: 0, skipped: frozen}
schedule: {full: {}}
resources: {min_workers: 2, max_workers: 3, priority: 5, backend: cpu}
)");
  EXPECT_EQ(cfg.model.kind, ModelKind::kBert);
  EXPECT_EQ(cfg.model.num_layers, 3);
  EXPECT_EQ(cfg.model.d_model, 48);
  EXPECT_EQ(cfg.model.num_heads, 6);
  EXPECT_EQ(cfg.model.d_ff, 100);
  EXPECT_EQ(cfg.model.vocab_size, 300);
  EXPECT_EQ(cfg.model.max_seq, 40);
  EXPECT_EQ(cfg.train_shards, (std::vector<std::string>{"t1.bin", "t2.bin"}));
  EXPECT_EQ(cfg.val_shards, std::vector<std::string>{"v.bin"});
  EXPECT_EQ(cfg.mask_id, 7);
  EXPECT_EQ(cfg.batch, 6);
  EXPECT_EQ(cfg.seq, 32);
  EXPECT_EQ(cfg.micro_batches, 3);
  EXPECT_EQ(cfg.steps, 50);
  EXPECT_EQ(cfg.seed, 12345678901u);
  EXPECT_EQ(cfg.eval_every, 0);
  EXPECT_EQ(cfg.eval_batches, 2);
  EXPECT_EQ(cfg.checkpoint_every, 7);
  EXPECT_EQ(cfg.optimizer.lr, 0.5);
  EXPECT_EQ(cfg.optimizer.min_lr_ratio, 0.25);
  EXPECT_EQ(cfg.optimizer.warmup_steps, 5);
  EXPECT_EQ(cfg.optimizer.total_steps, 50);
  EXPECT_EQ(cfg.optimizer.decay, LrDecay::kLinear);
  EXPECT_EQ(cfg.optimizer.beta1, 0.8);
  EXPECT_EQ(cfg.optimizer.beta2, 0.99);
  EXPECT_EQ(cfg.optimizer.eps, 1e-6);
  EXPECT_EQ(cfg.optimizer.weight_decay, 0.01);
  EXPECT_EQ(cfg.optimizer.grad_clip, 0);
  EXPECT_EQ(cfg.optimizer.skipped, SkippedLayerPolicy::kFrozen);
  EXPECT_EQ(cfg.schedule.kind, PathScheduleConfig::Kind::kFull);
  EXPECT_TRUE(cfg.schedule.stages.empty());
  EXPECT_TRUE(cfg.schedule.fixed_layers.empty());

  EXPECT_EQ(MustConvert(absl::StrCat(kMinimal, "optimizer: {decay: constant}\n")).optimizer.decay,
            LrDecay::kConstant);
}

TEST(JobConfigTest, RaptrMapsItsParametersAndResolvesFractions) {
  const TrainerConfig cfg = MustConvert(absl::StrCat(kMinimal, R"(schedule:
  raptr:
    stages: [{path_length: 4, fraction: 0.5}, {path_length: 12, fraction: 0.5}]
    no_fixed_layers: true
    sampling: exact
    scaling: inverse_keep_prob
    full_warmup_steps: 99
)"));
  const PathScheduleConfig& s = cfg.schedule;
  EXPECT_EQ(s.kind, PathScheduleConfig::Kind::kRaptr);
  // T = 600 - 99 = 501: the first stage ends after floor(501 * 0.5) = 250 steps.
  EXPECT_EQ(Stages(s), (std::vector<std::pair<int, int64_t>>{{4, 250}, {12, 251}}));
  EXPECT_TRUE(s.fixed_layers.empty());
  EXPECT_EQ(s.sampling, PathSampling::kExact);
  EXPECT_EQ(s.scaling, PathScaling::kInverseKeepProb);
  EXPECT_EQ(s.full_warmup_steps, 99);

  // Omitted: the paper's default, as DefaultRaptrSchedule builds it for the flags.
  const TrainerConfig def = MustConvert(kMinimal);
  EXPECT_EQ(def.schedule.kind, PathScheduleConfig::Kind::kRaptr);
  EXPECT_EQ(Stages(def.schedule), Stages(DefaultRaptrSchedule(12, 600)));
  EXPECT_EQ(def.schedule.fixed_layers, (std::vector<int>{0, 11}));
  EXPECT_EQ(def.schedule.sampling, PathSampling::kBernoulli);
  EXPECT_EQ(def.schedule.scaling, PathScaling::kNone);

  const TrainerConfig fixed = MustConvert(absl::StrCat(kMinimal, R"(schedule:
  raptr: {stages: [{path_length: 3, steps: 100}, {path_length: 5, steps: 100}],
          fixed_layers: [2, 5, 7]}
)"));
  EXPECT_EQ(Stages(fixed.schedule), (std::vector<std::pair<int, int64_t>>{{3, 100}, {5, 100}}));
  EXPECT_EQ(fixed.schedule.fixed_layers, (std::vector<int>{2, 5, 7}));
}

TEST(JobConfigTest, PldMapsItsParameters) {
  const TrainerConfig cfg =
      MustConvert(absl::StrCat(kMinimal, "schedule: {pld: {theta_bar: 0.3, gamma: 0.02}}\n"));
  EXPECT_EQ(cfg.schedule.kind, PathScheduleConfig::Kind::kPld);
  EXPECT_EQ(cfg.schedule.pld_theta_bar, 0.3);
  EXPECT_EQ(cfg.schedule.pld_gamma, 0.02);
  EXPECT_TRUE(cfg.schedule.stages.empty());
  EXPECT_TRUE(cfg.schedule.fixed_layers.empty());
  EXPECT_EQ(cfg.schedule.full_warmup_steps, 0);

  const TrainerConfig def = MustConvert(absl::StrCat(kMinimal, "schedule: {pld: {}}\n"));
  EXPECT_EQ(def.schedule.pld_theta_bar, 0.5);
  EXPECT_EQ(def.schedule.pld_gamma, 0.001);
}

TEST(JobConfigTest, LayerDropMapsItsParameters) {
  const TrainerConfig cfg = MustConvert(absl::StrCat(
      kMinimal, "schedule: {layerdrop: {keep_prob: 0.6, scale: inverse_keep_prob}}\n"));
  EXPECT_EQ(cfg.schedule.kind, PathScheduleConfig::Kind::kLayerDrop);
  EXPECT_EQ(cfg.schedule.keep_prob, 0.6);
  EXPECT_TRUE(cfg.schedule.layerdrop_scale);

  // The spec's default scale is NONE, as PathScheduleConfig's and `raptr-worker train`'s.
  const TrainerConfig def = MustConvert(absl::StrCat(kMinimal, "schedule: {layerdrop: {}}\n"));
  EXPECT_EQ(def.schedule.keep_prob, 0.75);
  EXPECT_FALSE(def.schedule.layerdrop_scale);
  EXPECT_EQ(def.schedule.layerdrop_scale, PathScheduleConfig{}.layerdrop_scale);
  EXPECT_TRUE(def.schedule.fixed_layers.empty());

  // With RaPTr's fixed layers.
  const TrainerConfig fixed = MustConvert(
      absl::StrCat(kMinimal, "schedule: {layerdrop: {keep_prob: 0.7, fixed_layers: [0, 11]}}\n"));
  EXPECT_EQ(fixed.schedule.fixed_layers, (std::vector<int>{0, 11}));
  absl::StatusOr<TrainerConfig> out_of_range =
      Convert(absl::StrCat(kMinimal, "schedule: {layerdrop: {fixed_layers: [12]}}\n"));
  ASSERT_FALSE(out_of_range.ok());
  EXPECT_NE(out_of_range.status().message().find("schedule.layerdrop.fixed_layers[0] (12)"),
            std::string_view::npos)
      << out_of_range.status();
}

// Constant-rate RaPTr (the clean control for LayerDrop with the same fixed layers): one stage
// over the whole job; every step keeps the non-fixed blocks with (9 - 2) / 10.
TEST(JobConfigTest, ConstantRateRaptrIsOneStage) {
  const TrainerConfig cfg = MustConvert(
      absl::StrCat(kMinimal, "schedule: {raptr: {stages: [{path_length: 9, fraction: 1}]}}\n"));
  ASSERT_EQ(Stages(cfg.schedule), (std::vector<std::pair<int, int64_t>>{{9, cfg.steps}}));
  EXPECT_EQ(cfg.schedule.fixed_layers, (std::vector<int>{0, 11}));
  for (int64_t step : {int64_t{0}, cfg.steps / 2, cfg.steps - 1}) {
    EXPECT_DOUBLE_EQ(PlanPath(cfg.schedule, 12, 7, step).keep_prob, 0.7) << step;
  }
  EXPECT_NEAR(LayerDropKeepProbMatchingRaptr(cfg.schedule, 12, cfg.steps), 0.75, 1e-12);
}

// PLD matched to FLOPs: mean_keep solves the gamma for the job's length; DeepSpeed's indexing on
// request; a target PLD cannot reach, or both knobs, are errors naming the field.
TEST(JobConfigTest, PldMeanKeepAndIndexing) {
  const TrainerConfig matched =
      MustConvert(absl::StrCat(kMinimal, "schedule: {pld: {mean_keep: 0.75}}\n"));
  EXPECT_EQ(matched.schedule.pld_indexing, PldIndexing::kPaper);
  EXPECT_NEAR(LayerDropKeepProbMatchingRaptr(matched.schedule, 12, matched.steps), 0.75, 1e-9);
  const TrainerConfig deepspeed = MustConvert(
      absl::StrCat(kMinimal, "schedule: {pld: {gamma: 0.01, indexing: deepspeed}}\n"));
  EXPECT_EQ(deepspeed.schedule.pld_indexing, PldIndexing::kDeepSpeed);
  EXPECT_EQ(deepspeed.schedule.pld_gamma, 0.01);
  for (const char* bad : {"schedule: {pld: {mean_keep: 0.5}}\n",
                          "schedule: {pld: {mean_keep: 0.8, gamma: 0.01}}\n"}) {
    absl::StatusOr<TrainerConfig> refused = Convert(absl::StrCat(kMinimal, bad));
    ASSERT_FALSE(refused.ok()) << bad;
    EXPECT_EQ(refused.status().code(), absl::StatusCode::kInvalidArgument);
    EXPECT_NE(refused.status().message().find("schedule.pld."), std::string_view::npos)
        << refused.status();
  }
}

TEST(JobConfigTest, StackingMapsItsStages) {
  const TrainerConfig cfg = MustConvert(absl::StrCat(kMinimal, R"(schedule:
  stacking:
    stages: [{layers: 6, fraction: 0.3}, {layers: 9, fraction: 0.3}, {layers: 12, fraction: 0.4}]
)"));
  EXPECT_EQ(cfg.schedule.kind, PathScheduleConfig::Kind::kStacking);
  // 600 * 0.3 = 180, 600 * 0.6 = 360, the last to 600.
  EXPECT_EQ(Stages(cfg.schedule),
            (std::vector<std::pair<int, int64_t>>{{6, 180}, {9, 180}, {12, 240}}));
  EXPECT_TRUE(cfg.schedule.fixed_layers.empty());

  const TrainerConfig steps = MustConvert(absl::StrCat(
      kMinimal,
      "schedule: {stacking: {stages: [{layers: 4, steps: 10}, {layers: 12, steps: 20}]}}\n"));
  EXPECT_EQ(Stages(steps.schedule), (std::vector<std::pair<int, int64_t>>{{4, 10}, {12, 20}}));
}

TEST(JobConfigTest, TheSpecsBackendIsTheTrainersBackend) {
  EXPECT_EQ(MustConvert(kMinimal).backend.kind, BackendKind::kCpu);  // omitted: CPU
  EXPECT_EQ(MustConvert(absl::StrCat(kMinimal, "resources: {backend: cpu}\n")).backend.kind,
            BackendKind::kCpu);
  const TrainerConfig cuda = MustConvert(absl::StrCat(kMinimal, "resources: {backend: cuda}\n"));
  EXPECT_EQ(cuda.backend.kind, BackendKind::kCuda);
  EXPECT_EQ(cuda.backend.device, 0);
  EXPECT_FALSE(cuda.backend.tf32);
}

// resources.attention: auto (omitted) resolves by backend; materialized and flash are kept.
TEST(JobConfigTest, AttentionIsChosenPerJobAndAutoFollowsTheBackend) {
  const TrainerConfig cpu = MustConvert(kMinimal);
  EXPECT_FALSE(cpu.attention.has_value());
  EXPECT_EQ(ResolvedAttention(cpu), AttentionKind::kMaterialized);
  const TrainerConfig cuda = MustConvert(absl::StrCat(kMinimal, "resources: {backend: cuda}\n"));
  EXPECT_EQ(ResolvedAttention(cuda), AttentionKind::kFlash);
  const TrainerConfig flash =
      MustConvert(absl::StrCat(kMinimal, "resources: {attention: flash}\n"));
  EXPECT_EQ(ResolvedAttention(flash), AttentionKind::kFlash);
  const TrainerConfig full =
      MustConvert(absl::StrCat(kMinimal, "resources: {backend: cuda, attention: materialized}\n"));
  EXPECT_EQ(ResolvedAttention(full), AttentionKind::kMaterialized);
  absl::StatusOr<v1::JobSpec> bad =
      ParseJobSpecYaml(absl::StrCat(kMinimal, "resources: {attention: sparse}\n"));
  ASSERT_FALSE(bad.ok());
  EXPECT_NE(bad.status().message().find("resources.attention"), absl::string_view::npos)
      << bad.status();
}

absl::StatusOr<TrainerConfig> ForWorker(const std::string& yaml, BackendOptions worker) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(yaml);
  if (!spec.ok()) return spec.status();
  return TrainerConfigForWorker(*spec, worker);
}

// `raptr-worker serve --backend cuda --device 2` runs CUDA jobs on its device; a job of the other
// backend is refused naming both (the coordinator never places one there).
TEST(JobConfigTest, AWorkerRunsJobsOfItsBackendOnItsDevice) {
  const std::string cuda_spec = absl::StrCat(kMinimal, "resources: {backend: cuda}\n");
  BackendOptions gpu2;
  gpu2.kind = BackendKind::kCuda;
  gpu2.device = 2;
  gpu2.tf32 = true;
  absl::StatusOr<TrainerConfig> cfg = ForWorker(cuda_spec, gpu2);
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->backend.kind, BackendKind::kCuda);
  EXPECT_EQ(cfg->backend.device, 2);
  EXPECT_TRUE(cfg->backend.tf32);
  EXPECT_EQ(cfg->model.num_layers, 12);  // the rest is TrainerConfigFromJobSpec's

  cfg = ForWorker(kMinimal, BackendOptions{});
  ASSERT_TRUE(cfg.ok()) << cfg.status();
  EXPECT_EQ(cfg->backend.kind, BackendKind::kCpu);

  cfg = ForWorker(cuda_spec, BackendOptions{});  // a CUDA job on a CPU worker
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ(cfg.status().message(),
            "resources.backend: the job runs on cuda workers, but this is a cpu worker (the "
            "coordinator places jobs only on workers of their backend)");

  cfg = ForWorker(absl::StrCat(kMinimal, "resources: {backend: cpu}\n"), gpu2);  // and back
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(cfg.status().message().find("the job runs on cpu workers, but this is a cuda worker"),
            std::string::npos)
      << cfg.status();

  // The spec is still validated first.
  cfg = ForWorker(absl::StrCat(kMinimal, "optimizer: {lr: -1}\n"), gpu2);
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument);
}

TEST(JobConfigTest, InvalidSpecsAreRefusedNamingTheField) {
  absl::StatusOr<TrainerConfig> cfg = Convert(absl::StrCat(kMinimal, "optimizer: {lr: -1}\n"));
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(cfg.status().message().find("optimizer.lr"), std::string::npos) << cfg.status();

  // Defaults not filled (a spec that skipped ApplyJobSpecDefaults): the validator names them.
  v1::JobSpec bare;
  bare.set_name("bare");
  cfg = TrainerConfigFromJobSpec(bare);
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kInvalidArgument);
}

// A field this worker's mapping does not know (here: unknown to its job.proto, as a newer client
// could send over the wire) is refused, never silently ignored.
TEST(JobConfigTest, UnknownFieldsAreUnimplementedNamingTheirMessage) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(kMinimal);
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(TrainerConfigFromJobSpec(*spec).ok());

  v1::JobSpec top = *spec;
  top.GetReflection()->MutableUnknownFields(&top)->AddVarint(99, 1);
  absl::StatusOr<TrainerConfig> cfg = TrainerConfigFromJobSpec(top);
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kUnimplemented);

  v1::JobSpec nested = *spec;
  v1::OptimizerSpec* optimizer = nested.mutable_optimizer();
  optimizer->GetReflection()->MutableUnknownFields(optimizer)->AddVarint(42, 1);
  cfg = TrainerConfigFromJobSpec(nested);
  ASSERT_FALSE(cfg.ok());
  EXPECT_EQ(cfg.status().code(), absl::StatusCode::kUnimplemented);
  EXPECT_NE(cfg.status().message().find("optimizer"), std::string::npos) << cfg.status();
}

// The coordinator sizes a job's memory from its spec alone (no engine there): its parameter
// count must be the engine's, for GPT and BERT, tied head, any d_ff and max_seq.
TEST(JobConfigTest, TheSpecsParameterCountIsTheEngines) {
  const char* const models[] = {
      "{layers: 12, d_model: 128, heads: 4, vocab_size: 8192}",
      "{kind: bert, layers: 3, d_model: 48, heads: 6, d_ff: 100, vocab_size: 300, max_seq: 40}",
      "{layers: 1, d_model: 1, heads: 1, vocab_size: 1}",
      "{kind: gpt, layers: 7, d_model: 96, heads: 3, d_ff: 17, vocab_size: 50257, max_seq: 1024}",
  };
  for (const char* model : models) {
    SCOPED_TRACE(model);
    const std::string yaml = absl::StrCat(
        "name: n\nmodel: ", model, "\ndata: {train_shards: [t.bin], val_shards: [v.bin]",
        std::string(model).find("bert") != std::string::npos ? ", mask_id: 0" : "",
        "}\ntraining: {batch: 2, seq: 1, steps: 10}\n");
    absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(yaml);
    ASSERT_TRUE(spec.ok()) << spec.status();
    const TrainerConfig cfg = MustConvert(yaml);
    EXPECT_EQ(JobParameterCount(*spec), static_cast<int64_t>(ParamLayout(cfg.model).total()));
    EXPECT_EQ(JobMinimumMemoryBytes(*spec),
              static_cast<int64_t>(Model<float>::ParameterBytes(cfg.model)) * 2);
  }
}

// The worker's own check before it opens a job's data (worker --data-root).
class ConfineTrainerDataTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::canonical(testing::FreshTestDir("raptr_confine_trainer_data"));
    std::filesystem::create_directories(dir_ / "data");
    std::filesystem::create_symlink("/etc/passwd", dir_ / "data" / "passwd.bin");
    absl::StatusOr<DataRoots> roots = DataRoots::Create({(dir_ / "data").string()});
    ASSERT_TRUE(roots.ok()) << roots.status();
    roots_ = *roots;
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::filesystem::path dir_;
  DataRoots roots_;
};

TEST_F(ConfineTrainerDataTest, ReplacesEveryShardWithItsResolvedPath) {
  TrainerConfig cfg = MustConvert(kMinimal);
  const std::string data = (dir_ / "data").string();
  cfg.train_shards = {data + "/a.bin", data + "/sub/../b.bin"};
  cfg.val_shards = {data + "/./v.bin"};
  ASSERT_TRUE(ConfineTrainerData(roots_, &cfg).ok());
  EXPECT_EQ(cfg.train_shards, (std::vector<std::string>{data + "/a.bin", data + "/b.bin"}));
  EXPECT_EQ(cfg.val_shards, std::vector<std::string>{data + "/v.bin"});
  // Unconfined: untouched.
  cfg.train_shards = {"../x.bin"};
  ASSERT_TRUE(ConfineTrainerData(DataRoots(), &cfg).ok());
  EXPECT_EQ(cfg.train_shards, std::vector<std::string>{"../x.bin"});
}

TEST_F(ConfineTrainerDataTest, APathOutsideFailsNamingItsSpecFieldAndChangesNothing) {
  TrainerConfig cfg = MustConvert(kMinimal);
  const std::string data = (dir_ / "data").string();
  const std::vector<std::string> train = {data + "/a.bin"};
  const std::vector<std::string> val = {data + "/v.bin", data + "/passwd.bin"};
  cfg.train_shards = train;
  cfg.val_shards = val;
  const absl::Status status = ConfineTrainerData(roots_, &cfg);
  EXPECT_EQ(status.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(status.message().rfind("data.val_shards[1]: \"", 0), 0u) << status;
  EXPECT_NE(status.message().find("passwd.bin\" is outside the data roots"), std::string::npos)
      << status;
  // What the link points at stays in the worker's log.
  EXPECT_EQ(status.message().find("/etc/passwd"), std::string::npos) << status;
  EXPECT_EQ(cfg.train_shards, train);
  EXPECT_EQ(cfg.val_shards, val);
  cfg.train_shards = {data + "/../../etc/shadow"};
  EXPECT_EQ(ConfineTrainerData(roots_, &cfg).message().rfind("data.train_shards[0]: ", 0), 0u);
}

}  // namespace
}  // namespace raptr
