// ParamLayout: where every parameter tensor lives inside the model's single flat allocation.
//
// Following llm.c, all parameters are one buffer; gradients and the AdamW moments mirror it with
// the same offsets. Unlike llm.c, each transformer block's tensors are contiguous, so block l is
// the slice LayerRange(l): skipping a block is "do not touch that slice", and all-reducing or
// updating only the active blocks is a handful of contiguous ranges.
//
// Order: wte (V,C), wpe (maxT,C), then per block l:
//   ln_1.weight (C), ln_1.bias (C), attn.qkv.weight (3C,C), attn.qkv.bias (3C),
//   attn.proj.weight (C,C), attn.proj.bias (C), ln_2.weight (C), ln_2.bias (C),
//   mlp.fc.weight (F,C), mlp.fc.bias (F), mlp.proj.weight (C,F), mlp.proj.bias (C),
// then ln_f.weight (C), ln_f.bias (C). Matrices are (out_features, in_features), row-major, like
// torch.nn.Linear. The output head is tied to wte.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>
#include <vector>

#include "worker/engine/config.h"

namespace raptr {

// Index of each tensor within a block, in layout order.
enum BlockTensor : int {
  kLn1W = 0,
  kLn1B,
  kQkvW,
  kQkvB,
  kAttnProjW,
  kAttnProjB,
  kLn2W,
  kLn2B,
  kFcW,
  kFcB,
  kFcProjW,
  kFcProjB,
  kNumBlockTensors
};

struct ParamTensor {
  std::string name;            // internal name, e.g. "h.3.attn.qkv.weight"
  std::vector<int64_t> shape;  // row-major
  size_t offset = 0;           // elements from the start of the flat buffer
  size_t numel = 0;
  int layer = -1;      // block index, or -1 for embeddings / final LayerNorm
  bool decay = false;  // AdamW weight decay applies (matrices and embeddings only)
};

struct ParamRange {
  size_t begin = 0;
  size_t end = 0;  // exclusive
  size_t size() const { return end - begin; }
};

class ParamLayout {
 public:
  explicit ParamLayout(const ModelConfig& config);

  const std::vector<ParamTensor>& tensors() const { return tensors_; }
  size_t total() const { return total_; }

  // Offsets of the shared tensors.
  size_t wte() const { return tensors_[0].offset; }
  size_t wpe() const { return tensors_[1].offset; }
  size_t lnf_w() const { return tensors_[tensors_.size() - 2].offset; }
  size_t lnf_b() const { return tensors_[tensors_.size() - 1].offset; }
  // Offset of tensor `t` of block `layer`.
  size_t block(int layer, BlockTensor t) const {
    return tensors_[2 + layer * kNumBlockTensors + t].offset;
  }
  // The contiguous slice holding all of block `layer`'s parameters.
  ParamRange LayerRange(int layer) const { return layer_ranges_[layer]; }
  // Slices outside any block: [embeddings) and [final LayerNorm).
  std::vector<ParamRange> SharedRanges() const;
  // Returns the tensor with this internal name, or nullptr.
  const ParamTensor* Find(const std::string& name) const;

 private:
  std::vector<ParamTensor> tensors_;
  std::vector<ParamRange> layer_ranges_;
  size_t total_ = 0;
};

}  // namespace raptr
