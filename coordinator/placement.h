// Placement: which waiting jobs start now, on which free workers, and why the others wait. A pure
// function of the waiting jobs (already in scheduling order: priority, then submission) and the
// workers of each backend (free ones in the order ranks are given: worker id order); no clock,
// no store, no locks.
//
// Policy: FIFO with priorities, strict per backend: a job that cannot start holds back every job
// behind it on its backend (a large job is not starved by a stream of small ones). A job gets the
// largest world size in [min_workers, max_workers] that the free workers allow and that divides
// its batch, counting only workers that report at least the job's minimum memory (its weights,
// gradients and AdamW moments: JobMinimumMemoryBytes). One exception to the strict order: a job
// that too few connected workers of its backend could hold at all waits without holding back the
// jobs behind it. It cannot run until larger workers join, and holding the queue for it would
// let one oversized submission stall the backend until someone cancels it.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "raptr/v1/control.pb.h"
#include "raptr/v1/job.pb.h"

namespace raptr {

struct WaitingJob {
  std::string id;
  v1::Backend backend = v1::BACKEND_CPU;
  int min_workers = 1;
  int max_workers = 1;
  int batch = 1;
  // The least memory each rank needs (JobMinimumMemoryBytes of its spec); 0: no requirement.
  int64_t min_memory_bytes = 0;
};

struct Placement {
  std::string job_id;
  std::vector<int64_t> workers;  // by rank
};

// The workers as placement sees them. Backends are effective ones (CPU or CUDA).
struct WorkerPool {
  // The free workers of each backend, in the order ranks are given (worker id order).
  std::map<v1::Backend, std::vector<int64_t>> free;
  // Every connected worker of each backend, free or busy (the free ones included).
  std::map<v1::Backend, std::vector<int64_t>> connected;
  // Worker -> the memory its Hello reported (ReportedMemoryBytes). A worker absent here, or at 0,
  // reported none and is taken to fit any job.
  std::map<int64_t, int64_t> memory_bytes;
};

struct PlacementPass {
  std::vector<Placement> placements;
  // Every job left waiting -> why, e.g. "needs 2 free cpu workers; 1 of the 3 connected is free"
  // (Cluster::WaitReason).
  std::map<std::string, std::string> wait_reasons;
};

// The largest world size in [min_workers, min(max_workers, free)] dividing `batch`; 0: none.
int WorldSize(int min_workers, int max_workers, int batch, int free);

// The memory a worker offers a job's state, from its Hello: its GPU's for a CUDA worker (the
// smallest, should it name several), host memory for a CPU worker; 0 when it reports none.
int64_t ReportedMemoryBytes(const v1::Hello& hello);

PlacementPass Place(const std::vector<WaitingJob>& jobs, const WorkerPool& pool);

// Place's placements when only the free workers are known (all connected, none reporting its
// memory).
std::vector<Placement> PlaceJobs(const std::vector<WaitingJob>& jobs,
                                 std::map<v1::Backend, std::vector<int64_t>> free_workers);

}  // namespace raptr
