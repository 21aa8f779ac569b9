// Job spec -> TrainerConfig: every JobSpec field mapped onto the engine, or refused by name.
#include "worker/job_config.h"

#include <cstdint>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "absl/status/status.h"
#include "absl/strings/str_cat.h"
#include "common/job_plan.h"
#include "common/job_spec.h"
#include "common/path_schedule.h"
#include "common/status.h"
#include "google/protobuf/descriptor.h"
#include "google/protobuf/message.h"

namespace raptr {
namespace {

namespace pb = ::google::protobuf;

// Every JobSpec field TrainerConfigFromJobSpec reads (or knowingly leaves to the coordinator:
// name, resources.*), as "MessageType.field". A field not listed is refused when set.
const std::set<std::string>& HandledFields() {
  static const auto* const kFields = new std::set<std::string>{
      "JobSpec.name", "JobSpec.model", "JobSpec.data", "JobSpec.training", "JobSpec.optimizer",
      "JobSpec.schedule", "JobSpec.resources",
      // model
      "ModelSpec.kind", "ModelSpec.layers", "ModelSpec.d_model", "ModelSpec.heads",
      "ModelSpec.d_ff", "ModelSpec.vocab_size", "ModelSpec.max_seq",
      // data
      "DataSpec.train_shards", "DataSpec.val_shards", "DataSpec.mask_id",
      // training
      "TrainingSpec.batch", "TrainingSpec.seq", "TrainingSpec.micro_batches", "TrainingSpec.steps",
      "TrainingSpec.seed", "TrainingSpec.eval_every", "TrainingSpec.eval_batches",
      "TrainingSpec.checkpoint_every",
      // optimizer
      "OptimizerSpec.lr", "OptimizerSpec.min_lr_ratio", "OptimizerSpec.warmup_steps",
      "OptimizerSpec.decay", "OptimizerSpec.beta1", "OptimizerSpec.beta2", "OptimizerSpec.eps",
      "OptimizerSpec.weight_decay", "OptimizerSpec.grad_clip", "OptimizerSpec.skipped",
      // schedule
      "ScheduleSpec.full", "ScheduleSpec.raptr", "ScheduleSpec.pld", "ScheduleSpec.layerdrop",
      "ScheduleSpec.stacking", "RaptrSchedule.stages", "RaptrSchedule.fixed_layers",
      "RaptrSchedule.no_fixed_layers", "RaptrSchedule.sampling", "RaptrSchedule.scaling",
      "RaptrSchedule.full_warmup_steps", "RaptrStage.path_length", "RaptrStage.steps",
      "RaptrStage.fraction", "PldSchedule.theta_bar", "PldSchedule.gamma",
      "PldSchedule.mean_keep", "PldSchedule.indexing", "LayerDropSchedule.keep_prob",
      "LayerDropSchedule.scale", "LayerDropSchedule.fixed_layers", "StackingSchedule.stages",
      "StackingStage.layers", "StackingStage.steps", "StackingStage.fraction",
      // resources: scheduling (min/max workers, priority) and the backend (TrainerConfig.backend)
      "ResourceSpec.min_workers", "ResourceSpec.max_workers", "ResourceSpec.priority",
      "ResourceSpec.backend", "ResourceSpec.attention"};
  return *kFields;
}

// UNIMPLEMENTED naming the first set field (or unknown field) of `message` that the mapping does
// not know, so a field added to job.proto later is refused rather than silently dropped.
absl::Status CheckEveryFieldHandled(const pb::Message& message, const std::string& path) {
  const pb::Reflection* reflection = message.GetReflection();
  if (!reflection->GetUnknownFields(message).empty()) {
    return absl::UnimplementedError(
        absl::StrCat(path.empty() ? "job spec" : path,
                     ": carries fields unknown to this worker's job.proto; upgrade the worker"));
  }
  std::vector<const pb::FieldDescriptor*> fields;
  reflection->ListFields(message, &fields);
  for (const pb::FieldDescriptor* field : fields) {
    const std::string field_path =
        path.empty() ? field->name() : absl::StrCat(path, ".", field->name());
    if (HandledFields().count(absl::StrCat(field->containing_type()->name(), ".", field->name())) ==
        0) {
      return absl::UnimplementedError(
          absl::StrCat(field_path, ": not supported by the trainer yet (this worker ignores it)"));
    }
    if (field->cpp_type() != pb::FieldDescriptor::CPPTYPE_MESSAGE) continue;
    if (field->is_repeated()) {
      for (int i = 0; i < reflection->FieldSize(message, field); ++i) {
        RETURN_IF_ERROR(CheckEveryFieldHandled(reflection->GetRepeatedMessage(message, field, i),
                                               absl::StrCat(field_path, "[", i, "]")));
      }
    } else {
      RETURN_IF_ERROR(CheckEveryFieldHandled(reflection->GetMessage(message, field), field_path));
    }
  }
  return absl::OkStatus();
}

absl::Status MapModel(const v1::JobSpec& spec, TrainerConfig* cfg) {
  const v1::ModelSpec& m = spec.model();
  switch (m.kind()) {
    case v1::MODEL_KIND_GPT:
      cfg->model.kind = ModelKind::kGpt;
      break;
    case v1::MODEL_KIND_BERT:
      cfg->model.kind = ModelKind::kBert;
      break;
    default:
      return absl::InvalidArgumentError(absl::StrCat("model.kind: unsupported value ", m.kind()));
  }
  cfg->model.num_layers = m.layers();
  cfg->model.d_model = m.d_model();
  cfg->model.num_heads = m.heads();
  cfg->model.d_ff = m.d_ff();
  cfg->model.vocab_size = m.vocab_size();
  cfg->model.max_seq = m.max_seq();
  return absl::OkStatus();
}

void MapDataAndTraining(const v1::JobSpec& spec, TrainerConfig* cfg) {
  const v1::DataSpec& d = spec.data();
  cfg->train_shards.assign(d.train_shards().begin(), d.train_shards().end());
  cfg->val_shards.assign(d.val_shards().begin(), d.val_shards().end());
  // GPT specs may not set mask_id (ValidateJobSpec): -1 is the engine's "none".
  cfg->mask_id = d.has_mask_id() ? d.mask_id() : -1;
  const v1::TrainingSpec& t = spec.training();
  cfg->batch = t.batch();
  cfg->seq = t.seq();
  cfg->micro_batches = t.micro_batches();
  cfg->steps = t.steps();
  cfg->seed = t.seed();
  cfg->init_seed = 0;  // the weights use training.seed too
  cfg->eval_every = t.eval_every();
  cfg->eval_batches = t.eval_batches();
  cfg->checkpoint_every = t.checkpoint_every();
}

// `paths`, each resolved inside `roots` under its field name `field`[i].
absl::StatusOr<std::vector<std::string>> ResolveAll(const DataRoots& roots,
                                                    const std::vector<std::string>& paths,
                                                    const std::string& field) {
  std::vector<std::string> resolved;
  for (size_t i = 0; i < paths.size(); ++i) {
    ASSIGN_OR_RETURN(std::string path, roots.Resolve(paths[i], absl::StrCat(field, "[", i, "]")));
    resolved.push_back(std::move(path));
  }
  return resolved;
}

}  // namespace

absl::StatusOr<TrainerConfig> TrainerConfigFromJobSpec(const v1::JobSpec& spec) {
  RETURN_IF_ERROR(ValidateJobSpec(spec));
  RETURN_IF_ERROR(CheckEveryFieldHandled(spec, ""));
  TrainerConfig cfg;
  switch (spec.resources().backend()) {
    case v1::BACKEND_UNSPECIFIED:  // omitted: CPU
    case v1::BACKEND_CPU:
      cfg.backend.kind = BackendKind::kCpu;
      break;
    case v1::BACKEND_CUDA:
      cfg.backend.kind = BackendKind::kCuda;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("resources.backend: unsupported value ", spec.resources().backend()));
  }
  switch (spec.resources().attention()) {
    case v1::ATTENTION_UNSPECIFIED:  // omitted (and every spec stored before the field): AUTO
    case v1::ATTENTION_AUTO:
      cfg.attention = std::nullopt;
      break;
    case v1::ATTENTION_MATERIALIZED:
      cfg.attention = AttentionKind::kMaterialized;
      break;
    case v1::ATTENTION_FLASH:
      cfg.attention = AttentionKind::kFlash;
      break;
    default:
      return absl::InvalidArgumentError(
          absl::StrCat("resources.attention: unsupported value ", spec.resources().attention()));
  }
  RETURN_IF_ERROR(MapModel(spec, &cfg));
  MapDataAndTraining(spec, &cfg);
  ASSIGN_OR_RETURN(cfg.optimizer, OptimizerConfigFromJobSpec(spec));
  ASSIGN_OR_RETURN(cfg.schedule, PathScheduleFromJobSpec(spec));
  RETURN_IF_ERROR(cfg.model.Validate());
  return cfg;
}

absl::StatusOr<TrainerConfig> TrainerConfigForWorker(const v1::JobSpec& spec,
                                                     const BackendOptions& worker) {
  ASSIGN_OR_RETURN(TrainerConfig cfg, TrainerConfigFromJobSpec(spec));
  if (cfg.backend.kind != worker.kind) {
    return absl::FailedPreconditionError(
        absl::StrCat("resources.backend: the job runs on ", BackendKindName(cfg.backend.kind),
                     " workers, but this is a ", BackendKindName(worker.kind),
                     " worker (the coordinator places jobs only on workers of their backend)"));
  }
  cfg.backend = worker;
  return cfg;
}

absl::Status ConfineTrainerData(const DataRoots& roots, TrainerConfig* cfg) {
  // The field names are the spec's: MapDataAndTraining copies the shard lists 1:1.
  ASSIGN_OR_RETURN(std::vector<std::string> train,
                   ResolveAll(roots, cfg->train_shards, "data.train_shards"));
  ASSIGN_OR_RETURN(std::vector<std::string> val,
                   ResolveAll(roots, cfg->val_shards, "data.val_shards"));
  cfg->train_shards = std::move(train);
  cfg->val_shards = std::move(val);
  return absl::OkStatus();
}

}  // namespace raptr
