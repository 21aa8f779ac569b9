// WatchJob on a real SQLite store: JobWatch's merge of logged events and step summaries (a rewind
// inside one poll included), and JobWatchHub serving many streams over a real gRPC server on
// loopback without a thread per stream.
#include "coordinator/job_watch.h"

#include <gtest/gtest.h>
#include <unistd.h>

#include <chrono>
#include <filesystem>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "coordinator/job_service.h"
#include "grpcpp/grpcpp.h"
#include "raptr/v1/job.grpc.pb.h"
#include "tests/unit/job_fixtures.h"

namespace raptr {
namespace {

StepSummaryRecord Step(int64_t step, double loss) {
  StepSummaryRecord record;
  record.step = step;
  record.stage = 0;
  record.path_length = 4;
  record.loss = loss;
  record.learning_rate = 1e-3;
  record.tokens = 100 + step;  // distinct per step, so a double count shows in the total
  record.flops = 1e6;
  record.flops_full = 2e6;
  record.seconds = 0.01;
  return record;
}

std::vector<StepSummaryRecord> Steps(int64_t from, int64_t to, double loss) {
  std::vector<StepSummaryRecord> steps;
  for (int64_t s = from; s < to; ++s) steps.push_back(Step(s, loss));
  return steps;
}

class JobWatchTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("raptr_job_watch_test");
    absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open((dir_ / "store.db").string());
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
    absl::StatusOr<v1::Job> job = store_->CreateJob(testing::TinyJobSpec("watched", 40), "");
    ASSERT_TRUE(job.ok()) << job.status();
    job_ = job->id();
    ASSERT_TRUE(store_->UpdateJobState(job_, v1::JOB_STATE_RUNNING, "").ok());
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  std::filesystem::path dir_;
  std::unique_ptr<JobStore> store_;
  std::string job_;
};

// The StepSummary events' steps, in order.
std::vector<int64_t> StepsOf(const std::vector<v1::JobEvent>& events) {
  std::vector<int64_t> steps;
  for (const v1::JobEvent& event : events) {
    if (event.has_step()) steps.push_back(event.step().step());
  }
  return steps;
}

TEST_F(JobWatchTest, RewindInsideOnePollIsShownAndTotalsStayRight) {
  JobWatch watch(job_, 1);
  std::vector<v1::JobEvent> events;
  ASSERT_FALSE(*watch.Start(*store_, &events));
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(0, 10, 3.0)).ok());
  ASSERT_TRUE(store_->CommitCheckpoint(job_, 10, "ckpt-10", 1).ok());
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(10, 15, 2.0)).ok());
  events.clear();
  ASSERT_FALSE(*watch.Poll(*store_, &events));
  ASSERT_EQ(StepsOf(events).size(), 15u);
  // The checkpoint after step 10 comes after the summaries of steps 0 .. 9, before step 10's.
  ASSERT_EQ(events.size(), 16u);
  ASSERT_TRUE(events[10].has_checkpoint());
  EXPECT_EQ(events[10].checkpoint().step(), 10);

  // Between two polls: the group fails, the job rewinds to its checkpoint of step 10 and replays
  // past where the watcher was (17 > 15), so the watcher's position alone cannot show it.
  ASSERT_TRUE(store_->UpdateJobState(job_, v1::JOB_STATE_RECOVERING, "lost a rank").ok());
  ASSERT_TRUE(store_->DiscardStepSummariesAfter(job_, 9).ok());
  ASSERT_TRUE(store_->UpdateJobState(job_, v1::JOB_STATE_RUNNING, "").ok());
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(10, 17, 1.5)).ok());
  events.clear();
  ASSERT_FALSE(*watch.Poll(*store_, &events));

  int rewinds = 0;
  for (const v1::JobEvent& event : events) {
    if (!event.has_rewound()) continue;
    ++rewinds;
    EXPECT_EQ(event.rewound().to_step(), 10);
    EXPECT_EQ(event.rewound().from_step(), 15);
    EXPECT_EQ(event.rewound().progress().step(), 10);
  }
  EXPECT_EQ(rewinds, 1);
  // The replayed steps come after the rewind, with their new losses.
  std::vector<int64_t> replayed;
  bool after_rewind = false;
  for (const v1::JobEvent& event : events) {
    if (event.has_rewound()) after_rewind = true;
    if (event.has_step()) {
      EXPECT_TRUE(after_rewind) << "step " << event.step().step() << " sent before the rewind";
      EXPECT_DOUBLE_EQ(event.step().loss(), 1.5);
      replayed.push_back(event.step().step());
    }
  }
  EXPECT_EQ(replayed, (std::vector<int64_t>{10, 11, 12, 13, 14, 15, 16}));
  // The cumulative progress is the store's: each step counted once.
  absl::StatusOr<v1::Job> job = store_->GetJob(job_);
  ASSERT_TRUE(job.ok());
  const v1::JobEvent& last = events[events.size() - 1];
  ASSERT_TRUE(last.has_step());
  EXPECT_EQ(last.step().progress().step(), 17);
  EXPECT_EQ(last.step().progress().tokens(), job->progress().tokens());
  EXPECT_DOUBLE_EQ(last.step().progress().flops(), job->progress().flops());
}

