// Job spec YAML: the examples, round trips, defaults, and every class of error naming its field.
#include "common/job_spec.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <limits>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_replace.h"
#include "google/protobuf/struct.pb.h"
#include "google/protobuf/util/message_differencer.h"
#include "tests/unit/test_files.h"

namespace raptr {
namespace {

using ::google::protobuf::util::MessageDifferencer;

using ::raptr::testing::ExamplesDir;
using ::raptr::testing::ReadFile;

// A small valid spec; tests replace one line at a time to break it.
constexpr char kMinimal[] = R"(name: tiny
model:
  layers: 12
  d_model: 128
  heads: 4
  vocab_size: 8192
data:
  train_shards: [train.bin]
  val_shards: [val.bin]
training:
  batch: 16
  steps: 600
)";

std::string Minimal(const std::string& extra = "") { return absl::StrCat(kMinimal, extra); }

// Parse, then validate; the first error of either.
absl::Status ParseAndValidate(const std::string& yaml) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(yaml);
  if (!spec.ok()) return spec.status();
  return ValidateJobSpec(*spec);
}

// The spec with `from` replaced by `to` (which must occur), parsed and validated.
absl::Status WithReplaced(const std::string& yaml, const std::string& from, const std::string& to) {
  EXPECT_NE(yaml.find(from), std::string::npos) << from;
  return ParseAndValidate(absl::StrReplaceAll(yaml, {{from, to}}));
}

// INVALID_ARGUMENT with `text` in the message.
::testing::AssertionResult IsInvalidArgument(const absl::Status& status, const std::string& text) {
  if (status.code() != absl::StatusCode::kInvalidArgument) {
    return ::testing::AssertionFailure() << "expected INVALID_ARGUMENT, got " << status;
  }
  if (std::string(status.message()).find(text) == std::string::npos) {
    return ::testing::AssertionFailure()
           << "message '" << status.message() << "' does not contain '" << text << "'";
  }
  return ::testing::AssertionSuccess();
}

template <typename Repeated>
auto ToVector(const Repeated& values) {
  return std::vector<typename Repeated::value_type>(values.begin(), values.end());
}

TEST(JobSpecTest, EveryExampleParsesAndValidates) {
  std::vector<std::string> names;
  for (const auto& entry : std::filesystem::directory_iterator(ExamplesDir())) {
    if (entry.path().extension() != ".yaml") continue;
    names.push_back(entry.path().filename().string());
    SCOPED_TRACE(entry.path().string());
    absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(ReadFile(entry.path()));
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
    EXPECT_EQ(spec->name() + ".yaml", entry.path().filename().string());
  }
  for (const char* required : {"gpt-raptr.yaml", "gpt-full.yaml", "bert-raptr.yaml", "gpt-pld.yaml",
                               "gpt-stacking.yaml"}) {
    EXPECT_NE(std::find(names.begin(), names.end(), required), names.end()) << required;
  }
}

TEST(JobSpecTest, ExamplesDescribeTheQuickstartModel) {
  for (const auto& entry : std::filesystem::directory_iterator(ExamplesDir())) {
    if (entry.path().extension() != ".yaml") continue;
    SCOPED_TRACE(entry.path().string());
    absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(ReadFile(entry.path()));
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(spec->model().layers(), 12);
    EXPECT_EQ(spec->model().d_model(), 128);
    EXPECT_EQ(spec->model().heads(), 4);
    EXPECT_EQ(spec->model().vocab_size(), 8192);
    EXPECT_EQ(spec->training().seq(), 64);
    EXPECT_EQ(spec->training().batch(), 16);
    EXPECT_EQ(spec->training().steps(), 600);
    EXPECT_DOUBLE_EQ(spec->optimizer().lr(), 2e-3);
    EXPECT_EQ(spec->optimizer().warmup_steps(), 60);
    EXPECT_EQ(ToVector(spec->data().train_shards()),
              std::vector<std::string>{"data/sotu-8k/train.bin"});
    EXPECT_EQ(ToVector(spec->data().val_shards()),
              std::vector<std::string>{"data/sotu-8k/val.bin"});
  }
}

