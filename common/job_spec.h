// Job specs: the YAML job file <-> the raptr.v1.JobSpec proto, defaults, and strict validation.
//
// The YAML maps 1:1 onto the proto (proto/raptr/v1/job.proto, whose comments document every
// field, its range and its default), walked generically through protobuf reflection, so a field
// added to the proto needs no change here except its default and range:
// - a message is a YAML map keyed by field name (snake_case, exactly as in the .proto); an empty
//   or null value (`full: {}`, `full:`) sets the message with all its defaults;
// - a repeated field is a YAML sequence (`train_shards: [a.bin, b.bin]`), a proto map a YAML map;
// - an enum is its value name without the enum's prefix, in any case (`decay: cosine` or
//   `decay: COSINE` for LR_DECAY_COSINE); the *_UNSPECIFIED value is written by omitting the key;
// - numbers and booleans are plain (unquoted) scalars; integers must be integers of the field's
//   width; non-finite floats are refused;
// - a oneof member is chosen by its key being present; two members of one oneof is an error.
// Every error is INVALID_ARGUMENT and starts with the full path of the offending field, e.g.
// "schedule.raptr.stages[1].pathlength: unknown field (did you mean path_length?) (line 14,
// column 9)" or "optimizer.lr must be > 0, got -0.001".
//
// All functions are thread-compatible pure functions.
#pragma once

#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "google/protobuf/message.h"
#include "raptr/v1/job.pb.h"

namespace raptr {

// Parses one YAML document strictly onto a JobSpec and fills the defaults of omitted fields
// (ApplyJobSpecDefaults). Unknown fields, wrong types, duplicate keys, two members of a oneof
// and YAML syntax errors are INVALID_ARGUMENT naming the field (and the line). Does not check
// ranges or schedule feasibility: call ValidateJobSpec on the result.
absl::StatusOr<v1::JobSpec> ParseJobSpecYaml(std::string_view yaml);

// Fills every omitted field with the default job.proto documents, in place; fields already set
// are kept. Defaults that depend on other fields use their (defaulted) values:
//   model.kind GPT, model.d_ff 4 * d_model, model.max_seq training.seq;
//   training.batch 8, seq 64, micro_batches 1, seed 1, eval_every 100, eval_batches 8,
//     checkpoint_every 100;
//   optimizer.lr 1e-3, min_lr_ratio 0.1, warmup_steps min(100, steps / 10), decay COSINE,
//     beta1 0.9, beta2 0.95, eps 1e-8, weight_decay 0.1, grad_clip 1.0, skipped ZERO_GRAD;
//   schedule: raptr when no member is set;
//     raptr: fixed_layers {0, L-1} ({0} when L = 1) unless no_fixed_layers, no_fixed_layers
//     false, stages round(L/2), round(2L/3), round(5L/6), L (each >= |fixed layers|) at fraction
//     0.25 each, sampling BERNOULLI, scaling NONE, full_warmup_steps 0;
//     pld: theta_bar 0.5, gamma 0.001; layerdrop: keep_prob 0.75, scale NONE;
//     stacking: stages of the RaPTr default's lengths, equal lengths merged, fraction 0.25 each;
//   resources.min_workers 1, max_workers min_workers, priority 0, backend CPU, attention AUTO.
// Required fields have no default and stay unset (ValidateJobSpec reports them): name,
// model.layers, model.d_model, model.heads, model.vocab_size, data.train_shards,
// data.val_shards, data.mask_id (BERT), training.steps. A default that depends on a missing
// required field (d_ff without d_model, stages without layers) stays unset too.
void ApplyJobSpecDefaults(v1::JobSpec* spec);

// Checks a spec with defaults filled (REQUIRES: ApplyJobSpecDefaults ran, or every field is
// set): required fields present, every value in its documented range, and the schedule fits the
// model and the step budget (path lengths within [|fixed layers|, L], fixed layers in range and
// distinct, stage fractions summing to 1, stage steps within training.steps, warmups shorter
// than training.steps, a world size that divides the batch). Returns the first problem as
// INVALID_ARGUMENT naming the field, e.g. "optimizer.warmup_steps (600) must be < training.steps
// (600)".
absl::Status ValidateJobSpec(const v1::JobSpec& spec);

// The spec as YAML that ParseJobSpecYaml reads back to an equal proto: every set field, in .proto
// order, enums as lower-case names, floating-point values in their shortest exact form.
std::string JobSpecToYaml(const v1::JobSpec& spec);

// Parameters of the spec's model as the engine lays them out (worker/engine/param_layout.h):
// token and position embeddings, per block two LayerNorms, the attention's qkv and output
// projections and the two MLP matrices (all with biases), and the final LayerNorm; the output
// head is tied to the token embedding, for GPT and BERT alike. REQUIRES:
// ValidateJobSpec(spec).ok() (the count then stays below 2^46).
int64_t JobParameterCount(const v1::JobSpec& spec);

// The least memory one rank of the job needs on its device: fp32 parameters, gradients and
// AdamW's two moments, 16 bytes per parameter (every rank holds them all; activations come on top
// and depend on the batch and the path). The coordinator does not place a job on a worker that
// reports less. REQUIRES: ValidateJobSpec(spec).ok().
int64_t JobMinimumMemoryBytes(const v1::JobSpec& spec);

// The schedule kind's name as the CLI and the metrics' `method` label show it: full, pld,
// layerdrop, stacking or raptr (an unset kind is the default, raptr).
std::string MethodName(const v1::JobSpec& spec);

// Steps in each stage of the spec's RaPTr (or stacking) schedule, resolving `fraction`
// durations by job.proto's rule: with T = training.steps - full_warmup_steps, stage s ends after
// floor(T * (fraction_1 + ... + fraction_s)) steps and the last at T. `steps` durations are
// returned as given (steps past the last stage stay in it). Empty when the schedule is another
// kind. REQUIRES: ValidateJobSpec(spec).ok().
std::vector<int64_t> RaptrStageSteps(const v1::JobSpec& spec);
std::vector<int64_t> StackingStageSteps(const v1::JobSpec& spec);

// The generic walk under the functions above, for any message type (no defaults, no
// validation): merges one YAML document into `message` with the rules in the file comment
// (errors name the field's path from the root), and writes a message back as YAML.
absl::Status YamlToProto(std::string_view yaml, google::protobuf::Message* message);
std::string ProtoToYaml(const google::protobuf::Message& message);

}  // namespace raptr
