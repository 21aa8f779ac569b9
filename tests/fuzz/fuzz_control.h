// The body of the fuzz_control target (tests/fuzz/fuzz_control.cc), for the ordinary test build to
// replay its corpus and regressions (tests/unit/fuzz_regressions_test.cc).
#pragma once

#include <cstddef>
#include <cstdint>

namespace raptr::fuzz {

// Runs one input: a script of operations on a fresh Cluster and JobStore (see fuzz_control.cc).
// Aborts, printing why, when a property of the target breaks.
void RunControlInput(const uint8_t* data, size_t size);

}  // namespace raptr::fuzz