TEST(JobSpecTest, RoundTripsThroughYaml) {
  std::vector<std::string> inputs;
  for (const auto& entry : std::filesystem::directory_iterator(ExamplesDir())) {
    if (entry.path().extension() == ".yaml") inputs.push_back(ReadFile(entry.path()));
  }
  // Strings YAML would read as something else, and values with no short decimal form.
  inputs.push_back(Minimal(R"(optimizer: {lr: 0.1, beta2: 0.999999, eps: 1.0e-300}
schedule: {raptr: {stages: [{path_length: 7, fraction: 0.3333333333333333},
  {path_length: 12, fraction: 0.6666666666666667}], no_fixed_layers: true}}
)"));
  inputs.back() = absl::StrReplaceAll(
      inputs.back(), {{"[train.bin]", R"(["null", "~", "", "true", "123", "a: b", "#x"])"}});
  for (const std::string& yaml : inputs) {
    absl::StatusOr<v1::JobSpec> first = ParseJobSpecYaml(yaml);
    ASSERT_TRUE(first.ok()) << first.status() << "\n" << yaml;
    const std::string written = JobSpecToYaml(*first);
    absl::StatusOr<v1::JobSpec> second = ParseJobSpecYaml(written);
    ASSERT_TRUE(second.ok()) << second.status() << "\n" << written;
    EXPECT_TRUE(MessageDifferencer::Equals(*first, *second)) << first->DebugString() << "\n---\n"
                                                             << second->DebugString() << "\n---\n"
                                                             << written;
    EXPECT_EQ(JobSpecToYaml(*second), written);  // stable: defaults add nothing the second time
  }
}

TEST(JobSpecTest, WritesReadableYaml) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(Minimal("schedule: {full: }\n"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  const std::string yaml = JobSpecToYaml(*spec);
  EXPECT_NE(yaml.find("kind: gpt"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("decay: cosine"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("lr: 0.001"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("train_shards: [train.bin]"), std::string::npos) << yaml;
  EXPECT_NE(yaml.find("full: {}"), std::string::npos) << yaml;
}

TEST(JobSpecTest, FillsDefaults) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(kMinimal);
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
  EXPECT_EQ(spec->model().kind(), v1::MODEL_KIND_GPT);
  EXPECT_EQ(spec->model().d_ff(), 512);
  EXPECT_EQ(spec->model().max_seq(), 64);
  EXPECT_FALSE(spec->data().has_mask_id());
  const v1::TrainingSpec& t = spec->training();
  EXPECT_EQ(t.seq(), 64);
  EXPECT_EQ(t.micro_batches(), 1);
  EXPECT_EQ(t.seed(), 1u);
  EXPECT_EQ(t.eval_every(), 100);
  EXPECT_EQ(t.eval_batches(), 8);
  EXPECT_EQ(t.checkpoint_every(), 100);
  const v1::OptimizerSpec& o = spec->optimizer();
  EXPECT_DOUBLE_EQ(o.lr(), 1e-3);
  EXPECT_DOUBLE_EQ(o.min_lr_ratio(), 0.1);
  EXPECT_EQ(o.warmup_steps(), 60);  // min(100, 600 / 10)
  EXPECT_EQ(o.decay(), v1::LR_DECAY_COSINE);
  EXPECT_DOUBLE_EQ(o.beta1(), 0.9);
  EXPECT_DOUBLE_EQ(o.beta2(), 0.95);
  EXPECT_DOUBLE_EQ(o.eps(), 1e-8);
  EXPECT_DOUBLE_EQ(o.weight_decay(), 0.1);
  EXPECT_DOUBLE_EQ(o.grad_clip(), 1.0);
  EXPECT_EQ(o.skipped(), v1::SKIPPED_LAYER_POLICY_ZERO_GRAD);
  // No schedule: RaPTr with the paper's default for L = 12.
  ASSERT_TRUE(spec->schedule().has_raptr());
  const v1::RaptrSchedule& r = spec->schedule().raptr();
  EXPECT_EQ(ToVector(r.fixed_layers()), (std::vector<int32_t>{0, 11}));
  EXPECT_FALSE(r.no_fixed_layers());
  ASSERT_EQ(r.stages_size(), 4);
  for (int s = 0; s < 4; ++s) {
    EXPECT_EQ(r.stages(s).path_length(), (std::vector<int>{6, 8, 10, 12}[s]));
    EXPECT_DOUBLE_EQ(r.stages(s).fraction(), 0.25);
  }
  EXPECT_EQ(RaptrStageSteps(*spec), (std::vector<int64_t>{150, 150, 150, 150}));
  EXPECT_EQ(r.sampling(), v1::PATH_SAMPLING_BERNOULLI);
  EXPECT_EQ(r.scaling(), v1::OUTPUT_SCALING_NONE);
  EXPECT_EQ(r.full_warmup_steps(), 0);
  EXPECT_EQ(spec->resources().min_workers(), 1);
  EXPECT_EQ(spec->resources().max_workers(), 1);
  EXPECT_EQ(spec->resources().priority(), 0);
  EXPECT_EQ(spec->resources().backend(), v1::BACKEND_CPU);
  EXPECT_EQ(spec->resources().attention(), v1::ATTENTION_AUTO);
}

TEST(JobSpecTest, ExplicitZerosAreNotDefaulted) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(
      Minimal("optimizer: {weight_decay: 0, grad_clip: 0, warmup_steps: 0, min_lr_ratio: 0}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
  EXPECT_EQ(spec->optimizer().weight_decay(), 0);
  EXPECT_EQ(spec->optimizer().grad_clip(), 0);
  EXPECT_EQ(spec->optimizer().warmup_steps(), 0);
  EXPECT_EQ(spec->optimizer().min_lr_ratio(), 0);
  spec = ParseJobSpecYaml(absl::StrReplaceAll(kMinimal, {{"  steps: 600", R"(  steps: 600
  eval_every: 0
  checkpoint_every: 0
  seed: 0)"}}));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->training().eval_every(), 0);
  EXPECT_EQ(spec->training().checkpoint_every(), 0);
  EXPECT_EQ(spec->training().seed(), 0u);
}

TEST(JobSpecTest, DefaultsDependOnTheModel) {
  // One block: the first and last fixed block are the same one.
  absl::StatusOr<v1::JobSpec> spec =
      ParseJobSpecYaml(absl::StrReplaceAll(kMinimal, {{"layers: 12", "layers: 1"}}));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
  EXPECT_EQ(ToVector(spec->schedule().raptr().fixed_layers()), std::vector<int32_t>{0});
  // No fixed layers: the default paths are not raised to |I|.
  spec = ParseJobSpecYaml(Minimal("schedule: {raptr: {no_fixed_layers: true}}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(spec->schedule().raptr().fixed_layers().empty());
  EXPECT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
  // Stacking grows strictly: equal default lengths of a 2-block model merge.
  spec = ParseJobSpecYaml(
      absl::StrReplaceAll(Minimal("schedule: {stacking: }\n"), {{"layers: 12", "layers: 2"}}));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
  const v1::StackingSchedule& stacking = spec->schedule().stacking();
  ASSERT_EQ(stacking.stages_size(), 2);
  EXPECT_EQ(stacking.stages(0).layers(), 1);
  EXPECT_EQ(stacking.stages(1).layers(), 2);
  // Depths L/2, 3L/4, L over thirds: 1, 2, 2 for L = 2, the last two merged.
  EXPECT_DOUBLE_EQ(stacking.stages(0).fraction(), 1.0 / 3);
  EXPECT_EQ(StackingStageSteps(*spec), (std::vector<int64_t>{200, 400}));
  // Other schedules' defaults; BERT; a short job's warmup.
  spec = ParseJobSpecYaml(Minimal("schedule: {pld: {}}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_DOUBLE_EQ(spec->schedule().pld().theta_bar(), 0.5);
  EXPECT_DOUBLE_EQ(spec->schedule().pld().gamma(), 0.001);
  spec = ParseJobSpecYaml(Minimal("schedule: {layerdrop: {}}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_DOUBLE_EQ(spec->schedule().layerdrop().keep_prob(), 0.75);
  EXPECT_EQ(spec->schedule().layerdrop().scale(), v1::OUTPUT_SCALING_NONE);
  spec = ParseJobSpecYaml(absl::StrReplaceAll(kMinimal, {{"steps: 600", "steps: 5000"}}));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->optimizer().warmup_steps(), 100);
}

TEST(JobSpecTest, EnumsByNameInAnyCase) {
  for (const char* decay : {"linear", "LINEAR", "Linear", "LR_DECAY_LINEAR", "\"linear\""}) {
    absl::StatusOr<v1::JobSpec> spec =
        ParseJobSpecYaml(Minimal(absl::StrCat("optimizer: {decay: ", decay, "}\n")));
    ASSERT_TRUE(spec.ok()) << decay << ": " << spec.status();
    EXPECT_EQ(spec->optimizer().decay(), v1::LR_DECAY_LINEAR) << decay;
  }
  EXPECT_TRUE(
      IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {decay: cosin}\n")),
                        "optimizer.decay: expected one of cosine, linear, constant, got 'cosin'"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {decay: unspecified}\n")),
                                "optimizer.decay: expected one of"));
}

TEST(JobSpecTest, UnknownFieldNamesItsPath) {
  EXPECT_TRUE(IsInvalidArgument(
      ParseAndValidate(Minimal(R"(schedule:
  raptr:
    stages:
      - {path_length: 6, steps: 300}
      - {pathlength: 12, steps: 300}
)")),
      "schedule.raptr.stages[1].pathlength: unknown field (did you mean path_length?)"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("resources: {gpus: 2}\n")),
                                "resources.gpus: unknown field (ResourceSpec has min_workers, "
                                "max_workers, priority, backend, attention)"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("epochs: 3\n")), "epochs: unknown field"));
  // The YAML position comes with it.
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("epochs: 3\n")), "(line 13"));
}

TEST(JobSpecTest, WrongTypeNamesTheField) {
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "layers: 12", "layers: twelve"),
                                "model.layers: expected a 32-bit integer, got 'twelve'"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "layers: 12", "layers: 12.5"),
                                "model.layers: expected a 32-bit integer"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "layers: 12", "layers: 99999999999"),
                                "model.layers: expected a 32-bit integer"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "steps: 600", "steps: \"600\""),
                                "training.steps: expected a 64-bit integer, got the quoted "
                                "string '600'"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "[train.bin]", "train.bin"),
                                "data.train_shards: expected a sequence, got 'train.bin'"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "[val.bin]", "[[val.bin]]"),
                                "data.val_shards[0]: expected a string, got a sequence"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: [lr, 1]\n")),
                                "optimizer: expected a map, got a sequence"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {lr: fast}\n")),
                                "optimizer.lr: expected a finite number, got 'fast'"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {lr: .nan}\n")),
                                "optimizer.lr: expected a finite number"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {lr: inf}\n")),
                                "optimizer.lr: expected a finite number"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {lr: }\n")),
                                "optimizer.lr: expected a finite number, got null"));
  EXPECT_TRUE(
      IsInvalidArgument(ParseAndValidate(Minimal("schedule: {raptr: {no_fixed_layers: yes}}\n")),
                        "schedule.raptr.no_fixed_layers: expected true or false"));
  EXPECT_TRUE(
      IsInvalidArgument(ParseAndValidate(absl::StrReplaceAll(kMinimal, {{"steps: 600", R"(steps: 600
  seed: -1)"}})),
                        "training.seed: expected a non-negative 64-bit integer"));
  EXPECT_TRUE(
      IsInvalidArgument(ParseAndValidate(Minimal("schedule: {raptr: {fixed_layers: [0, last]}}\n")),
                        "schedule.raptr.fixed_layers[1]: expected a 32-bit integer"));
}

TEST(JobSpecTest, MalformedDocuments) {
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate("name: [unclosed\n"), "line"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(""), "job spec:"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate("- name: a\n"),
                                "job spec: expected a map of JobSpec fields, got a sequence"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("---\nname: b\n")),
                                "expected one YAML document, got 2"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("name: again\n")), "name: duplicate key"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("model: {max_seq: 32}\n")),
                                "model: duplicate key"));
}

// Found by tests/fuzz/fuzz_job_spec (inputs in tests/fuzz/regressions/job_spec/): yaml-cpp's
// YAML::LoadAll returned endless empty documents on a stray ',' and never came back.
TEST(JobSpecTest, StrayCommaIsAnErrorNotAHang) {
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(","), "line 1, column 1"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(",N"), "line 1, column 1"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate("---\nname: a\n---\n, x\n"), "line 4, column 1"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("---\nname: b\n---\nname: c\n")),
                                "expected one YAML document, got 3"));
}