TEST_F(JobWatchTest, RewindBeforeTheWatcherGotThereChangesNothingItSent) {
  JobWatch watch(job_, 1);
  std::vector<v1::JobEvent> events;
  ASSERT_FALSE(*watch.Start(*store_, &events));
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(0, 5, 3.0)).ok());
  events.clear();
  ASSERT_FALSE(*watch.Poll(*store_, &events));  // at step 5
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(5, 12, 2.0)).ok());
  ASSERT_TRUE(store_->DiscardStepSummariesAfter(job_, 7).ok());  // back to 8
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(8, 12, 1.0)).ok());
  events.clear();
  ASSERT_FALSE(*watch.Poll(*store_, &events));
  // 5, 6, 7 as first recorded, then the rewind, then 8 .. 11 once, as replayed.
  EXPECT_EQ(StepsOf(events), (std::vector<int64_t>{5, 6, 7, 8, 9, 10, 11}));
  absl::StatusOr<v1::Job> job = store_->GetJob(job_);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(events.back().step().progress().tokens(), job->progress().tokens());
}

// `raptrctl logs`: from_start replays the whole history after the snapshot, in the order a
// watcher from the start would have seen it, and no_follow ends the watch once it is out.
TEST_F(JobWatchTest, FromStartReplaysTheHistoryInOrder) {
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(0, 10, 3.0)).ok());
  ASSERT_TRUE(store_->CommitCheckpoint(job_, 10, "/ckpt/step_10", 1).ok());
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(10, 15, 2.0)).ok());
  // A live watcher from before the first step is the reference.
  JobWatch live(job_, 1);
  std::vector<v1::JobEvent> first;
  ASSERT_FALSE(*live.Start(*store_, &first));
  JobWatch replay(job_, 1, /*from_start=*/true, /*no_follow=*/true);
  std::vector<v1::JobEvent> history;
  ASSERT_TRUE(*replay.Start(*store_, &history)) << "no_follow: over once the history is out";
  ASSERT_GT(history.size(), 1u);
  EXPECT_TRUE(history[0].has_snapshot());
  EXPECT_EQ(StepsOf(history), (std::vector<int64_t>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12,
                                                    13, 14}));
  // The state change to RUNNING (logged in SetUp) comes before the steps; the checkpoint of step
  // 10 after step 9's summary and before step 10's.
  auto index_of = [&](auto pred) {
    for (size_t i = 0; i < history.size(); ++i) if (pred(history[i])) return static_cast<int>(i);
    return -1;
  };
  const int running = index_of([](const v1::JobEvent& e) {
    return e.has_state_changed() && e.state_changed().new_state() == v1::JOB_STATE_RUNNING;
  });
  const int checkpoint = index_of([](const v1::JobEvent& e) { return e.has_checkpoint(); });
  const int step0 = index_of([](const v1::JobEvent& e) { return e.has_step() && e.step().step() == 0; });
  const int step9 = index_of([](const v1::JobEvent& e) { return e.has_step() && e.step().step() == 9; });
  const int step10 = index_of([](const v1::JobEvent& e) { return e.has_step() && e.step().step() == 10; });
  ASSERT_GE(running, 0);
  ASSERT_GE(checkpoint, 0);
  EXPECT_LT(running, step0);
  EXPECT_LT(step9, checkpoint);
  EXPECT_LT(checkpoint, step10);
  absl::StatusOr<v1::Job> job = store_->GetJob(job_);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(history.back().step().progress().tokens(), job->progress().tokens());

  // Following instead: the history, then what comes next, then the end.
  JobWatch follow(job_, 5, /*from_start=*/true);
  std::vector<v1::JobEvent> events;
  ASSERT_FALSE(*follow.Start(*store_, &events));
  EXPECT_EQ(StepsOf(events), (std::vector<int64_t>{0, 5, 10}));
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(15, 40, 1.0)).ok());
  ASSERT_TRUE(store_->UpdateJobState(job_, v1::JOB_STATE_SUCCEEDED, "").ok());
  events.clear();
  ASSERT_TRUE(*follow.Poll(*store_, &events));
  EXPECT_EQ(StepsOf(events), (std::vector<int64_t>{15, 20, 25, 30, 35, 39}));
  // A job that has ended replays to its end whether or not it follows.
  JobWatch ended(job_, 1000, /*from_start=*/true);
  events.clear();
  ASSERT_TRUE(*ended.Start(*store_, &events));
  EXPECT_TRUE(events.back().has_state_changed());
  EXPECT_EQ(events.back().state_changed().new_state(), v1::JOB_STATE_SUCCEEDED);
}

