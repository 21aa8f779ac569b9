// ActiveLayerSet: which transformer blocks run this step, and the scale on each kept block's
// output.
//
// A block that is not active is the identity: it costs no compute, forward or backward, and gets no
// gradient. An active block l computes x + scale[l] * attn(ln1(x)), then y + scale[l] *
// mlp(ln2(y)): the scale multiplies each residual branch (stochastic-depth style), 1.0 means
// unscaled. Value type; cheap to copy for the layer counts we train.
#pragma once

#include <string>
#include <vector>

#include "absl/status/status.h"

namespace raptr {

class ActiveLayerSet {
 public:
  ActiveLayerSet() = default;
  // All `num_layers` blocks active with scale 1 (full model; evaluation always uses this).
  static ActiveLayerSet Full(int num_layers);
  // Only the listed layers active (any order, no duplicates), scale 1.
  static ActiveLayerSet Of(int num_layers, const std::vector<int>& layers);
  // Parses "all" or a comma list such as "0,3,5" (optionally "0:1.5,3" with per-layer scales).
  static absl::Status Parse(const std::string& text, int num_layers, ActiveLayerSet* out);

  int num_layers() const { return static_cast<int>(active_.size()); }
  bool active(int layer) const { return active_[layer]; }
  float scale(int layer) const { return scale_[layer]; }
  void set_scale(int layer, float s) { scale_[layer] = s; }
  void set_active(int layer, bool on) { active_[layer] = on; }

  // Active layer indices in ascending order (the order blocks run).
  std::vector<int> ActiveLayers() const;
  int NumActive() const;
  std::string DebugString() const;

  bool operator==(const ActiveLayerSet& o) const {
    return active_ == o.active_ && scale_ == o.scale_;
  }

 private:
  std::vector<bool> active_;
  std::vector<float> scale_;
};

}  // namespace raptr