// Found by tests/fuzz/fuzz_job_spec: bytes that are not UTF-8 were taken into string fields,
// which proto3 cannot carry and JobSpecToYaml wrote back as U+FFFD.
TEST(JobSpecTest, StringsMustBeUtf8) {
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate("name: a\xff\n"),
                                "name: expected a UTF-8 string, got bytes that are not UTF-8"));
  EXPECT_TRUE(IsInvalidArgument(
      WithReplaced(kMinimal, "val_shards: [val.bin]", "val_shards: [ok.bin, \"v\xc0\xafl\"]"),
      "data.val_shards[1]: expected a UTF-8 string"));
  // Valid UTF-8 is kept as it is, and round-trips.
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(
      absl::StrReplaceAll(kMinimal, {{"[val.bin]", "[\"v\xc3\xa9l \xe2\x82\xac\"]"}}));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(spec->data().val_shards(0), "v\xc3\xa9l \xe2\x82\xac");
  absl::StatusOr<v1::JobSpec> reread = ParseJobSpecYaml(JobSpecToYaml(*spec));
  ASSERT_TRUE(reread.ok()) << reread.status();
  EXPECT_TRUE(MessageDifferencer::Equals(*spec, *reread));
}

// Found by tests/fuzz/fuzz_job_spec: yaml-cpp wrote a string ending in '\r' as a plain scalar,
// which reads back without it.
TEST(JobSpecTest, CarriageReturnsRoundTrip) {
  for (const char* shard : {"a\\r", "a\\rb", "\\r"}) {
    SCOPED_TRACE(shard);
    absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(
        absl::StrReplaceAll(kMinimal, {{"[val.bin]", absl::StrCat("[\"", shard, "\"]")}}));
    ASSERT_TRUE(spec.ok()) << spec.status();
    EXPECT_EQ(spec->data().val_shards(0), absl::StrReplaceAll(shard, {{"\\r", "\r"}}));
    absl::StatusOr<v1::JobSpec> reread = ParseJobSpecYaml(JobSpecToYaml(*spec));
    ASSERT_TRUE(reread.ok()) << reread.status();
    EXPECT_TRUE(MessageDifferencer::Equals(*spec, *reread)) << JobSpecToYaml(*spec);
  }
}