TEST_F(JobWatchTest, DiscardOfNothingLogsNoRewind) {
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(0, 5, 3.0)).ok());
  const int64_t version = store_->JobVersion(job_);
  absl::StatusOr<int64_t> seq = store_->LastEventSeq(job_);
  ASSERT_TRUE(seq.ok());
  ASSERT_TRUE(store_->DiscardStepSummariesAfter(job_, 4).ok());
  EXPECT_EQ(*store_->LastEventSeq(job_), *seq);
  EXPECT_EQ(store_->JobVersion(job_), version) << "a no-op wakes no watcher";
}

TEST_F(JobWatchTest, EveryWriteAWatcherSeesBumpsTheJobsVersion) {
  int64_t version = store_->JobVersion(job_);
  EXPECT_GT(version, 0);
  auto bumped = [&](const char* what) {
    const int64_t now = store_->JobVersion(job_);
    EXPECT_GT(now, version) << what;
    version = now;
  };
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(0, 3, 3.0)).ok());
  bumped("summaries");
  ASSERT_TRUE(store_->CommitCheckpoint(job_, 2, "ckpt-2", 7).ok());
  bumped("checkpoint");
  ASSERT_TRUE(store_->RejectCheckpoint(job_, 2, "bad").ok());
  bumped("rejected checkpoint");
  ASSERT_TRUE(store_->DiscardStepSummariesAfter(job_, 0).ok());
  bumped("rewind");
  ASSERT_TRUE(store_->SetJobGroup(job_, 2, 1).ok());
  bumped("group");
  ASSERT_TRUE(store_->UpdateJobState(job_, v1::JOB_STATE_CANCELLED, "test").ok());
  bumped("state");
}

// The threads of this process (Linux).
int ThreadCount() {
  int count = 0;
  for ([[maybe_unused]] const auto& entry : std::filesystem::directory_iterator("/proc/self/task")) {
    ++count;
  }
  return count;
}

