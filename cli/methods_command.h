// `raptrctl methods`: the training methods a job's schedule can name (common/methods.h).
#pragma once

namespace raptr::cli {

// `raptrctl methods [--markdown]`: each method, its paper, and its options with their defaults;
// --markdown prints docs/METHODS.md.
int RunMethods(int argc, char** argv, int first);

}  // namespace raptr::cli
