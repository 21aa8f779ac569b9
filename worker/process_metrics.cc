// The worker process's metrics (see process_metrics.h).
#include "worker/process_metrics.h"

#include <sys/resource.h>
#include <unistd.h>

#include <cstdio>

namespace raptr {

void ProcessMetrics::Refresh() {
  long pages = 0, resident_pages = 0;
  if (FILE* f = std::fopen("/proc/self/statm", "r")) {
    if (std::fscanf(f, "%ld %ld", &pages, &resident_pages) != 2) resident_pages = 0;
    std::fclose(f);
  }
  resident->Set({}, static_cast<double>(resident_pages) * sysconf(_SC_PAGE_SIZE));
  long count = 0;
  if (FILE* f = std::fopen("/proc/self/status", "r")) {
    char line[256];
    while (std::fgets(line, sizeof(line), f)) {
      if (std::sscanf(line, "Threads: %ld", &count) == 1) break;
    }
    std::fclose(f);
  }
  threads->Set({}, static_cast<double>(count));
  rusage usage{};
  getrusage(RUSAGE_SELF, &usage);
  cpu->Set({}, usage.ru_utime.tv_sec + usage.ru_utime.tv_usec / 1e6 + usage.ru_stime.tv_sec +
                   usage.ru_stime.tv_usec / 1e6);
}

}  // namespace raptr
