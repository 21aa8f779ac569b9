// Re-exec with a passive OpenMP wait policy (see process_env.h).
#include "common/process_env.h"

#include <unistd.h>

#include <cstdlib>

namespace raptr {

void EnsurePassiveOpenMpWaitPolicy(char** argv) {
  if (std::getenv("OMP_WAIT_POLICY") != nullptr) return;  // the user's choice stands
  if (setenv("OMP_WAIT_POLICY", "PASSIVE", 1) != 0) return;
  execv("/proc/self/exe", argv);
  // exec failed (no /proc?): carry on with libgomp's default policy.
}

}  // namespace raptr
