// ModelConfig validation and printing.
#include "worker/engine/config.h"

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace raptr {

std::string ModelKindName(ModelKind kind) { return kind == ModelKind::kGpt ? "gpt" : "bert"; }

absl::Status ModelConfig::Validate() const {
  auto positive = [](const char* field, int v) -> absl::Status {
    if (v <= 0) {
      return absl::InvalidArgumentError(absl::StrCat("model.", field, " must be > 0, got ", v));
    }
    return absl::OkStatus();
  };
  for (auto [field, v] : {std::pair{"num_layers", num_layers},
                          {"d_model", d_model},
                          {"num_heads", num_heads},
                          {"d_ff", d_ff},
                          {"vocab_size", vocab_size},
                          {"max_seq", max_seq}}) {
    if (auto s = positive(field, v); !s.ok()) return s;
  }
  if (d_model % num_heads != 0) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.d_model (", d_model, ") must be divisible by model.num_heads (", num_heads, ")"));
  }
  if (vocab_size > 65536) {
    return absl::InvalidArgumentError(absl::StrCat(
        "model.vocab_size must be <= 65536 (token shards store uint16), got ", vocab_size));
  }
  return absl::OkStatus();
}

std::string ModelConfig::DebugString() const {
  return absl::StrFormat("%s L=%d d=%d heads=%d d_ff=%d vocab=%d max_seq=%d", ModelKindName(kind),
                         num_layers, d_model, num_heads, d_ff, vocab_size, max_seq);
}

}  // namespace raptr