TEST(JobSpecTest, TwoOneofMembersNameBoth) {
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("schedule: {raptr: {}, pld: {}}\n")),
                                "schedule.raptr and schedule.pld are both set; choose one of "
                                "full, raptr, pld, layerdrop, stacking"));
  EXPECT_TRUE(IsInvalidArgument(
      ParseAndValidate(
          Minimal("schedule: {raptr: {stages: [{path_length: 6, steps: 100, fraction: 1}]}}\n")),
      "schedule.raptr.stages[0].steps and "
      "schedule.raptr.stages[0].fraction are both set"));
}

TEST(JobSpecTest, OutOfRangeNamesTheField) {
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {lr: -0.001}\n")),
                                "optimizer.lr must be > 0, got -0.001"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {lr: 0}\n")),
                                "optimizer.lr must be > 0, got 0"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {beta2: 1}\n")),
                                "optimizer.beta2 must be in [0, 1), got 1"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {min_lr_ratio: 1.5}\n")),
                                "optimizer.min_lr_ratio must be in [0, 1], got 1.5"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {eps: 0}\n")),
                                "optimizer.eps must be > 0"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {weight_decay: -1}\n")),
                                "optimizer.weight_decay must be >= 0"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "vocab_size: 8192", "vocab_size: 70000"),
                                "model.vocab_size must be in [1, 65536]"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "heads: 4", "heads: 3"),
                                "model.d_model (128) must be divisible by model.heads (3)"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "layers: 12", "layers: 0"),
                                "model.layers must be in [1, 1024], got 0"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "batch: 16", "batch: 0"),
                                "training.batch must be >= 1, got 0"));
  EXPECT_TRUE(IsInvalidArgument(
      WithReplaced(kMinimal, "vocab_size: 8192", "vocab_size: 8192\n  max_seq: 32"),
      "model.max_seq (32) must be >= training.seq (64)"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "[val.bin]", "[val.bin]\n  mask_id: 3"),
                                "data.mask_id is only for bert models"));
  EXPECT_TRUE(
      IsInvalidArgument(ParseAndValidate(Minimal("resources: {min_workers: 2, max_workers: 1}\n")),
                        "resources.max_workers (1) must be >= resources.min_workers"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("resources: {priority: 5000}\n")),
                                "resources.priority must be in [-1000, 1000], got 5000"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("resources: {min_workers: 3}\n")),
                                "training.batch (16) must be divisible by a worker count in "
                                "[resources.min_workers, resources.max_workers] = [3, 3]"));
  EXPECT_TRUE(ParseAndValidate(Minimal("resources: {min_workers: 3, max_workers: 4}\n")).ok());
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "name: tiny", "name: my job"),
                                "name 'my job' may only use"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "name: tiny\n", ""), "name is required"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "  steps: 600\n", ""),
                                "training.steps is required"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "  val_shards: [val.bin]\n", ""),
                                "data.val_shards is required"));
}

