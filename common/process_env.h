// Process-start settings that must be in the environment before shared libraries initialise.
#pragma once

namespace raptr {

// libgomp reads OMP_WAIT_POLICY once, when it loads, before main() runs. Its default lets idle
// threads spin for a while at every barrier; on a shared or CPU-limited host (2 cores, another
// process, a Kubernetes CPU quota) the spinning thread burns the time slice the working thread
// needs: measured 2.97 s against 2.28 s per 124M step with one competing process, for a 3% cost
// on an idle machine (docs/PERF.md). So unless the user chose a policy, re-execute this binary
// once with OMP_WAIT_POLICY=PASSIVE. Returns normally (no re-exec) when the variable is set or
// the exec fails. Call first thing in main().
void EnsurePassiveOpenMpWaitPolicy(char** argv);

}  // namespace raptr
