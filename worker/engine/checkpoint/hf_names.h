// Mapping between raptr's flat parameter layout and Hugging Face tensor names, both directions.
//
// GPT uses the names of the HF hub's gpt2 model.safetensors (no "transformer." prefix; ImportHf
// also accepts that prefix, as GPT2LMHeadModel.save_pretrained writes it). HF GPT-2 stores its
// projections as Conv1D with weights (in, out), so every matrix is the transpose of ours:
//   wte.weight (V,C)   wpe.weight (P,C)   ln_f.weight|bias (C)
//   h.{i}.ln_1.weight|bias, h.{i}.ln_2.weight|bias                          (C)
//   h.{i}.attn.c_attn.weight (C,3C) = qkv.weight^T     h.{i}.attn.c_attn.bias (3C)
//   h.{i}.attn.c_proj.weight (C,C)  = proj.weight^T    h.{i}.attn.c_proj.bias (C)
//   h.{i}.mlp.c_fc.weight    (C,F)  = fc.weight^T      h.{i}.mlp.c_fc.bias    (F)
//   h.{i}.mlp.c_proj.weight  (F,C)  = proj.weight^T    h.{i}.mlp.c_proj.bias  (C)
//
// BERT uses BertForMaskedLM names with torch Linear (out, in) layout, so nothing is transposed;
// the fused qkv is split by rows [0,C) / [C,2C) / [2C,3C):
//   bert.embeddings.word_embeddings.weight (V,C)   bert.embeddings.position_embeddings.weight (P,C)
//   bert.encoder.layer.{i}.attention.self.query|key|value.weight (C,C), .bias (C)
//   ...attention.output.dense.weight|bias = attn.proj   ...attention.output.LayerNorm = ln_1
//   ...intermediate.dense.weight|bias     = mlp.fc      ...output.dense.weight|bias    = mlp.proj
//   ...output.LayerNorm                   = ln_2
//   cls.predictions.transform.LayerNorm.weight|bias = ln_f
// Our BERT is pre-LN while HF's is post-LN: the LayerNorms sit under the names of the HF
// LayerNorm nearest in position, which makes the file loadable by transformers but does NOT make
// HF's post-LN forward pass compute our function. HF tensors we lack (token_type_embeddings,
// embeddings.LayerNorm, the MLM transform dense, the pooler, the decoder bias) are not written.
//
// In both models the output head is tied to the token embedding and is not stored.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "worker/engine/checkpoint/safetensors.h"
#include "worker/engine/config.h"
#include "worker/engine/param_layout.h"

namespace raptr {

// A float tensor with HF name and shape, holding its own data.
struct OwnedTensor {
  std::string name;
  std::vector<int64_t> shape;
  std::vector<float> data;
};

// Converts a flat buffer laid out by `layout` (parameters, or anything mirroring them, such as
// gradients or optimizer moments) to HF-named tensors, in layout order.
std::vector<OwnedTensor> ExportHf(const ModelConfig& config, const ParamLayout& layout,
                                  const float* flat);

// F32 views of `tensors` for WriteSafetensors; valid while `tensors` lives.
std::vector<TensorView> AsTensorViews(const std::vector<OwnedTensor>& tensors);

// Fills `flat` from HF-named tensors. Every expected tensor must be present as F32 with the
// expected shape; any other tensor is an error unless known to be harmless (HF GPT-2's attention
// mask buffers h.{i}.attn.bias / h.{i}.attn.masked_bias, BERT's position_ids buffer, an output
// head lm_head.weight / cls.predictions.decoder.weight equal to the token embedding, an all-zero
// cls.predictions.bias). Validates everything before writing, so on error `flat` is untouched.
absl::Status ImportHf(const ModelConfig& config, const ParamLayout& layout,
                      const SafetensorsFile& file, float* flat);

}  // namespace raptr