// Any world size in [min_workers, max_workers] that divides the batch will do; finding one tried
// every count, which took seconds for a prime batch near INT32_MAX (tests/fuzz/regressions/).
TEST(JobSpecTest, WorkerCountThatDividesTheBatch) {
  const auto with = [](int32_t batch, int32_t min_workers, int32_t max_workers) {
    return ParseAndValidate(absl::StrCat(
        absl::StrReplaceAll(kMinimal, {{"batch: 16", absl::StrCat("batch: ", batch)}}),
        "resources: {min_workers: ", min_workers, ", max_workers: ", max_workers, "}\n"));
  };
  constexpr int32_t kMax = std::numeric_limits<int32_t>::max();  // a prime
  EXPECT_TRUE(with(kMax, 2, kMax).ok());
  EXPECT_TRUE(with(kMax, kMax, kMax).ok());
  EXPECT_TRUE(IsInvalidArgument(with(kMax, 2, kMax - 1), "training.batch (2147483647) must be "));
  EXPECT_TRUE(with(kMax - 1, 3, 3).ok());  // 2147483646 = 2 * 3^2 * 7 * 11 * 31 * 151 * 331
  EXPECT_TRUE(IsInvalidArgument(with(kMax - 1, 4, 5), "must be divisible"));
  EXPECT_TRUE(with(12, 5, 6).ok());  // a divisor above sqrt(12)
  EXPECT_TRUE(with(12, 5, 100).ok());
  EXPECT_TRUE(IsInvalidArgument(with(12, 5, 5), "= [5, 5]"));
  EXPECT_TRUE(IsInvalidArgument(with(12, 13, 100), "= [13, 100]"));
  EXPECT_TRUE(with(1, 1, kMax).ok());
}

TEST(JobSpecTest, BertNeedsItsMaskId) {
  const std::string bert =
      absl::StrReplaceAll(kMinimal, {{"layers: 12", "layers: 12\n  kind: bert"}});
  EXPECT_TRUE(
      IsInvalidArgument(ParseAndValidate(bert), "data.mask_id (for a bert model) is required"));
  EXPECT_TRUE(WithReplaced(bert, "[val.bin]", "[val.bin]\n  mask_id: 3").ok());
  EXPECT_TRUE(
      IsInvalidArgument(WithReplaced(bert, "[val.bin]", "[val.bin]\n  mask_id: 8192"),
                        "data.mask_id must be in [0, model.vocab_size) = [0, 8192), got 8192"));
}

