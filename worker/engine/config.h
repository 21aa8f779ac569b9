// Model configuration: the shape of a GPT-2 style decoder or a BERT-style encoder.
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/status.h"

namespace raptr {

enum class ModelKind {
  kGpt,   // causal decoder, next-token loss
  kBert,  // bidirectional encoder, masked-LM loss on selected positions
};

std::string ModelKindName(ModelKind kind);

struct ModelConfig {
  ModelKind kind = ModelKind::kGpt;
  int num_layers = 12;
  int d_model = 768;
  int num_heads = 12;
  int d_ff = 3072;
  int vocab_size = 50257;
  int max_seq = 1024;

  int head_dim() const { return d_model / num_heads; }
  bool causal() const { return kind == ModelKind::kGpt; }

  // Every dimension positive, d_model divisible by num_heads, vocab fits uint16 token shards.
  absl::Status Validate() const;
  std::string DebugString() const;
};

}  // namespace raptr
