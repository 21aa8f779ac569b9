// Flags and helpers shared by the benchmarks (engine_bench, cuda_bench): the model shape, the
// batch and the path lengths to time, parsed strictly so a typo is an error, not a default.
#pragma once

#include <vector>

#include "absl/status/statusor.h"
#include "common/flags.h"
#include "worker/engine/config.h"

namespace raptr {

struct BenchShape {
  ModelConfig model;         // max_seq = max(T, 1024), like GPT-2
  int batch = 0;             // B
  int seq = 0;               // T
  std::vector<int> lengths;  // path lengths to time (default: all layers)
  int steps = 0;             // timed steps per length (per round)
  int warmup = 0;            // untimed steps first
};

// --layers --d-model --heads --d-ff --vocab --batch --seq --active --steps --warmup --kind.
void DefineBenchShapeFlags(Flags& flags);
absl::StatusOr<BenchShape> BenchShapeFromFlags(const Flags& flags);

double Median(std::vector<double> values);

}  // namespace raptr
