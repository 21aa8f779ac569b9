// Benchmark shape flags (see bench_shape.h).
#include "bench/bench_shape.h"

#include <algorithm>
#include <string>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/status.h"

namespace raptr {

void DefineBenchShapeFlags(Flags& flags) {
  flags.Define("layers", "12", "blocks");
  flags.Define("d-model", "768", "model width");
  flags.Define("heads", "12", "attention heads");
  flags.Define("d-ff", "0", "MLP width (0: 4 * d-model)");
  flags.Define("vocab", "50257", "vocabulary size");
  flags.Define("batch", "4", "sequences per step (B)");
  flags.Define("seq", "64", "tokens per sequence (T)");
  flags.Define("active", "", "comma list of path lengths to time (default: all layers)");
  flags.Define("steps", "10", "timed steps per path length");
  flags.Define("warmup", "2", "untimed steps first");
  flags.Define("kind", "gpt", "gpt or bert");
}

absl::StatusOr<BenchShape> BenchShapeFromFlags(const Flags& flags) {
  BenchShape s;
  const std::string kind = flags.Get("kind");
  if (kind != "gpt" && kind != "bert") {
    return absl::InvalidArgumentError(absl::StrCat("--kind '", kind, "' is not gpt or bert"));
  }
  s.model.kind = kind == "bert" ? ModelKind::kBert : ModelKind::kGpt;
  ASSIGN_OR_RETURN(int64_t layers, flags.GetInt("layers"));
  ASSIGN_OR_RETURN(int64_t d_model, flags.GetInt("d-model"));
  ASSIGN_OR_RETURN(int64_t heads, flags.GetInt("heads"));
  ASSIGN_OR_RETURN(int64_t d_ff, flags.GetInt("d-ff"));
  ASSIGN_OR_RETURN(int64_t vocab, flags.GetInt("vocab"));
  ASSIGN_OR_RETURN(int64_t batch, flags.GetInt("batch"));
  ASSIGN_OR_RETURN(int64_t seq, flags.GetInt("seq"));
  ASSIGN_OR_RETURN(int64_t steps, flags.GetInt("steps"));
  ASSIGN_OR_RETURN(int64_t warmup, flags.GetInt("warmup"));
  s.model.num_layers = static_cast<int>(layers);
  s.model.d_model = static_cast<int>(d_model);
  s.model.num_heads = static_cast<int>(heads);
  s.model.d_ff = static_cast<int>(d_ff == 0 ? 4 * d_model : d_ff);
  s.model.vocab_size = static_cast<int>(vocab);
  s.batch = static_cast<int>(batch);
  s.seq = static_cast<int>(seq);
  s.model.max_seq = std::max(s.seq, 1024);
  s.steps = static_cast<int>(steps);
  s.warmup = static_cast<int>(warmup);
  RETURN_IF_ERROR(s.model.Validate());
  if (s.batch <= 0 || s.seq <= 0 || s.steps <= 0 || s.warmup < 0) {
    return absl::InvalidArgumentError("--batch, --seq and --steps must be > 0, --warmup >= 0");
  }
  if (flags.Get("active").empty()) {
    s.lengths.push_back(s.model.num_layers);
  }
  for (absl::string_view item : absl::StrSplit(flags.Get("active"), ',', absl::SkipEmpty())) {
    int k = 0;
    if (!absl::SimpleAtoi(item, &k) || k < 0 || k > s.model.num_layers) {
      return absl::InvalidArgumentError(
          absl::StrCat("--active: bad path length '", item, "' (0..", s.model.num_layers, ")"));
    }
    s.lengths.push_back(k);
  }
  return s;
}

double Median(std::vector<double> v) {
  if (v.empty()) return 0;
  std::sort(v.begin(), v.end());
  const size_t n = v.size();
  return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

}  // namespace raptr
