// Flags shared by raptr-worker subcommands that build a model (--model, --layers, ...).
#pragma once

#include "absl/status/statusor.h"
#include "common/flags.h"
#include "worker/engine/config.h"

namespace raptr {

// Declares --model --layers --d-model --heads --d-ff --vocab --max-seq with these defaults.
void DefineModelFlags(Flags& flags, const ModelConfig& defaults);
// Reads them back into a validated ModelConfig (d_ff 0 means 4 * d_model).
absl::StatusOr<ModelConfig> ModelConfigFromFlags(const Flags& flags);

}  // namespace raptr
