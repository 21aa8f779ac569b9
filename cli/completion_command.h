// `raptrctl completion bash`: a bash completion script for raptrctl.
#pragma once

namespace raptr::cli {

// Prints the script; `source <(raptrctl completion bash)` (or install it as
// /etc/bash_completion.d/raptrctl). Commands come from `raptrctl --help` and each command's flags
// from `raptrctl COMMAND --help` when completing, so the script never goes stale; job ids after
// get/cancel/watch/plot/export come from `raptrctl list`.
int RunCompletion(int argc, char** argv, int first);

}  // namespace raptr::cli
