// Placement: which waiting jobs start now, on which free workers. A pure function of the waiting
// jobs (already in scheduling order: priority, then submission) and the free workers of each
// backend (in the order ranks are given: worker id order); no clock, no store, no locks.
//
// Policy: FIFO with priorities, strict per backend: a job that cannot start holds back every job
// behind it on its backend (a large job is not starved by a stream of small ones). A job gets the
// largest world size in [min_workers, max_workers] that the free workers allow and that divides
// its batch.
#pragma once

#include <cstdint>
#include <map>
#include <string>
#include <vector>

#include "raptr/v1/job.pb.h"

namespace raptr {

struct WaitingJob {
  std::string id;
  v1::Backend backend = v1::BACKEND_CPU;
  int min_workers = 1;
  int max_workers = 1;
  int batch = 1;
};

struct Placement {
  std::string job_id;
  std::vector<int64_t> workers;  // by rank
};

// The largest world size in [min_workers, min(max_workers, free)] dividing `batch`; 0: none.
int WorldSize(int min_workers, int max_workers, int batch, int free);

std::vector<Placement> PlaceJobs(const std::vector<WaitingJob>& jobs,
                                 std::map<v1::Backend, std::vector<int64_t>> free_workers);

}  // namespace raptr
