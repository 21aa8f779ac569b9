// libFuzzer target: the YAML job spec parser and validator (common/job_spec.h), and what the
// coordinator derives from a spec it accepts (common/job_plan.h, PlanPath).
//
// Besides "no crash, no UB, no leak", it checks two properties the coordinator relies on:
// - every parsed spec survives JobSpecToYaml -> ParseJobSpecYaml unchanged (the job store keeps
//   the YAML form and job_spec.h promises it reads back to an equal proto);
// - a spec ValidateJobSpec accepts is one the engine's planner accepts too (job_plan.h).
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>
#include <string_view>
#include <vector>

#include "common/job_plan.h"
#include "common/job_spec.h"
#include "common/path_schedule.h"
#include "google/protobuf/util/message_differencer.h"

namespace {

[[noreturn]] void Fail(const char* what, const std::string& detail) {
  std::fprintf(stderr, "fuzz_job_spec: %s\n%s\n", what, detail.c_str());
  std::abort();
}

// Plans a few steps the way the coordinator's StepPlanner does, where a mistake would surface:
// the first and last step and either side of every stage boundary. Models wider than this are
// skipped: a plan holds one flag per block, so huge layer counts only measure memory.
constexpr int kMaxPlannedLayers = 4096;

void PlanSomeSteps(const raptr::v1::JobSpec& spec, const raptr::PathScheduleConfig& schedule) {
  const int num_layers = spec.model().layers();
  if (num_layers > kMaxPlannedLayers) return;
  const int64_t steps = spec.training().steps();
  std::vector<int64_t> probe = {0, steps - 1, schedule.full_warmup_steps};
  int64_t boundary = schedule.full_warmup_steps;
  for (const raptr::RaptrStage& stage : schedule.stages) {
    if (__builtin_add_overflow(boundary, stage.steps, &boundary)) break;
    probe.push_back(boundary - 1);
    probe.push_back(boundary);
  }
  for (int64_t step : probe) {
    step = std::clamp<int64_t>(step, 0, steps - 1);
    const raptr::PathPlan plan =
        raptr::PlanPath(schedule, num_layers, spec.training().seed(), step);
    if (static_cast<int>(plan.active.size()) != num_layers ||
        static_cast<int>(plan.scale.size()) != num_layers) {
      Fail("PlanPath returned a plan of the wrong size", spec.DebugString());
    }
    (void)raptr::StackingCopiesAtStep(schedule, num_layers, step);
  }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view yaml(reinterpret_cast<const char*>(data), size);
  absl::StatusOr<raptr::v1::JobSpec> spec = raptr::ParseJobSpecYaml(yaml);
  if (!spec.ok()) return 0;

  const std::string written = raptr::JobSpecToYaml(*spec);
  absl::StatusOr<raptr::v1::JobSpec> reread = raptr::ParseJobSpecYaml(written);
  if (!reread.ok()) {
    Fail("JobSpecToYaml wrote YAML that ParseJobSpecYaml refuses",
         "error: " + std::string(reread.status().message()) + "\nYAML:\n" + written);
  }
  if (!google::protobuf::util::MessageDifferencer::Equals(*spec, *reread)) {
    Fail("JobSpecToYaml -> ParseJobSpecYaml changed the spec",
         "before:\n" + spec->DebugString() + "after:\n" + reread->DebugString() + "YAML:\n" +
             written);
  }

  if (!raptr::ValidateJobSpec(*spec).ok()) return 0;
  (void)raptr::RaptrStageSteps(*spec);
  (void)raptr::StackingStageSteps(*spec);
  absl::StatusOr<raptr::OptimizerConfig> optimizer = raptr::OptimizerConfigFromJobSpec(*spec);
  if (!optimizer.ok()) {
    Fail("ValidateJobSpec accepted a spec OptimizerConfigFromJobSpec refuses",
         std::string(optimizer.status().message()) + "\n" + spec->DebugString());
  }
  absl::StatusOr<raptr::PathScheduleConfig> schedule = raptr::PathScheduleFromJobSpec(*spec);
  if (!schedule.ok()) {
    Fail("ValidateJobSpec accepted a spec PathScheduleFromJobSpec refuses",
         std::string(schedule.status().message()) + "\n" + spec->DebugString());
  }
  PlanSomeSteps(*spec, *schedule);
  return 0;
}