TEST(JobSpecTest, ImpossibleSchedulesNameTheField) {
  const auto raptr = [](const std::string& body) {
    return ParseAndValidate(Minimal(absl::StrCat("schedule:\n  raptr:\n", body)));
  };
  EXPECT_TRUE(IsInvalidArgument(
      raptr("    stages: [{path_length: 6, steps: 300}, {path_length: 13, steps: 300}]\n"),
      "schedule.raptr.stages[1].path_length (13) must be <= model.layers (12)"));
  EXPECT_TRUE(IsInvalidArgument(raptr("    stages: [{path_length: 1, steps: 600}]\n"),
                                "schedule.raptr.stages[0].path_length (1) must be >= 2 (the "
                                "number of fixed layers)"));
  EXPECT_TRUE(IsInvalidArgument(raptr("    fixed_layers: [0, 12]\n"),
                                "schedule.raptr.fixed_layers[1] (12) is not a block: must be "
                                "in [0, 12)"));
  EXPECT_TRUE(IsInvalidArgument(raptr("    fixed_layers: [-1]\n"),
                                "schedule.raptr.fixed_layers[0] (-1) is not a block"));
  EXPECT_TRUE(IsInvalidArgument(raptr("    fixed_layers: [3, 3]\n"),
                                "schedule.raptr.fixed_layers[1] (3) is listed twice"));
  EXPECT_TRUE(IsInvalidArgument(raptr("    fixed_layers: [0]\n    no_fixed_layers: true\n"),
                                "schedule.raptr.fixed_layers and "
                                "schedule.raptr.no_fixed_layers are both set"));
  EXPECT_TRUE(IsInvalidArgument(
      raptr("    stages: [{path_length: 6, fraction: 0.5}, {path_length: 12, fraction: 0.4}]\n"),
      "schedule.raptr.stages: the stages' fractions sum to 0.9, must sum to 1"));
  EXPECT_TRUE(IsInvalidArgument(
      raptr("    stages: [{path_length: 6, fraction: 0.5}, {path_length: 12, steps: 300}]\n"),
      "schedule.raptr.stages[1] has steps but schedule.raptr.stages[0] has "
      "fraction"));
  EXPECT_TRUE(IsInvalidArgument(raptr("    stages: [{path_length: 6}]\n"),
                                "schedule.raptr.stages[0] needs a duration: steps or fraction"));
  EXPECT_TRUE(IsInvalidArgument(
      raptr("    stages: [{path_length: 6, steps: 400}, {path_length: 12, steps: 300}]\n"),
      "schedule.raptr.stages: the stages' steps sum to 700, more than the "
      "600 steps available"));
  EXPECT_TRUE(IsInvalidArgument(
      raptr("    full_warmup_steps: 100\n"
            "    stages: [{path_length: 6, steps: 300}, {path_length: 12, steps: 300}]\n"),
      "more than the 500 steps available (training.steps 600 - "
      "schedule.raptr.full_warmup_steps 100)"));
  EXPECT_TRUE(
      IsInvalidArgument(raptr("    full_warmup_steps: 600\n"),
                        "schedule.raptr.full_warmup_steps (600) must be < training.steps (600)"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("optimizer: {warmup_steps: 600}\n")),
                                "optimizer.warmup_steps (600) must be < training.steps (600)"));
  // Four equal stages need at least four steps.
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(kMinimal, "steps: 600", "steps: 3"),
                                "schedule.raptr.stages[0].fraction (0.25) of the 3 steps "
                                "available (training.steps 3 - "
                                "schedule.raptr.full_warmup_steps 0) is less than one step"));
  const auto stacking = [](const std::string& stages) {
    return ParseAndValidate(
        Minimal(absl::StrCat("schedule: {stacking: {stages: ", stages, "}}\n")));
  };
  EXPECT_TRUE(
      IsInvalidArgument(stacking("[{layers: 8, fraction: 0.5}, {layers: 6, fraction: 0.5}]"),
                        "schedule.stacking.stages[1].layers (6) must be more than "
                        "schedule.stacking.stages[0].layers (8)"));
  EXPECT_TRUE(
      IsInvalidArgument(stacking("[{layers: 6, fraction: 0.5}, {layers: 10, fraction: 0.5}]"),
                        "schedule.stacking.stages[1].layers (10) must be model.layers "
                        "(12)"));
  EXPECT_TRUE(
      IsInvalidArgument(stacking("[{layers: 6, fraction: 0.5}, {layers: 13, fraction: 0.5}]"),
                        "schedule.stacking.stages[1].layers (13) must be in [1, "
                        "model.layers] = [1, 12]"));
  EXPECT_TRUE(IsInvalidArgument(ParseAndValidate(Minimal("schedule: {pld: {theta_bar: 0}}\n")),
                                "schedule.pld.theta_bar must be in (0, 1], got 0"));
  EXPECT_TRUE(
      IsInvalidArgument(ParseAndValidate(Minimal("schedule: {layerdrop: {keep_prob: 1.5}}\n")),
                        "schedule.layerdrop.keep_prob must be in (0, 1], got 1.5"));
}

TEST(JobSpecTest, ValidatesProtosThatSkippedTheYaml) {
  // A spec built in code (as a gRPC client sends it) gets the same defaults and checks.
  v1::JobSpec spec;
  spec.set_name("from-code");
  spec.mutable_model()->set_layers(4);
  spec.mutable_model()->set_d_model(64);
  spec.mutable_model()->set_heads(2);
  spec.mutable_model()->set_vocab_size(256);
  spec.mutable_data()->add_train_shards("t.bin");
  spec.mutable_data()->add_val_shards("v.bin");
  spec.mutable_training()->set_steps(100);
  EXPECT_TRUE(IsInvalidArgument(ValidateJobSpec(spec), "training.batch is required"));
  ApplyJobSpecDefaults(&spec);
  EXPECT_TRUE(ValidateJobSpec(spec).ok()) << ValidateJobSpec(spec);
  spec.mutable_optimizer()->set_decay(static_cast<v1::LrDecay>(42));
  EXPECT_TRUE(IsInvalidArgument(ValidateJobSpec(spec),
                                "optimizer.decay must be one of cosine, linear, constant"));
  spec.mutable_optimizer()->set_decay(v1::LR_DECAY_LINEAR);
  spec.mutable_optimizer()->set_lr(std::numeric_limits<double>::quiet_NaN());
  EXPECT_TRUE(IsInvalidArgument(ValidateJobSpec(spec), "optimizer.lr must be a finite number"));
}

