// ProcessMetrics: the worker process's own Prometheus series (GET /metrics on --metrics-listen):
// step time by phase, steps and tokens, memory, threads, CPU, and the assignment it runs.
#pragma once

#include "common/metrics.h"

namespace raptr {

struct ProcessMetrics {
  explicit ProcessMetrics(metrics::Registry* r)
      : step_seconds(r->Histogram("raptr_process_step_seconds",
                                  "This process's step time: the whole step and its phases.",
                                  {"phase"}, metrics::Registry::ExponentialBuckets(0.001, 2, 17))),
        steps(r->Counter("raptr_process_steps_total", "Steps this process has run.")),
        tokens(r->Counter("raptr_process_tokens_total", "Tokens this process has trained on.")),
        resident(r->Gauge("raptr_process_resident_memory_bytes", "Resident memory.")),
        threads(r->Gauge("raptr_process_threads", "Threads of this process.")),
        cpu(r->Counter("raptr_process_cpu_seconds_total", "User and system CPU time.")),
        job_info(r->Gauge("raptr_process_job_info", "1 while running an assignment.",
                          {"job_id", "rank", "world_size"})) {}

  // Process-wide figures (memory, threads, CPU time), read at scrape time.
  void Refresh();

  metrics::Family* step_seconds;
  metrics::Family* steps;
  metrics::Family* tokens;
  metrics::Family* resident;
  metrics::Family* threads;
  metrics::Family* cpu;
  metrics::Family* job_info;
};

}  // namespace raptr
