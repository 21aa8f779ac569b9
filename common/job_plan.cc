// JobSpec -> the optimizer settings and path schedule (see job_plan.h).
#include "common/job_plan.h"

#include <cstdint>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "common/status.h"

namespace raptr {
namespace {

absl::Status BadEnum(const char* path, int value) {
  return absl::InvalidArgumentError(absl::StrCat(path, ": unsupported value ", value));
}

absl::StatusOr<PathScaling> ToScaling(const char* path, v1::OutputScaling scaling) {
  switch (scaling) {
    case v1::OUTPUT_SCALING_NONE:
      return PathScaling::kNone;
    case v1::OUTPUT_SCALING_INVERSE_KEEP_PROB:
      return PathScaling::kInverseKeepProb;
    default:
      return BadEnum(path, scaling);
  }
}

// Stages with resolved step counts: `lengths[i]` for `steps[i]` steps.
template <typename Stages, typename Length>
std::vector<RaptrStage> ResolvedStages(const Stages& stages, const std::vector<int64_t>& steps,
                                       Length length) {
  std::vector<RaptrStage> out;
  for (int i = 0; i < stages.size() && i < static_cast<int>(steps.size()); ++i) {
    out.push_back(RaptrStage{length(stages.Get(i)), steps[i]});
  }
  return out;
}

}  // namespace

absl::StatusOr<OptimizerConfig> OptimizerConfigFromJobSpec(const v1::JobSpec& spec) {
  const v1::OptimizerSpec& o = spec.optimizer();
  OptimizerConfig out;
  out.lr = o.lr();
  out.min_lr_ratio = o.min_lr_ratio();
  out.warmup_steps = o.warmup_steps();
  out.total_steps = spec.training().steps();
  switch (o.decay()) {
    case v1::LR_DECAY_COSINE:
      out.decay = LrDecay::kCosine;
      break;
    case v1::LR_DECAY_LINEAR:
      out.decay = LrDecay::kLinear;
      break;
    case v1::LR_DECAY_CONSTANT:
      out.decay = LrDecay::kConstant;
      break;
    default:
      return BadEnum("optimizer.decay", o.decay());
  }
  out.beta1 = o.beta1();
  out.beta2 = o.beta2();
  out.eps = o.eps();
  out.weight_decay = o.weight_decay();
  out.grad_clip = o.grad_clip();
  switch (o.skipped()) {
    case v1::SKIPPED_LAYER_POLICY_ZERO_GRAD:
      out.skipped = SkippedLayerPolicy::kZeroGrad;
      break;
    case v1::SKIPPED_LAYER_POLICY_FROZEN:
      out.skipped = SkippedLayerPolicy::kFrozen;
      break;
    case v1::SKIPPED_LAYER_POLICY_ZERO_GRAD_NO_DECAY:
      out.skipped = SkippedLayerPolicy::kZeroGradNoDecay;
      break;
    case v1::SKIPPED_LAYER_POLICY_MOMENTS_ONLY:
      out.skipped = SkippedLayerPolicy::kMomentsOnly;
      break;
    default:
      return BadEnum("optimizer.skipped", o.skipped());
  }
  return out;
}

absl::StatusOr<PathScheduleConfig> PathScheduleFromJobSpec(const v1::JobSpec& spec) {
  const v1::ScheduleSpec& s = spec.schedule();
  PathScheduleConfig out;  // its defaults are overwritten for the fields each kind uses
  out.layerdrop_scale = false;
  switch (s.kind_case()) {
    case v1::ScheduleSpec::kFull:
      out.kind = PathScheduleConfig::Kind::kFull;
      break;
    case v1::ScheduleSpec::kRaptr: {
      const v1::RaptrSchedule& r = s.raptr();
      out.kind = PathScheduleConfig::Kind::kRaptr;
      out.stages = ResolvedStages(r.stages(), RaptrStageSteps(spec),
                                  [](const v1::RaptrStage& st) { return st.path_length(); });
      if (!r.no_fixed_layers())
        out.fixed_layers.assign(r.fixed_layers().begin(), r.fixed_layers().end());
      switch (r.sampling()) {
        case v1::PATH_SAMPLING_BERNOULLI:
          out.sampling = PathSampling::kBernoulli;
          break;
        case v1::PATH_SAMPLING_EXACT:
          out.sampling = PathSampling::kExact;
          break;
        default:
          return BadEnum("schedule.raptr.sampling", r.sampling());
      }
      ASSIGN_OR_RETURN(out.scaling, ToScaling("schedule.raptr.scaling", r.scaling()));
      out.full_warmup_steps = r.full_warmup_steps();
      break;
    }
    case v1::ScheduleSpec::kPld:
      out.kind = PathScheduleConfig::Kind::kPld;
      out.pld_theta_bar = s.pld().theta_bar();
      switch (s.pld().indexing()) {
        case v1::PLD_INDEXING_PAPER:
          out.pld_indexing = PldIndexing::kPaper;
          break;
        case v1::PLD_INDEXING_DEEPSPEED:
          out.pld_indexing = PldIndexing::kDeepSpeed;
          break;
        default:
          return BadEnum("schedule.pld.indexing", s.pld().indexing());
      }
      if (s.pld().has_mean_keep()) {
        ASSIGN_OR_RETURN(out.pld_gamma, PldGammaForMeanKeep(out, spec.model().layers(),
                                                            spec.training().steps(),
                                                            s.pld().mean_keep()));
      } else {
        out.pld_gamma = s.pld().gamma();
      }
      break;
    case v1::ScheduleSpec::kLayerdrop: {
      out.kind = PathScheduleConfig::Kind::kLayerDrop;
      out.keep_prob = s.layerdrop().keep_prob();
      ASSIGN_OR_RETURN(PathScaling scale,
                       ToScaling("schedule.layerdrop.scale", s.layerdrop().scale()));
      out.layerdrop_scale = scale == PathScaling::kInverseKeepProb;
      out.fixed_layers.assign(s.layerdrop().fixed_layers().begin(),
                              s.layerdrop().fixed_layers().end());
      break;
    }
    case v1::ScheduleSpec::kStacking:
      out.kind = PathScheduleConfig::Kind::kStacking;
      out.stages = ResolvedStages(s.stacking().stages(), StackingStageSteps(spec),
                                  [](const v1::StackingStage& st) { return st.layers(); });
      break;
    default:
      return absl::InvalidArgumentError("schedule: no schedule kind set");
  }
  // ValidateJobSpec already checked the spec; this checks the mapping agrees with the engine.
  RETURN_IF_ERROR(ValidatePathSchedule(out, spec.model().layers()));
  return out;
}

}  // namespace raptr
