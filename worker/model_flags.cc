// Model-shape flags (see model_flags.h).
#include "worker/model_flags.h"

#include "absl/strings/str_cat.h"
#include "common/status.h"

namespace raptr {

void DefineModelFlags(Flags& flags, const ModelConfig& d) {
  flags.Define("model", ModelKindName(d.kind), "gpt (causal LM) or bert (masked LM)");
  flags.Define("layers", absl::StrCat(d.num_layers), "transformer blocks (L)");
  flags.Define("d-model", absl::StrCat(d.d_model), "model width (C)");
  flags.Define("heads", absl::StrCat(d.num_heads), "attention heads");
  for (const char* size : {"layers", "d-model", "heads"}) flags.Range(size, 1, 1 << 20);
  flags.Define("d-ff", absl::StrCat(d.d_ff), "MLP width (0: 4 * d-model)");
  flags.Define("vocab", absl::StrCat(d.vocab_size),
               "vocabulary size (0: from the data's meta.json)");
  flags.Define("max-seq", absl::StrCat(d.max_seq), "positions (0: the training sequence length)");
}

absl::StatusOr<ModelConfig> ModelConfigFromFlags(const Flags& flags) {
  ModelConfig c;
  const std::string kind = flags.Get("model");
  if (kind == "gpt") {
    c.kind = ModelKind::kGpt;
  } else if (kind == "bert") {
    c.kind = ModelKind::kBert;
  } else {
    return absl::InvalidArgumentError(absl::StrCat("--model '", kind, "' is not gpt or bert"));
  }
  ASSIGN_OR_RETURN(int layers, flags.GetInt32("layers"));
  ASSIGN_OR_RETURN(int d_model, flags.GetInt32("d-model"));
  ASSIGN_OR_RETURN(int heads, flags.GetInt32("heads"));
  ASSIGN_OR_RETURN(int d_ff, flags.GetInt32("d-ff"));
  ASSIGN_OR_RETURN(int vocab, flags.GetInt32("vocab"));
  ASSIGN_OR_RETURN(int max_seq, flags.GetInt32("max-seq"));
  c.num_layers = layers;
  c.d_model = d_model;
  c.num_heads = heads;
  c.d_ff = d_ff == 0 ? 4 * d_model : d_ff;
  c.vocab_size = vocab;
  c.max_seq = max_seq;
  return c;
}

}  // namespace raptr
