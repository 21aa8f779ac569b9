// Scheduling by backend on the coordinator's real Cluster and JobStore (a temporary SQLite file),
// fed the Hello messages real workers send: a CUDA job goes only to CUDA workers and a CPU job only
// to CPU workers; a job with no worker of its backend stays PENDING with a reason that says so.
// The links record what the Cluster sends each worker.
#include <gtest/gtest.h>

#include <filesystem>
#include <map>
#include <memory>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/synchronization/mutex.h"
#include "coordinator/cluster.h"
#include "coordinator/store/job_store.h"
#include "tests/unit/job_fixtures.h"

namespace raptr {
namespace {

// What the Cluster sent one worker.
class RecordingLink final : public WorkerLink {
 public:
  void Send(const v1::CoordinatorMessage& message) override {
    absl::MutexLock lock(&mu_);
    if (message.has_assignment()) assignments_.push_back(message.assignment());
  }
  void Close(const absl::Status& /*status*/) override {}
  // Job ids of the assignments received, in order.
  std::vector<std::string> AssignedJobs() {
    absl::MutexLock lock(&mu_);
    std::vector<std::string> ids;
    for (const v1::Assignment& a : assignments_) ids.push_back(a.job_id());
    return ids;
  }

 private:
  absl::Mutex mu_;
  std::vector<v1::Assignment> assignments_ ABSL_GUARDED_BY(mu_);
};

// The Hello of `raptr-worker serve` (agent.cc): a CPU worker has no devices; a CUDA worker names
// its one GPU.
v1::Hello CpuHello(const std::string& worker_id) {
  v1::Hello hello;
  hello.set_worker_id(worker_id);
  hello.set_backend(v1::BACKEND_CPU);
  hello.set_memory_bytes(int64_t{64} << 30);
  hello.set_cpu_threads(8);
  hello.set_host("127.0.0.1");
  hello.set_version("0.1.0");
  hello.set_instance_id(absl::StrCat(worker_id, "-instance"));
  return hello;
}

v1::Hello CudaHello(const std::string& worker_id, int device_index) {
  v1::Hello hello = CpuHello(worker_id);
  hello.set_backend(v1::BACKEND_CUDA);
  v1::Device* device = hello.add_devices();
  device->set_index(device_index);
  device->set_name("NVIDIA H200");
  device->set_memory_bytes(int64_t{141} << 30);
  device->set_compute_capability(90);
  return hello;
}

class ClusterSchedulingTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("raptr_cluster_scheduling_test");
    absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open((dir_ / "store.db").string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    ClusterOptions options;
    options.clock = [this] { return now_; };
    options.checkpoint_root = (dir_ / "checkpoints").string();
    cluster_ = std::make_unique<Cluster>(store_.get(), options);
  }
  void TearDown() override {
    cluster_.reset();
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Connects a worker; its link is links_[worker_id].
  void Connect(const v1::Hello& hello) {
    auto link = std::make_shared<RecordingLink>();
    links_[hello.worker_id()] = link;
    absl::StatusOr<int64_t> session = cluster_->Connect(hello, link);
    ASSERT_TRUE(session.ok()) << session.status();
  }

  // Stores a 1-worker job of `backend` and tells the Cluster, as JobService does.
  std::string Submit(const std::string& name, v1::Backend backend) {
    v1::JobSpec spec = testing::TinyJobSpec(name);
    spec.mutable_resources()->set_backend(backend);
    absl::StatusOr<v1::Job> job = store_->CreateJob(spec, "");
    EXPECT_TRUE(job.ok()) << job.status();
    if (!job.ok()) return "";
    cluster_->JobSubmitted(job->id());
    return job->id();
  }

  v1::JobState StateOf(const std::string& job_id) {
    absl::StatusOr<v1::Job> job = store_->GetJob(job_id);
    EXPECT_TRUE(job.ok()) << job.status();
    return job.ok() ? job->state() : v1::JOB_STATE_UNSPECIFIED;
  }

  std::vector<std::string> Assigned(const std::string& worker_id) {
    return links_.at(worker_id)->AssignedJobs();
  }

  double now_ = 1000;
  std::filesystem::path dir_;
  std::unique_ptr<JobStore> store_;
  std::unique_ptr<Cluster> cluster_;
  std::map<std::string, std::shared_ptr<RecordingLink>> links_;
};

using Jobs = std::vector<std::string>;

TEST_F(ClusterSchedulingTest, EachJobGoesToAWorkerOfItsBackend) {
  Connect(CpuHello("cpu-a"));
  Connect(CudaHello("host-a/gpu0", 0));
  // The CUDA job is submitted first: the free CPU worker (first in id order) is not for it.
  const std::string gpu_job = Submit("gpu", v1::BACKEND_CUDA);
  EXPECT_EQ(Assigned("host-a/gpu0"), Jobs{gpu_job});
  EXPECT_EQ(Assigned("cpu-a"), Jobs{});
  EXPECT_EQ(StateOf(gpu_job), v1::JOB_STATE_RUNNING);
  const std::string cpu_job = Submit("cpu", v1::BACKEND_CPU);
  EXPECT_EQ(Assigned("cpu-a"), Jobs{cpu_job});
  EXPECT_EQ(Assigned("host-a/gpu0"), Jobs{gpu_job});
  EXPECT_EQ(StateOf(cpu_job), v1::JOB_STATE_RUNNING);
  // A job that omits the backend is a CPU job: with the CPU worker busy it waits, and a free
  // CUDA worker does not take it.
  const std::string default_job = Submit("default", v1::BACKEND_UNSPECIFIED);
  Connect(CudaHello("host-a/gpu1", 1));
  cluster_->Tick();
  EXPECT_EQ(Assigned("host-a/gpu1"), Jobs{});
  EXPECT_EQ(StateOf(default_job), v1::JOB_STATE_PENDING);
  EXPECT_EQ(cluster_->WaitReason(default_job),
            "needs 1 free cpu worker; 0 of the 1 connected are free");
  EXPECT_EQ(cluster_->WaitReason(gpu_job), "");  // it runs
}

TEST_F(ClusterSchedulingTest, ACudaJobWaitsOnACpuClusterSayingThereIsNoCudaWorker) {
  Connect(CpuHello("cpu-a"));
  Connect(CpuHello("cpu-b"));
  const std::string gpu_job = Submit("gpu", v1::BACKEND_CUDA);
  now_ += 5;
  cluster_->Tick();
  EXPECT_EQ(StateOf(gpu_job), v1::JOB_STATE_PENDING);
  EXPECT_EQ(Assigned("cpu-a"), Jobs{});
  EXPECT_EQ(Assigned("cpu-b"), Jobs{});
  EXPECT_EQ(cluster_->WaitReason(gpu_job),
            "no cuda workers are connected (it needs 1; 2 cpu workers are)");
  // CPU jobs are not held back by it (each backend has its own queue).
  const std::string cpu_job = Submit("cpu", v1::BACKEND_CPU);
  EXPECT_EQ(Assigned("cpu-a"), Jobs{cpu_job});
  // A CUDA worker arrives: the job starts on it, and has no wait reason any more.
  Connect(CudaHello("host-b/gpu0", 0));
  EXPECT_EQ(Assigned("host-b/gpu0"), Jobs{gpu_job});
  EXPECT_EQ(StateOf(gpu_job), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(cluster_->WaitReason(gpu_job), "");
  EXPECT_EQ(Assigned("cpu-b"), Jobs{});
}

TEST_F(ClusterSchedulingTest, ACpuJobWaitsOnAGpuClusterAndQueuesBehindItsBackendOnly) {
  Connect(CudaHello("host-a/gpu0", 0));
  const std::string first = Submit("cpu-first", v1::BACKEND_CPU);
  const std::string second = Submit("cpu-second", v1::BACKEND_CPU);
  EXPECT_EQ(Assigned("host-a/gpu0"), Jobs{});
  EXPECT_EQ(cluster_->WaitReason(first),
            "no cpu workers are connected (it needs 1; 1 cuda worker is)");
  EXPECT_EQ(cluster_->WaitReason(second),
            absl::StrCat("waiting behind ", first,
                         ", the first cpu job in priority and submission order"));
  // The CUDA worker's own queue is not blocked by the waiting CPU jobs.
  const std::string gpu_job = Submit("gpu", v1::BACKEND_CUDA);
  EXPECT_EQ(Assigned("host-a/gpu0"), Jobs{gpu_job});
  EXPECT_EQ(StateOf(first), v1::JOB_STATE_PENDING);
  EXPECT_EQ(StateOf(second), v1::JOB_STATE_PENDING);
}

// A worker that reports less memory than a job's weights, gradients and AdamW moments is not
// given it (the worker would only fail its preflight); the wait reason names both sizes.
TEST_F(ClusterSchedulingTest, AJobWaitsForAWorkerWithTheMemoryItsModelNeeds) {
  v1::Hello small = CpuHello("cpu-small");
  small.set_memory_bytes(512 << 10);  // less than the tiny model's 977920 bytes
  Connect(small);
  const std::string job = Submit("tiny", v1::BACKEND_CPU);
  EXPECT_EQ(StateOf(job), v1::JOB_STATE_PENDING);
  EXPECT_EQ(Assigned("cpu-small"), Jobs{});
  const std::string reason = cluster_->WaitReason(job);
  EXPECT_NE(reason.find(absl::StrCat(JobMinimumMemoryBytes(testing::TinyJobSpec()), " bytes")),
            std::string::npos)
      << reason;
  EXPECT_NE(reason.find("524288 bytes"), std::string::npos) << reason;
  // A worker big enough arrives: the job starts there.
  Connect(CpuHello("cpu-big"));
  EXPECT_EQ(Assigned("cpu-big"), Jobs{job});
  EXPECT_EQ(StateOf(job), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(Assigned("cpu-small"), Jobs{});
}

}  // namespace
}  // namespace raptr
