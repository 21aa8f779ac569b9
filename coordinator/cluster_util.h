// Small helpers shared by the Cluster's translation units (cluster.cc, cluster_reports.cc,
// cluster_rendezvous.cc, cluster_metrics.cc). Internal to the coordinator.
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "common/job_spec.h"
#include "raptr/v1/job.pb.h"

namespace raptr {
namespace cluster_util {

inline constexpr size_t kMaxKeyBytes = 256;
inline constexpr size_t kMaxValueBytes = 1 << 20;

inline v1::Backend EffectiveBackend(v1::Backend backend) {
  return backend == v1::BACKEND_UNSPECIFIED ? v1::BACKEND_CPU : backend;
}

inline std::vector<std::string> JobLabels(const v1::Job& job) {
  return {job.id(), job.spec().name(), MethodName(job.spec())};
}

// Exponential smoothing of a rate over roughly the last 10 samples.
inline double Smooth(double previous, double sample) {
  return previous == 0 ? sample : 0.9 * previous + 0.1 * sample;
}

inline std::string BackendName(v1::Backend backend) {
  return EffectiveBackend(backend) == v1::BACKEND_CUDA ? "cuda" : "cpu";
}

}  // namespace cluster_util
}  // namespace raptr