class WatchServerTest : public JobWatchTest {
 protected:
  void StartServer(JobWatchHub::Options options) {
    service_ = std::make_unique<JobServiceImpl>(store_.get(), nullptr, options);
    grpc::ServerBuilder builder;
    builder.AddListeningPort("127.0.0.1:0", grpc::InsecureServerCredentials(), &port_);
    builder.RegisterService(service_.get());
    server_ = builder.BuildAndStart();
    ASSERT_NE(server_, nullptr);
    channel_ = grpc::CreateChannel(absl::StrCat("127.0.0.1:", port_),
                                   grpc::InsecureChannelCredentials());
    stub_ = v1::JobService::NewStub(channel_);
  }
  void TearDown() override {
    if (server_ != nullptr) server_->Shutdown(std::chrono::system_clock::now());
    server_.reset();
    service_.reset();
    JobWatchTest::TearDown();
  }

  std::unique_ptr<JobServiceImpl> service_;
  std::unique_ptr<grpc::Server> server_;
  std::shared_ptr<grpc::Channel> channel_;
  std::unique_ptr<v1::JobService::Stub> stub_;
  int port_ = 0;
};

struct OpenWatch {
  grpc::ClientContext context;
  std::unique_ptr<grpc::ClientReader<v1::JobEvent>> reader;
};

TEST_F(WatchServerTest, ManyStreamsHoldNoThreadEachAndSeeTheEnd) {
  StartServer({});
  constexpr int kStreams = 200;
  std::vector<std::unique_ptr<OpenWatch>> watches;
  v1::WatchJobRequest request;
  request.set_job_id(job_);
  for (int i = 0; i < kStreams; ++i) {
    auto watch = std::make_unique<OpenWatch>();
    watch->reader = stub_->WatchJob(&watch->context, request);
    v1::JobEvent snapshot;
    ASSERT_TRUE(watch->reader->Read(&snapshot)) << "stream " << i;
    ASSERT_TRUE(snapshot.has_snapshot());
    watches.push_back(std::move(watch));
  }
  EXPECT_EQ(service_->open_watch_streams(), kStreams);
  // A thread per stream would be 200 more; gRPC's own pools are a few dozen at most.
  EXPECT_LT(ThreadCount(), 100) << "threads with " << kStreams << " open WatchJob streams";

  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(0, 3, 2.0)).ok());
  ASSERT_TRUE(store_->UpdateJobState(job_, v1::JOB_STATE_CANCELLED, "done watching").ok());
  for (int i = 0; i < kStreams; ++i) {
    std::vector<v1::JobEvent> events;
    v1::JobEvent event;
    while (watches[i]->reader->Read(&event)) events.push_back(event);
    grpc::Status status = watches[i]->reader->Finish();
    ASSERT_TRUE(status.ok()) << "stream " << i << ": " << status.error_message();
    ASSERT_EQ(StepsOf(events), (std::vector<int64_t>{0, 1, 2})) << "stream " << i;
    ASSERT_TRUE(events.back().has_state_changed());
    EXPECT_EQ(events.back().state_changed().new_state(), v1::JOB_STATE_CANCELLED);
  }
  for (int i = 0; i < 50 && service_->open_watch_streams() > 0; ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  EXPECT_EQ(service_->open_watch_streams(), 0);
}

