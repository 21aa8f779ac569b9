// Placement of waiting jobs on free workers (see placement.h).
#include "coordinator/placement.h"

#include <algorithm>

namespace raptr {

int WorldSize(int min_workers, int max_workers, int batch, int free) {
  for (int w = std::min(max_workers, free); w >= std::max(min_workers, 1); --w) {
    if (batch % w == 0) return w;
  }
  return 0;
}

std::vector<Placement> PlaceJobs(const std::vector<WaitingJob>& jobs,
                                 std::map<v1::Backend, std::vector<int64_t>> free_workers) {
  std::vector<Placement> placements;
  std::map<v1::Backend, bool> blocked;
  for (const WaitingJob& job : jobs) {
    if (blocked[job.backend]) continue;
    std::vector<int64_t>& free = free_workers[job.backend];
    const int world =
        WorldSize(job.min_workers, job.max_workers, job.batch, static_cast<int>(free.size()));
    if (world == 0) {
      blocked[job.backend] = true;
      continue;
    }
    placements.push_back({job.id, std::vector<int64_t>(free.begin(), free.begin() + world)});
    free.erase(free.begin(), free.begin() + world);
  }
  return placements;
}

}  // namespace raptr
