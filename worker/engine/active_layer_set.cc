// ActiveLayerSet construction and parsing.
#include "worker/engine/active_layer_set.h"

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"

namespace raptr {

ActiveLayerSet ActiveLayerSet::Full(int num_layers) {
  ActiveLayerSet s;
  s.active_.assign(num_layers, true);
  s.scale_.assign(num_layers, 1.0f);
  return s;
}

ActiveLayerSet ActiveLayerSet::Of(int num_layers, const std::vector<int>& layers) {
  ActiveLayerSet s;
  s.active_.assign(num_layers, false);
  s.scale_.assign(num_layers, 1.0f);
  for (int l : layers) s.active_[l] = true;
  return s;
}

absl::Status ActiveLayerSet::Parse(const std::string& text, int num_layers, ActiveLayerSet* out) {
  if (text == "all") {
    *out = Full(num_layers);
    return absl::OkStatus();
  }
  ActiveLayerSet s = Of(num_layers, {});
  if (text.empty() || text == "none") {
    *out = s;
    return absl::OkStatus();
  }
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    std::vector<absl::string_view> parts = absl::StrSplit(item, ':');
    int layer = -1;
    if (parts.size() > 2 || !absl::SimpleAtoi(parts[0], &layer)) {
      return absl::InvalidArgumentError(
          absl::StrCat("active layers: '", item, "' is not a layer index (in '", text, "')"));
    }
    if (layer < 0 || layer >= num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("active layers: layer ", layer, " is out of range [0, ", num_layers, ")"));
    }
    if (s.active_[layer]) {
      return absl::InvalidArgumentError(
          absl::StrCat("active layers: layer ", layer, " is listed twice"));
    }
    s.active_[layer] = true;
    if (parts.size() == 2) {
      float scale = 0;
      if (!absl::SimpleAtof(parts[1], &scale) || !(scale > 0)) {
        return absl::InvalidArgumentError(
            absl::StrCat("active layers: scale '", parts[1], "' of layer ", layer, " must be > 0"));
      }
      s.scale_[layer] = scale;
    }
  }
  *out = s;
  return absl::OkStatus();
}

std::vector<int> ActiveLayerSet::ActiveLayers() const {
  std::vector<int> out;
  for (int l = 0; l < num_layers(); ++l) {
    if (active_[l]) out.push_back(l);
  }
  return out;
}

int ActiveLayerSet::NumActive() const {
  int n = 0;
  for (bool a : active_) n += a ? 1 : 0;
  return n;
}

std::string ActiveLayerSet::DebugString() const {
  std::vector<std::string> items;
  for (int l = 0; l < num_layers(); ++l) {
    if (!active_[l]) continue;
    items.push_back(scale_[l] == 1.0f ? absl::StrCat(l) : absl::StrCat(l, ":", scale_[l]));
  }
  return absl::StrCat("[", absl::StrJoin(items, ","), "]");
}

}  // namespace raptr