TEST(JobSpecTest, StageStepsFollowTheFractionRule) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(Minimal(R"(schedule:
  raptr:
    stages:
      - {path_length: 6, fraction: 0.3333333333333333}
      - {path_length: 8, fraction: 0.3333333333333333}
      - {path_length: 12, fraction: 0.3333333333333334}
)"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
  EXPECT_EQ(RaptrStageSteps(*spec), (std::vector<int64_t>{200, 200, 200}));
  // Ten steps in four quarters: boundaries floor(2.5), 5, floor(7.5), 10.
  spec = ParseJobSpecYaml(absl::StrReplaceAll(kMinimal, {{"steps: 600", "steps: 10"}}));
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
  EXPECT_EQ(RaptrStageSteps(*spec), (std::vector<int64_t>{2, 3, 2, 3}));
  // A full warmup comes off the top; explicit steps are returned as written.
  spec =
      ParseJobSpecYaml(Minimal("schedule: {raptr: {full_warmup_steps: 100, stages: "
                               "[{path_length: 6, fraction: 0.5}, {path_length: 12, "
                               "fraction: 0.5}]}}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_EQ(RaptrStageSteps(*spec), (std::vector<int64_t>{250, 250}));
  spec =
      ParseJobSpecYaml(Minimal("schedule: {raptr: {stages: [{path_length: 6, steps: 100}, "
                               "{path_length: 12, steps: 100}]}}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  EXPECT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
  EXPECT_EQ(RaptrStageSteps(*spec), (std::vector<int64_t>{100, 100}));
  EXPECT_TRUE(StackingStageSteps(*spec).empty());
}

// With training.steps near INT64_MAX a stage's end, steps * (f_1 + ... + f_s), rounds to 2^63,
// and converting that to int64_t was undefined behaviour (tests/fuzz/regressions/job_spec/).
TEST(JobSpecTest, StageStepsOfTheLargestBudget) {
  const std::string huge =
      absl::StrReplaceAll(kMinimal, {{"steps: 600", "steps: 9223372036854775807"}});
  absl::StatusOr<v1::JobSpec> spec =
      ParseJobSpecYaml(absl::StrCat(huge,
                                    "schedule: {raptr: {stages: [{path_length: 6, fraction: 0.5}, "
                                    "{path_length: 12, fraction: 0.5}]}}\n"));
  ASSERT_TRUE(spec.ok()) << spec.status();
  ASSERT_TRUE(ValidateJobSpec(*spec).ok()) << ValidateJobSpec(*spec);
  EXPECT_EQ(RaptrStageSteps(*spec),
            (std::vector<int64_t>{4611686018427387904, 4611686018427387903}));
  // Fractions may sum to a little over 1: the first stage then ends at the last step.
  EXPECT_TRUE(IsInvalidArgument(
      ParseAndValidate(absl::StrCat(huge,
                                    "schedule: {raptr: {stages: [{path_length: 6, fraction: "
                                    "1}, {path_length: 12, fraction: 5e-7}]}}\n")),
      "schedule.raptr.stages[1].fraction (5e-07) of the 9223372036854775807 steps available"));
}

TEST(JobSpecTest, GenericWalkHandlesMapsAndOneofsOfAnyMessage) {
  // google.protobuf.Struct: a map<string, Value>, Value a oneof of kinds.
  google::protobuf::Struct parsed;
  ASSERT_TRUE(YamlToProto(R"(fields:
  b: {number_value: 2.5}
  a: {string_value: x, }
  c: {struct_value: {fields: {inner: {bool_value: true}}}}
)",
                          &parsed)
                  .ok());
  ASSERT_EQ(parsed.fields().size(), 3u);
  EXPECT_EQ(parsed.fields().at("a").string_value(), "x");
  EXPECT_EQ(parsed.fields().at("b").number_value(), 2.5);
  EXPECT_TRUE(parsed.fields().at("c").struct_value().fields().at("inner").bool_value());
  const std::string yaml = ProtoToYaml(parsed);
  EXPECT_LT(yaml.find("a:"), yaml.find("b:"));  // map keys sorted
  google::protobuf::Struct reparsed;
  ASSERT_TRUE(YamlToProto(yaml, &reparsed).ok()) << yaml;
  EXPECT_TRUE(MessageDifferencer::Equals(parsed, reparsed)) << yaml;
  EXPECT_TRUE(
      IsInvalidArgument(YamlToProto("fields: {a: {number_value: 1, bool_value: true}}\n", &parsed),
                        "fields[a].number_value and fields[a].bool_value are both set"));
  EXPECT_TRUE(IsInvalidArgument(YamlToProto("fields: {a: {number_vale: 1}}\n", &parsed),
                                "fields[a].number_vale: unknown field (did you mean "
                                "number_value?)"));
  EXPECT_TRUE(IsInvalidArgument(YamlToProto("fields: {a: {}, a: {}}\n", &parsed),
                                "fields[a]: duplicate key"));
}

// One spec must not make the coordinator plan (or a worker allocate) absurd sizes: model
// dimensions have documented upper bounds (job.proto's ModelSpec).
TEST(JobSpecTest, ModelSizesAreBounded) {
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(Minimal(), "layers: 12", "layers: 2147483647"),
                                "model.layers must be in [1, 1024], got 2147483647"));
  EXPECT_TRUE(WithReplaced(Minimal(), "layers: 12", "layers: 1024").ok());
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(Minimal(), "d_model: 128", "d_model: 131072"),
                                "model.d_model must be in [1, 65536]"));
  EXPECT_TRUE(IsInvalidArgument(WithReplaced(Minimal(), "heads: 4", "heads: 256"),
                                "model.heads must be in [1, 128]"));
  EXPECT_TRUE(IsInvalidArgument(
      WithReplaced(Minimal(), "vocab_size: 8192", "vocab_size: 8192\n  max_seq: 2000000"),
      "model.max_seq must be in [1, 1048576]"));
  EXPECT_TRUE(IsInvalidArgument(
      WithReplaced(Minimal(), "vocab_size: 8192", "vocab_size: 8192\n  d_ff: 300000"),
      "model.d_ff must be in [1, 262144]"));
}