TEST_F(WatchServerTest, StreamsPastTheQuotaAreRefusedAndACancelledOneFreesItsPlace) {
  JobWatchHub::Options options;
  options.max_streams = 3;
  StartServer(options);
  v1::WatchJobRequest request;
  request.set_job_id(job_);
  std::vector<std::unique_ptr<OpenWatch>> watches;
  for (int i = 0; i < 3; ++i) {
    auto watch = std::make_unique<OpenWatch>();
    watch->reader = stub_->WatchJob(&watch->context, request);
    v1::JobEvent snapshot;
    ASSERT_TRUE(watch->reader->Read(&snapshot));
    watches.push_back(std::move(watch));
  }
  {
    OpenWatch extra;
    extra.reader = stub_->WatchJob(&extra.context, request);
    v1::JobEvent event;
    EXPECT_FALSE(extra.reader->Read(&event));
    grpc::Status status = extra.reader->Finish();
    EXPECT_EQ(status.error_code(), grpc::StatusCode::RESOURCE_EXHAUSTED) << status.error_message();
  }
  // The client goes away: its place frees up.
  watches[0]->context.TryCancel();
  v1::JobEvent event;
  while (watches[0]->reader->Read(&event)) {
  }
  EXPECT_EQ(watches[0]->reader->Finish().error_code(), grpc::StatusCode::CANCELLED);
  bool admitted = false;
  for (int attempt = 0; attempt < 50 && !admitted; ++attempt) {
    OpenWatch again;
    again.reader = stub_->WatchJob(&again.context, request);
    if (again.reader->Read(&event)) {
      admitted = true;
      again.context.TryCancel();
      while (again.reader->Read(&event)) {
      }
      again.reader->Finish();
    } else {
      again.reader->Finish();
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
  }
  EXPECT_TRUE(admitted);
}

TEST_F(WatchServerTest, ABacklogOfSeveralBatchesArrivesInOrderWhileTheJobRuns) {
  StartServer({});
  v1::WatchJobRequest request;
  request.set_job_id(job_);
  OpenWatch open;
  open.reader = stub_->WatchJob(&open.context, request);
  v1::JobEvent event;
  ASSERT_TRUE(open.reader->Read(&event));
  // 2.5 batches recorded at once; the job keeps running, so each read takes one batch.
  constexpr int kSteps = JobWatch::kStepBatch * 5 / 2;
  ASSERT_TRUE(store_->RecordStepSummaries(job_, Steps(0, kSteps, 2.0)).ok());
  for (int step = 0; step < kSteps; ++step) {
    ASSERT_TRUE(open.reader->Read(&event)) << "step " << step;
    ASSERT_TRUE(event.has_step());
    ASSERT_EQ(event.step().step(), step);
  }
  ASSERT_TRUE(store_->UpdateJobState(job_, v1::JOB_STATE_CANCELLED, "enough").ok());
  ASSERT_TRUE(open.reader->Read(&event));
  EXPECT_EQ(event.state_changed().new_state(), v1::JOB_STATE_CANCELLED);
  EXPECT_FALSE(open.reader->Read(&event));
  EXPECT_TRUE(open.reader->Finish().ok());
}

TEST_F(WatchServerTest, EndWatchesEndsOpenStreamsAtOnceAndRefusesNewOnes) {
  StartServer({});
  v1::WatchJobRequest request;
  request.set_job_id(job_);
  OpenWatch open;
  open.reader = stub_->WatchJob(&open.context, request);
  v1::JobEvent event;
  ASSERT_TRUE(open.reader->Read(&event));
  const grpc::Status bye(grpc::StatusCode::UNAVAILABLE, "shutting down");
  service_->EndWatches(bye);
  while (open.reader->Read(&event)) {
  }
  grpc::Status status = open.reader->Finish();
  EXPECT_EQ(status.error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(status.error_message(), "shutting down");
  OpenWatch late;
  late.reader = stub_->WatchJob(&late.context, request);
  EXPECT_FALSE(late.reader->Read(&event));
  EXPECT_EQ(late.reader->Finish().error_code(), grpc::StatusCode::UNAVAILABLE);
  EXPECT_EQ(service_->open_watch_streams(), 0);
}

TEST_F(WatchServerTest, UnknownAndMissingJobsAreClearErrors) {
  StartServer({});
  for (const std::string& id : {std::string(""), std::string("job-999")}) {
    grpc::ClientContext context;
    v1::WatchJobRequest request;
    request.set_job_id(id);
    auto reader = stub_->WatchJob(&context, request);
    v1::JobEvent event;
    EXPECT_FALSE(reader->Read(&event));
    grpc::Status status = reader->Finish();
    EXPECT_EQ(status.error_code(), id.empty() ? grpc::StatusCode::INVALID_ARGUMENT
                                              : grpc::StatusCode::NOT_FOUND)
        << status.error_message();
    if (!id.empty()) {
      EXPECT_NE(status.error_message().find(id), std::string::npos);
    }
  }
}

}  // namespace
}  // namespace raptr
