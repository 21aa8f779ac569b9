// Failpoints: named places in the code where a test makes this process die, to prove what a
// crash exactly there costs (a coordinator killed inside a checkpoint commit, say). Real
// processes, real SIGKILL: nothing is simulated, only the moment is chosen.
//
// The environment variable RAPTR_FAILPOINTS lists them: "name[:N][,name[:N]...]". The N-th time
// (default: the first) this process passes `name`, it logs one line and sends itself SIGKILL (no
// destructors, no flushes, as an OOM kill or a power cut), or, where the code asks with
// FailpointHit, injects the fault it names there. Unset, a pass costs one atomic load.
// The names in use are listed where they are passed and in docs/RELIABILITY.md.
#pragma once

namespace raptr {

void Failpoint(const char* name);

// The same count, without the kill: true on the N-th pass, for a caller that injects another
// fault there (an exception, an error).
bool FailpointHit(const char* name);

}  // namespace raptr