// List limits: a spec cannot make a worker open, or the coordinator check and plan, an unbounded
// number of shards or stages (the 64 KiB cap on an encoded spec is JobService's; these hold for
// every entry point).
TEST(JobSpecTest, ShardCountsAreBounded) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(Minimal());
  ASSERT_TRUE(spec.ok()) << spec.status();
  for (int i = 1; i < 4096; ++i) spec->mutable_data()->add_train_shards(absl::StrCat(i, ".bin"));
  EXPECT_TRUE(ValidateJobSpec(*spec).ok());  // 4096: the cap itself
  spec->mutable_data()->add_train_shards("one-too-many.bin");
  EXPECT_TRUE(IsInvalidArgument(ValidateJobSpec(*spec),
                                "data.train_shards has 4097 shards, more than the 4096 allowed"));
  spec = ParseJobSpecYaml(Minimal());
  ASSERT_TRUE(spec.ok());
  for (int i = 1; i <= 4096; ++i) spec->mutable_data()->add_val_shards(absl::StrCat(i, ".bin"));
  EXPECT_TRUE(IsInvalidArgument(ValidateJobSpec(*spec),
                                "data.val_shards has 4097 shards, more than the 4096 allowed"));
}

TEST(JobSpecTest, ShardPathsAreBoundedAndHoldNoNul) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(Minimal());
  ASSERT_TRUE(spec.ok()) << spec.status();
  spec->mutable_data()->add_val_shards(std::string(4096, 'a'));
  EXPECT_TRUE(ValidateJobSpec(*spec).ok());
  spec->mutable_data()->set_val_shards(1, std::string(4097, 'a'));
  EXPECT_TRUE(IsInvalidArgument(ValidateJobSpec(*spec),
                                "data.val_shards[1] is 4097 bytes long, more than the 4096"));
  // open(2) would stop at the NUL: the file opened would not be the one named (and confined).
  EXPECT_TRUE(IsInvalidArgument(
      ParseAndValidate(absl::StrReplaceAll(Minimal(), {{"[train.bin]", R"(["ok.bin", "a\0b"])"}})),
      "data.train_shards[1] holds a NUL byte"));
}

TEST(JobSpecTest, StageCountsAreBounded) {
  // RaPTr stages are otherwise bounded only by the steps: 1024 one-step stages are fine...
  std::string stages;
  for (int i = 0; i < 1024; ++i) absl::StrAppend(&stages, "{path_length: 12, steps: 1}, ");
  const std::string raptr = absl::StrCat("schedule: {raptr: {stages: [", stages, "]}}\n");
  EXPECT_TRUE(WithReplaced(Minimal(raptr), "steps: 600", "steps: 2000").ok());
  // ...one more is refused before any is looked at.
  const std::string too_many =
      absl::StrCat("schedule: {raptr: {stages: [", stages, "{path_length: 12, steps: 1}]}}\n");
  EXPECT_TRUE(
      IsInvalidArgument(WithReplaced(Minimal(too_many), "steps: 600", "steps: 2000"),
                        "schedule.raptr.stages has 1025 stages, more than the 1024 allowed"));
  // Stacking stages grow strictly up to model.layers (<= 1024), and the count is checked first.
  std::string stacking;
  for (int i = 0; i < 1025; ++i) absl::StrAppend(&stacking, "{layers: 12, steps: 1}, ");
  EXPECT_TRUE(IsInvalidArgument(
      ParseAndValidate(Minimal(absl::StrCat("schedule: {stacking: {stages: [", stacking, "]}}\n"))),
      "schedule.stacking.stages has 1025 stages, more than the 1024 allowed"));
}

TEST(JobSpecTest, MinimumMemoryIsSixteenBytesPerParameter) {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(Minimal());
  ASSERT_TRUE(spec.ok()) << spec.status();
  // L=12, C=128, F=512, V=8192, P=64: embeddings, 12 blocks, ln_f (the engine's count is checked
  // against ParamLayout in job_config_test.cc).
  const int64_t per_block = 4 * 128 * 128 + 2 * 512 * 128 + 9 * 128 + 512;
  EXPECT_EQ(JobParameterCount(*spec), 8192 * 128 + 64 * 128 + 12 * per_block + 2 * 128);
  EXPECT_EQ(JobMinimumMemoryBytes(*spec), 16 * JobParameterCount(*spec));
  // The largest model the limits allow still fits an int64 many times over.
  spec->mutable_model()->set_layers(1024);
  spec->mutable_model()->set_d_model(65536);
  spec->mutable_model()->set_heads(1);
  spec->mutable_model()->set_d_ff(262144);
  spec->mutable_model()->set_vocab_size(65536);
  spec->mutable_model()->set_max_seq(1 << 20);
  ASSERT_TRUE(ValidateJobSpec(*spec).ok());
  EXPECT_GT(JobMinimumMemoryBytes(*spec), int64_t{1} << 49);
  EXPECT_LT(JobMinimumMemoryBytes(*spec), int64_t{1} << 51);
}

}  // namespace
}  // namespace raptr
