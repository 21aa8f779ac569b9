// Placement of waiting jobs on free workers, and the reasons of those left waiting (see
// placement.h).
#include "coordinator/placement.h"

#include <algorithm>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "coordinator/cluster_util.h"

namespace raptr {
namespace {

using cluster_util::BackendName;

// "1.50 GiB (1610612736 bytes)": readable, and exact for logs and tests.
std::string Bytes(int64_t bytes) {
  constexpr int64_t kKiB = 1024, kMiB = kKiB << 10, kGiB = kMiB << 10;
  const auto scaled = [bytes](int64_t unit, const char* name) {
    return absl::StrFormat("%.2f %s (%d bytes)", static_cast<double>(bytes) / unit, name, bytes);
  };
  if (bytes >= kGiB) return scaled(kGiB, "GiB");
  if (bytes >= kMiB) return scaled(kMiB, "MiB");
  if (bytes >= kKiB) return scaled(kKiB, "KiB");
  return absl::StrCat(bytes, " bytes");
}

int64_t MemoryOf(const WorkerPool& pool, int64_t worker) {
  const auto it = pool.memory_bytes.find(worker);
  return it == pool.memory_bytes.end() ? 0 : it->second;
}

// A worker that reported no memory (0) is not judged: older workers and test doubles.
bool Fits(const WorkerPool& pool, int64_t worker, int64_t need) {
  const int64_t memory = MemoryOf(pool, worker);
  return need <= 0 || memory <= 0 || memory >= need;
}

std::vector<int64_t> Fitting(const WorkerPool& pool, const std::vector<int64_t>& workers,
                             int64_t need) {
  std::vector<int64_t> out;
  for (int64_t w : workers) {
    if (Fits(pool, w, need)) out.push_back(w);
  }
  return out;
}

const std::vector<int64_t>& Of(const std::map<v1::Backend, std::vector<int64_t>>& by_backend,
                               v1::Backend backend) {
  static const std::vector<int64_t>* const kNone = new std::vector<int64_t>();
  const auto it = by_backend.find(backend);
  return it == by_backend.end() ? *kNone : it->second;
}

// "1 of the 3 free reports that much, the others at most 1.00 GiB (...)": how `workers` (the
// free or the connected ones, `which`) measure up to the job's need.
std::string MemoryShortfall(const WaitingJob& job, const WorkerPool& pool,
                            const std::vector<int64_t>& workers, const char* which) {
  int fitting = 0;
  int64_t largest_short = 0;
  for (int64_t w : workers) {
    if (Fits(pool, w, job.min_memory_bytes)) {
      ++fitting;
    } else {
      largest_short = std::max(largest_short, MemoryOf(pool, w));
    }
  }
  return absl::StrFormat(
      "needs %d %s%s worker%s with at least %s for its weights, gradients and AdamW moments; %d "
      "of the %d %s report%s that much, the others at most %s",
      job.min_workers, std::string(which) == "free" ? "free " : "", BackendName(job.backend),
      job.min_workers == 1 ? "" : "s", Bytes(job.min_memory_bytes), fitting, workers.size(), which,
      fitting == 1 ? "s" : "", Bytes(largest_short));
}

// "no cuda workers are connected (it needs 1; 2 cpu workers are)".
std::string NoWorkersReason(const WaitingJob& job, const WorkerPool& pool) {
  std::string others;
  int other_workers = 0;
  for (const auto& [other, workers] : pool.connected) {
    if (other == job.backend || workers.empty()) continue;
    const int count = static_cast<int>(workers.size());
    absl::StrAppend(&others, others.empty() ? "" : ", ", count, " ", BackendName(other),
                    count == 1 ? " worker" : " workers");
    other_workers += count;
  }
  return absl::StrCat(
      "no ", BackendName(job.backend), " workers are connected (it needs ", job.min_workers, "; ",
      other_workers == 0 ? "no workers at all"
                         : absl::StrCat(others, other_workers == 1 ? " is" : " are"),
      ")");
}

// Why `job`, the first of its backend that could not start, waits (and holds back the rest).
std::string BlockedReason(const WaitingJob& job, const WorkerPool& pool,
                          const std::vector<int64_t>& free) {
  const std::vector<int64_t>& connected = Of(pool.connected, job.backend);
  const std::string backend = BackendName(job.backend);
  const int available = static_cast<int>(free.size());
  if (connected.empty()) return NoWorkersReason(job, pool);
  if (available < job.min_workers) {
    return absl::StrFormat("needs %d free %s worker%s; %d of the %d connected %s free",
                           job.min_workers, backend, job.min_workers == 1 ? "" : "s", available,
                           connected.size(), available == 1 ? "is" : "are");
  }
  // Enough free workers for a world size, but not enough of them big enough.
  if (WorldSize(job.min_workers, job.max_workers, job.batch, available) > 0) {
    return MemoryShortfall(job, pool, free, "free");
  }
  return absl::StrFormat(
      "no world size in [%d, %d] that %d free %s workers allow divides its batch of %d",
      job.min_workers, job.max_workers, available, backend, job.batch);
}

// True when fewer than min_workers of the connected workers could ever hold `job`, though there
// are enough workers: only larger workers joining can start it.
bool Oversized(const WaitingJob& job, const WorkerPool& pool) {
  const std::vector<int64_t>& connected = Of(pool.connected, job.backend);
  return static_cast<int>(connected.size()) >= job.min_workers &&
         static_cast<int>(Fitting(pool, connected, job.min_memory_bytes).size()) < job.min_workers;
}

}  // namespace

int WorldSize(int min_workers, int max_workers, int batch, int free) {
  for (int w = std::min(max_workers, free); w >= std::max(min_workers, 1); --w) {
    if (batch % w == 0) return w;
  }
  return 0;
}

int64_t ReportedMemoryBytes(const v1::Hello& hello) {
  if (cluster_util::EffectiveBackend(hello.backend()) != v1::BACKEND_CUDA) {
    return std::max<int64_t>(hello.memory_bytes(), 0);
  }
  // A CUDA worker's parameters, gradients and moments live on its device, not in host memory.
  int64_t smallest = 0;
  for (const v1::Device& device : hello.devices()) {
    if (device.memory_bytes() <= 0) continue;
    smallest = smallest == 0 ? device.memory_bytes() : std::min(smallest, device.memory_bytes());
  }
  return smallest;
}

PlacementPass Place(const std::vector<WaitingJob>& jobs, const WorkerPool& pool) {
  PlacementPass pass;
  std::map<v1::Backend, std::vector<int64_t>> free = pool.free;
  std::map<v1::Backend, std::string> blocked_by;  // backend -> the job holding it back
  for (const WaitingJob& job : jobs) {
    if (auto blocker = blocked_by.find(job.backend); blocker != blocked_by.end()) {
      pass.wait_reasons[job.id] =
          absl::StrCat("waiting behind ", blocker->second, ", the first ", BackendName(job.backend),
                       " job in priority and submission order");
      continue;
    }
    std::vector<int64_t>& available = free[job.backend];
    const std::vector<int64_t> eligible = Fitting(pool, available, job.min_memory_bytes);
    const int world =
        WorldSize(job.min_workers, job.max_workers, job.batch, static_cast<int>(eligible.size()));
    if (world > 0) {
      Placement placement{job.id, std::vector<int64_t>(eligible.begin(), eligible.begin() + world)};
      const std::set<int64_t> taken(placement.workers.begin(), placement.workers.end());
      std::erase_if(available, [&taken](int64_t w) { return taken.count(w) != 0; });
      pass.placements.push_back(std::move(placement));
      continue;
    }
    if (Oversized(job, pool)) {
      pass.wait_reasons[job.id] =
          absl::StrCat(MemoryShortfall(job, pool, Of(pool.connected, job.backend), "connected"),
                       " (it waits for larger workers without holding back the jobs behind it)");
      continue;
    }
    blocked_by[job.backend] = job.id;
    pass.wait_reasons[job.id] = BlockedReason(job, pool, available);
  }
  return pass;
}

std::vector<Placement> PlaceJobs(const std::vector<WaitingJob>& jobs,
                                 std::map<v1::Backend, std::vector<int64_t>> free_workers) {
  WorkerPool pool;
  pool.connected = free_workers;
  pool.free = std::move(free_workers);
  return Place(jobs, pool).placements;
}

}  // namespace raptr
