// ParamLayout: offsets of every parameter tensor in the flat buffer (see param_layout.h).
#include "worker/engine/param_layout.h"

#include "absl/strings/str_cat.h"

namespace raptr {

ParamLayout::ParamLayout(const ModelConfig& cfg) {
  const int64_t C = cfg.d_model, F = cfg.d_ff, V = cfg.vocab_size, P = cfg.max_seq;
  auto add = [&](std::string name, std::vector<int64_t> shape, int layer, bool decay) {
    ParamTensor t;
    t.name = std::move(name);
    t.numel = 1;
    for (int64_t d : shape) t.numel *= static_cast<size_t>(d);
    t.shape = std::move(shape);
    t.offset = total_;
    t.layer = layer;
    t.decay = decay;
    total_ += t.numel;
    tensors_.push_back(std::move(t));
  };
  add("wte", {V, C}, -1, true);
  add("wpe", {P, C}, -1, true);
  for (int l = 0; l < cfg.num_layers; ++l) {
    const std::string p = absl::StrCat("h.", l, ".");
    ParamRange range;
    range.begin = total_;
    add(p + "ln_1.weight", {C}, l, false);
    add(p + "ln_1.bias", {C}, l, false);
    add(p + "attn.qkv.weight", {3 * C, C}, l, true);
    add(p + "attn.qkv.bias", {3 * C}, l, false);
    add(p + "attn.proj.weight", {C, C}, l, true);
    add(p + "attn.proj.bias", {C}, l, false);
    add(p + "ln_2.weight", {C}, l, false);
    add(p + "ln_2.bias", {C}, l, false);
    add(p + "mlp.fc.weight", {F, C}, l, true);
    add(p + "mlp.fc.bias", {F}, l, false);
    add(p + "mlp.proj.weight", {C, F}, l, true);
    add(p + "mlp.proj.bias", {C}, l, false);
    range.end = total_;
    layer_ranges_.push_back(range);
  }
  add("ln_f.weight", {C}, -1, false);
  add("ln_f.bias", {C}, -1, false);
}

std::vector<ParamRange> ParamLayout::SharedRanges() const {
  std::vector<ParamRange> out;
  out.push_back({tensors_[0].offset, tensors_[1].offset + tensors_[1].numel});
  const ParamTensor& lnf_w = tensors_[tensors_.size() - 2];
  out.push_back({lnf_w.offset, total_});
  return out;
}

const ParamTensor* ParamLayout::Find(const std::string& name) const {
  for (const auto& t : tensors_) {
    if (t.name == name) return &t;
  }
  return nullptr;
}

}  // namespace raptr
