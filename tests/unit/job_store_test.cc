// JobStore on a real SQLite file: jobs, the state machine, progress, checkpoints, workers,
// restarts.
#include "coordinator/store/job_store.h"

#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "common/job_spec.h"
#include "google/protobuf/util/time_util.h"

namespace raptr {
namespace {

using ::google::protobuf::util::TimeUtil;

constexpr char kSpecYaml[] = R"(name: tiny
model:
  layers: 4
  d_model: 32
  heads: 2
  vocab_size: 256
data:
  train_shards: [train.bin]
  val_shards: [val.bin]
training:
  batch: 4
  steps: 100
)";

v1::JobSpec ValidSpec(const std::string& name = "tiny") {
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(kSpecYaml);
  EXPECT_TRUE(spec.ok()) << spec.status();
  spec->set_name(name);
  return *spec;
}

class JobStoreTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = std::filesystem::temp_directory_path() /
           absl::StrCat("raptr_job_store_test_", getpid(), "_",
                        ::testing::UnitTest::GetInstance()->current_test_info()->name());
    std::filesystem::remove_all(dir_);
    std::filesystem::create_directories(dir_);
    path_ = (dir_ / "store.db").string();
  }
  void TearDown() override { std::filesystem::remove_all(dir_); }

  std::unique_ptr<JobStore> OpenOrDie() {
    absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path_);
    EXPECT_TRUE(store.ok()) << store.status();
    return store.ok() ? std::move(*store) : nullptr;
  }

  // Rows of `table`, read with a separate raw SQLite connection.
  int64_t CountRows(const std::string& table) {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    const std::string sql = absl::StrCat("SELECT COUNT(*) FROM ", table);
    EXPECT_EQ(sqlite3_prepare_v2(db, sql.c_str(), -1, &stmt, nullptr), SQLITE_OK);
    EXPECT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    const int64_t count = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return count;
  }

  int64_t SchemaVersion() {
    sqlite3* db = nullptr;
    EXPECT_EQ(sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
    sqlite3_stmt* stmt = nullptr;
    EXPECT_EQ(sqlite3_prepare_v2(db, "SELECT MAX(version) FROM schema_version", -1, &stmt, nullptr),
              SQLITE_OK);
    EXPECT_EQ(sqlite3_step(stmt), SQLITE_ROW);
    const int64_t version = sqlite3_column_int64(stmt, 0);
    sqlite3_finalize(stmt);
    sqlite3_close(db);
    return version;
  }

  void Sql(const std::string& sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open(path_.c_str(), &db), SQLITE_OK);
    ASSERT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, nullptr), SQLITE_OK)
        << sqlite3_errmsg(db);
    sqlite3_close(db);
  }

  std::filesystem::path dir_;
  std::string path_;
};

StepSummaryRecord Step(int64_t step, double loss) {
  StepSummaryRecord s;
  s.step = step;
  s.stage = 0;
  s.path_length = 2;
  s.loss = loss;
  s.learning_rate = 1e-3;
  s.tokens = 256;
  s.flops = 1e6;
  s.flops_full = 2e6;
  s.seconds = 0.5;
  return s;
}

TEST_F(JobStoreTest, CreateGetList) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<v1::Job> a = store->CreateJob(ValidSpec("a"), "");
  ASSERT_TRUE(a.ok()) << a.status();
  absl::StatusOr<v1::Job> b = store->CreateJob(ValidSpec("b"), "");
  ASSERT_TRUE(b.ok()) << b.status();
  EXPECT_EQ(a->id(), "job-000001");
  EXPECT_EQ(b->id(), "job-000002");
  EXPECT_EQ(a->state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(a->spec().name(), "a");
  // Defaults filled in the stored spec.
  EXPECT_EQ(a->spec().training().seq(), 64);
  EXPECT_TRUE(a->spec().schedule().has_raptr());
  EXPECT_GT(a->create_time().seconds(), 0);
  EXPECT_FALSE(a->has_start_time());
  EXPECT_EQ(a->progress().step(), 0);
  EXPECT_EQ(a->progress().stage(), -1);
  EXPECT_FALSE(a->progress().has_checkpoint_step());

  absl::StatusOr<v1::Job> got = store->GetJob(b->id());
  ASSERT_TRUE(got.ok()) << got.status();
  EXPECT_EQ(got->spec().name(), "b");

  absl::StatusOr<v1::Job> missing = store->GetJob("job-999999");
  EXPECT_EQ(missing.status().code(), absl::StatusCode::kNotFound);
  EXPECT_NE(missing.status().message().find("job-999999"), std::string::npos);

  absl::StatusOr<std::vector<v1::Job>> all = store->ListJobs({});
  ASSERT_TRUE(all.ok()) << all.status();
  ASSERT_EQ(all->size(), 2u);
  EXPECT_EQ((*all)[0].id(), a->id());
  EXPECT_EQ((*all)[1].id(), b->id());

  ASSERT_TRUE(store->UpdateJobState(a->id(), v1::JOB_STATE_RUNNING, "").ok());
  JobFilter running;
  running.states = {v1::JOB_STATE_RUNNING};
  absl::StatusOr<std::vector<v1::Job>> r = store->ListJobs(running);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].id(), a->id());

  JobFilter page;
  page.limit = 1;
  r = store->ListJobs(page);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].id(), a->id());
  page.after_id = a->id();
  r = store->ListJobs(page);
  ASSERT_TRUE(r.ok());
  ASSERT_EQ(r->size(), 1u);
  EXPECT_EQ((*r)[0].id(), b->id());
  page.limit = 0;
  EXPECT_EQ(store->ListJobs(page).status().code(), absl::StatusCode::kInvalidArgument);
}

TEST_F(JobStoreTest, InvalidSpecWritesNothing) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  ASSERT_TRUE(store->CreateJob(ValidSpec(), "").ok());
  ASSERT_EQ(CountRows("jobs"), 1);
  v1::JobSpec bad = ValidSpec();
  bad.mutable_optimizer()->set_lr(-1);
  absl::StatusOr<v1::Job> job = store->CreateJob(bad, "req-bad");
  EXPECT_EQ(job.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(job.status().message().find("optimizer.lr"), std::string::npos) << job.status();
  EXPECT_EQ(CountRows("jobs"), 1);
  // The next valid job still gets the next id.
  absl::StatusOr<v1::Job> next = store->CreateJob(ValidSpec(), "req-bad");
  ASSERT_TRUE(next.ok()) << next.status();
  EXPECT_EQ(next->id(), "job-000002");
}

TEST_F(JobStoreTest, RequestIdIsIdempotent) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<v1::Job> first = store->CreateJob(ValidSpec(), "req-1");
  ASSERT_TRUE(first.ok()) << first.status();
  absl::StatusOr<v1::Job> again = store->CreateJob(ValidSpec(), "req-1");
  ASSERT_TRUE(again.ok()) << again.status();
  EXPECT_EQ(again->id(), first->id());
  EXPECT_EQ(CountRows("jobs"), 1);
  absl::StatusOr<v1::Job> different = store->CreateJob(ValidSpec("other"), "req-1");
  EXPECT_EQ(different.status().code(), absl::StatusCode::kAlreadyExists);
  EXPECT_EQ(CountRows("jobs"), 1);
  absl::StatusOr<v1::Job> second = store->CreateJob(ValidSpec(), "req-2");
  ASSERT_TRUE(second.ok());
  EXPECT_NE(second->id(), first->id());
  // Empty request ids are not keys.
  ASSERT_TRUE(store->CreateJob(ValidSpec(), "").ok());
  ASSERT_TRUE(store->CreateJob(ValidSpec(), "").ok());
  EXPECT_EQ(CountRows("jobs"), 4);
}

TEST_F(JobStoreTest, StateMachine) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::string id = store->CreateJob(ValidSpec(), "")->id();
  // PENDING cannot skip to SUCCEEDED or RECOVERING.
  absl::StatusOr<v1::Job> bad = store->UpdateJobState(id, v1::JOB_STATE_SUCCEEDED, "");
  EXPECT_EQ(bad.status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_NE(bad.status().message().find("JOB_STATE_PENDING"), std::string::npos);
  EXPECT_NE(bad.status().message().find("JOB_STATE_SUCCEEDED"), std::string::npos);
  EXPECT_EQ(store->UpdateJobState(id, v1::JOB_STATE_RECOVERING, "").status().code(),
            absl::StatusCode::kFailedPrecondition);

  absl::StatusOr<v1::Job> job = store->UpdateJobState(id, v1::JOB_STATE_RUNNING, "ignored");
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(job->message(), "");
  EXPECT_TRUE(job->has_start_time());
  const auto started = job->start_time();
  job = store->UpdateJobState(id, v1::JOB_STATE_RECOVERING, "worker w1 lost");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->message(), "worker w1 lost");
  EXPECT_FALSE(job->has_end_time());
  job = store->UpdateJobState(id, v1::JOB_STATE_RUNNING, "");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->message(), "");
  EXPECT_EQ(job->start_time().seconds(), started.seconds());
  EXPECT_EQ(job->start_time().nanos(), started.nanos());
  job = store->UpdateJobState(id, v1::JOB_STATE_SUCCEEDED, "");
  ASSERT_TRUE(job.ok());
  EXPECT_TRUE(job->has_end_time());
  // Terminal states are final.
  for (v1::JobState to : {v1::JOB_STATE_RUNNING, v1::JOB_STATE_FAILED, v1::JOB_STATE_CANCELLED,
                          v1::JOB_STATE_PENDING}) {
    absl::Status s = store->UpdateJobState(id, to, "").status();
    EXPECT_EQ(s.code(), absl::StatusCode::kFailedPrecondition) << s;
    EXPECT_NE(s.message().find("JOB_STATE_SUCCEEDED"), std::string::npos) << s;
  }
  EXPECT_EQ(store->UpdateJobState("job-424242", v1::JOB_STATE_RUNNING, "").status().code(),
            absl::StatusCode::kNotFound);

  // Cancel and fail from every non-terminal state.
  const std::string p = store->CreateJob(ValidSpec(), "")->id();
  job = store->UpdateJobState(p, v1::JOB_STATE_CANCELLED, "user");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->message(), "user");
  EXPECT_FALSE(job->has_start_time());
  EXPECT_EQ(store->UpdateJobState(p, v1::JOB_STATE_CANCELLED, "").status().code(),
            absl::StatusCode::kFailedPrecondition);
  const std::string r = store->CreateJob(ValidSpec(), "")->id();
  ASSERT_TRUE(store->UpdateJobState(r, v1::JOB_STATE_RUNNING, "").ok());
  ASSERT_TRUE(store->UpdateJobState(r, v1::JOB_STATE_RECOVERING, "x").ok());
  job = store->UpdateJobState(r, v1::JOB_STATE_FAILED, "no workers");
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->message(), "no workers");
}

TEST_F(JobStoreTest, StepSummariesUpsertRangeAndProgress) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::string id = store->CreateJob(ValidSpec(), "")->id();
  std::vector<StepSummaryRecord> batch;
  for (int s = 0; s < 10; ++s) batch.push_back(Step(s, 5.0 - 0.1 * s));
  batch[4].eval_loss = 4.2;
  ASSERT_TRUE(store->RecordStepSummaries(id, batch).ok());
  // Replayed steps replace, not add.
  StepSummaryRecord replay = Step(9, 3.0);
  replay.stage = 1;
  replay.path_length = 3;
  ASSERT_TRUE(store->RecordStepSummaries(id, {replay}).ok());
  EXPECT_EQ(CountRows("step_summaries"), 10);

  absl::StatusOr<std::vector<StepSummaryRecord>> range = store->StepSummaries(id, 3, 4);
  ASSERT_TRUE(range.ok()) << range.status();
  ASSERT_EQ(range->size(), 4u);
  EXPECT_EQ((*range)[0].step, 3);
  EXPECT_EQ((*range)[3].step, 6);
  EXPECT_TRUE((*range)[1].eval_loss.has_value());
  EXPECT_DOUBLE_EQ(*(*range)[1].eval_loss, 4.2);
  EXPECT_FALSE((*range)[0].eval_loss.has_value());
  range = store->StepSummaries(id, 8, 100);
  ASSERT_TRUE(range.ok());
  ASSERT_EQ(range->size(), 2u);
  EXPECT_DOUBLE_EQ((*range)[1].loss, 3.0);
  EXPECT_EQ(store->StepSummaries(id, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);

  absl::StatusOr<v1::Job> job = store->GetJob(id);
  ASSERT_TRUE(job.ok());
  const v1::JobProgress& p = job->progress();
  EXPECT_EQ(p.step(), 10);
  EXPECT_EQ(p.stage(), 1);
  EXPECT_EQ(p.path_length(), 3);
  EXPECT_DOUBLE_EQ(p.loss(), 3.0);
  ASSERT_TRUE(p.has_eval_loss());
  EXPECT_DOUBLE_EQ(p.eval_loss(), 4.2);
  EXPECT_EQ(p.eval_step(), 4);
  EXPECT_EQ(p.tokens(), 2560);
  EXPECT_DOUBLE_EQ(p.flops(), 1e7);
  EXPECT_DOUBLE_EQ(p.flops_full(), 2e7);
  EXPECT_DOUBLE_EQ(p.train_seconds(), 5.0);

  // A recovery rewinds to its checkpoint.
  ASSERT_TRUE(store->DiscardStepSummariesAfter(id, 5).ok());
  job = store->GetJob(id);
  ASSERT_TRUE(job.ok());
  EXPECT_EQ(job->progress().step(), 6);
  EXPECT_EQ(job->progress().tokens(), 6 * 256);

  // Unknown jobs and bad steps write nothing.
  EXPECT_EQ(store->RecordStepSummaries("job-777777", {Step(0, 1)}).code(),
            absl::StatusCode::kNotFound);
  EXPECT_EQ(store->RecordStepSummaries(id, {Step(6, 1), Step(-1, 1)}).code(),
            absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(CountRows("step_summaries"), 6);
}

TEST_F(JobStoreTest, Checkpoints) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::string id = store->CreateJob(ValidSpec(), "")->id();
  absl::StatusOr<std::optional<CheckpointRecord>> latest = store->LatestCheckpoint(id);
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_FALSE(latest->has_value());
  ASSERT_TRUE(store->CommitCheckpoint(id, 50, "/runs/a/step_50", 0).ok());
  ASSERT_TRUE(store->CommitCheckpoint(id, 99, "/runs/a/step_99", 0).ok());
  ASSERT_TRUE(store->CommitCheckpoint(id, 20, "/runs/a/step_20", 0).ok());
  latest = store->LatestCheckpoint(id);
  ASSERT_TRUE(latest.ok());
  ASSERT_TRUE(latest->has_value());
  EXPECT_EQ((*latest)->step, 99);
  EXPECT_EQ((*latest)->path, "/runs/a/step_99");
  EXPECT_GT((*latest)->committed_at_ms, 0);
  EXPECT_EQ(store->GetJob(id)->progress().checkpoint_step(), 99);
  EXPECT_EQ(store->CommitCheckpoint("job-123456", 1, "/x", 0).code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->CommitCheckpoint(id, 1, "", 0).code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->LatestCheckpoint("job-123456").status().code(), absl::StatusCode::kNotFound);
}

// RetryJob's store half: only a FAILED job; back to RECOVERING with the message and no end time,
// its summaries past the latest usable checkpoint gone (a rewind logged), the rest kept.
TEST_F(JobStoreTest, RetryFailedJobResumesFromTheLatestUsableCheckpoint) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::string id = store->CreateJob(ValidSpec(), "")->id();
  EXPECT_EQ(store->RetryFailedJob(id, "x").status().code(), absl::StatusCode::kFailedPrecondition)
      << "a PENDING job is not retried";
  ASSERT_TRUE(store->UpdateJobState(id, v1::JOB_STATE_RUNNING, "").ok());
  std::vector<StepSummaryRecord> steps;
  for (int i = 0; i < 15; ++i) steps.push_back(Step(i, 5.0 - 0.1 * i));
  ASSERT_TRUE(store->RecordStepSummaries(id, steps).ok());
  ASSERT_TRUE(store->CommitCheckpoint(id, 10, "/runs/a/step_10", 0).ok());
  ASSERT_TRUE(store->CommitCheckpoint(id, 12, "/runs/a/step_12", 0).ok());
  ASSERT_TRUE(store->RejectCheckpoint(id, 12, "digest mismatch").ok());
  absl::StatusOr<v1::Job> failed = store->UpdateJobState(id, v1::JOB_STATE_FAILED, "boom");
  ASSERT_TRUE(failed.ok());
  ASSERT_TRUE(failed->has_end_time());
  const int64_t events_before = *store->LastEventSeq(id);

  absl::StatusOr<v1::Job> retried = store->RetryFailedJob(id, "retried by user alice");
  ASSERT_TRUE(retried.ok()) << retried.status();
  EXPECT_EQ(retried->state(), v1::JOB_STATE_RECOVERING);
  EXPECT_EQ(retried->message(), "retried by user alice");
  EXPECT_FALSE(retried->has_end_time());
  EXPECT_EQ(retried->progress().step(), 10) << "resumes after step 9, from checkpoint 10";
  EXPECT_EQ(retried->progress().tokens(), 10 * 256);
  absl::StatusOr<std::vector<StepSummaryRecord>> kept = store->StepSummaries(id, 0, 100);
  ASSERT_TRUE(kept.ok());
  EXPECT_EQ(kept->size(), 10u);
  absl::StatusOr<std::vector<std::pair<int64_t, v1::JobEvent>>> events =
      store->JobEvents(id, events_before, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 2u);
  EXPECT_TRUE((*events)[0].second.has_rewound());
  EXPECT_EQ((*events)[0].second.rewound().to_step(), 10);
  ASSERT_TRUE((*events)[1].second.has_state_changed());
  EXPECT_EQ((*events)[1].second.state_changed().old_state(), v1::JOB_STATE_FAILED);
  EXPECT_EQ((*events)[1].second.state_changed().new_state(), v1::JOB_STATE_RECOVERING);
  // From RECOVERING it runs again as a recovery does; a second retry needs it FAILED again.
  EXPECT_EQ(store->RetryFailedJob(id, "x").status().code(), absl::StatusCode::kFailedPrecondition);
  ASSERT_TRUE(store->UpdateJobState(id, v1::JOB_STATE_RUNNING, "").ok());
  EXPECT_EQ(store->RetryFailedJob("job-123456", "x").status().code(), absl::StatusCode::kNotFound);

  // With no checkpoint at all, it starts over: every summary goes.
  const std::string other = store->CreateJob(ValidSpec(), "")->id();
  ASSERT_TRUE(store->UpdateJobState(other, v1::JOB_STATE_RUNNING, "").ok());
  ASSERT_TRUE(store->RecordStepSummaries(other, steps).ok());
  ASSERT_TRUE(store->UpdateJobState(other, v1::JOB_STATE_FAILED, "boom").ok());
  ASSERT_TRUE(store->RetryFailedJob(other, "again").ok());
  EXPECT_EQ(store->GetJob(other)->progress().step(), 0);
  EXPECT_TRUE(store->StepSummaries(other, 0, 100)->empty());
}

// DeleteJob: only an ended job, and every row of it goes (summaries, events, checkpoints); other
// jobs keep theirs.
TEST_F(JobStoreTest, DeleteJobRemovesEveryRowOfAnEndedJobOnly) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::string id = store->CreateJob(ValidSpec(), "")->id();
  const std::string other = store->CreateJob(ValidSpec(), "")->id();
  for (const std::string& job : {id, other}) {
    ASSERT_TRUE(store->UpdateJobState(job, v1::JOB_STATE_RUNNING, "").ok());
    ASSERT_TRUE(store->RecordStepSummaries(job, {Step(0, 2.0), Step(1, 1.5)}).ok());
    ASSERT_TRUE(store->CommitCheckpoint(job, 2, "/runs/" + job + "/step_2", 0).ok());
  }
  EXPECT_EQ(store->DeleteJob(id).code(), absl::StatusCode::kFailedPrecondition)
      << "a RUNNING job is not deleted";
  ASSERT_TRUE(store->UpdateJobState(id, v1::JOB_STATE_SUCCEEDED, "").ok());
  const int64_t rows_before = CountRows("step_summaries") + CountRows("job_events") +
                              CountRows("checkpoints");
  ASSERT_TRUE(store->DeleteJob(id).ok());
  EXPECT_EQ(store->GetJob(id).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(CountRows("jobs"), 1);
  EXPECT_EQ(CountRows("step_summaries"), 2) << "the other job's summaries stay";
  EXPECT_EQ(CountRows("checkpoints"), 1);
  EXPECT_LT(CountRows("step_summaries") + CountRows("job_events") + CountRows("checkpoints"),
            rows_before);
  EXPECT_EQ(store->GetJob(other)->progress().step(), 2);
  EXPECT_EQ(store->DeleteJob(id).code(), absl::StatusCode::kNotFound);
}

// A checkpoint found unusable at resume is skipped from then on (the previous one is used), with
// a checkpoint_rejected event; the digest survives the round trip, all 64 bits of it.
TEST_F(JobStoreTest, RejectedCheckpointsAreSkipped) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::string id = store->CreateJob(ValidSpec(), "")->id();
  ASSERT_TRUE(store->CommitCheckpoint(id, 25, "/ck/25", 0x8000000000000001ull).ok());
  ASSERT_TRUE(store->CommitCheckpoint(id, 50, "/ck/50", 0xfedcba9876543210ull).ok());
  EXPECT_EQ((*store->LatestCheckpoint(id))->state_digest, 0xfedcba9876543210ull);
  ASSERT_TRUE(store->RejectCheckpoint(id, 50, "digest mismatch").ok());
  absl::StatusOr<std::optional<CheckpointRecord>> latest = store->LatestCheckpoint(id);
  ASSERT_TRUE(latest.ok() && latest->has_value());
  EXPECT_EQ((*latest)->step, 25);
  EXPECT_EQ((*latest)->state_digest, 0x8000000000000001ull);
  absl::StatusOr<std::vector<std::pair<int64_t, v1::JobEvent>>> events = store->JobEvents(id, 0, 10);
  ASSERT_TRUE(events.ok());
  ASSERT_FALSE(events->empty());
  const v1::JobEvent& last = events->back().second;
  ASSERT_TRUE(last.has_checkpoint_rejected());
  EXPECT_EQ(last.checkpoint_rejected().step(), 50);
  EXPECT_EQ(last.checkpoint_rejected().path(), "/ck/50");
  EXPECT_EQ(last.checkpoint_rejected().reason(), "digest mismatch");
  // Rejected once; a second rejection or an unknown step is NOT_FOUND.
  EXPECT_EQ(store->RejectCheckpoint(id, 50, "again").code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->RejectCheckpoint(id, 7, "none").code(), absl::StatusCode::kNotFound);
  ASSERT_TRUE(store->RejectCheckpoint(id, 25, "also bad").ok());
  EXPECT_FALSE(store->LatestCheckpoint(id)->has_value());
  // Committing the step again (a later generation rewrote it) makes it usable again.
  ASSERT_TRUE(store->CommitCheckpoint(id, 50, "/ck/50-again", 7).ok());
  EXPECT_EQ((*store->LatestCheckpoint(id))->path, "/ck/50-again");
}

TEST_F(JobStoreTest, EventLogRecordsStateChangesAndCheckpoints) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::string id = store->CreateJob(ValidSpec(), "")->id();
  const std::string other = store->CreateJob(ValidSpec("other"), "")->id();
  // Creation logs nothing: a watcher's snapshot shows a new job.
  EXPECT_EQ(*store->LastEventSeq(id), 0);
  EXPECT_TRUE(store->JobEvents(id, 0, 10)->empty());

  ASSERT_TRUE(store->SetJobGroup(id, 1, 2).ok());
  absl::StatusOr<v1::Job> running = store->UpdateJobState(id, v1::JOB_STATE_RUNNING, "");
  ASSERT_TRUE(running.ok()) << running.status();
  ASSERT_TRUE(store->UpdateJobState(other, v1::JOB_STATE_CANCELLED, "not this one").ok());
  ASSERT_TRUE(store->CommitCheckpoint(id, 10, "/runs/a/step_10", 0).ok());
  ASSERT_TRUE(store->CommitCheckpoint(id, 20, "/runs/a/step_20", 0).ok());
  ASSERT_TRUE(store->UpdateJobState(id, v1::JOB_STATE_RECOVERING, "worker w1 lost").ok());
  ASSERT_TRUE(store->SetJobGroup(id, 2, 1).ok());
  // Refused and failed changes log nothing.
  const int64_t before_refused = *store->LastEventSeq(id);
  EXPECT_FALSE(store->UpdateJobState(id, v1::JOB_STATE_SUCCEEDED, "").ok());
  EXPECT_FALSE(store->CommitCheckpoint(id, 30, "", 0).ok());
  EXPECT_FALSE(store->CommitCheckpoint(id, -1, "/x", 0).ok());
  EXPECT_EQ(*store->LastEventSeq(id), before_refused);
  ASSERT_TRUE(store->UpdateJobState(id, v1::JOB_STATE_RUNNING, "").ok());
  absl::StatusOr<v1::Job> done = store->UpdateJobState(id, v1::JOB_STATE_SUCCEEDED, "");
  ASSERT_TRUE(done.ok()) << done.status();

  absl::StatusOr<std::vector<std::pair<int64_t, v1::JobEvent>>> events =
      store->JobEvents(id, 0, 100);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 6u);
  for (size_t i = 1; i < events->size(); ++i) {
    EXPECT_LT((*events)[i - 1].first, (*events)[i].first);
    EXPECT_LE(TimeUtil::TimestampToMilliseconds((*events)[i - 1].second.time()),
              TimeUtil::TimestampToMilliseconds((*events)[i].second.time()));
  }
  const auto expect_state = [&](size_t i, v1::JobState from, v1::JobState to,
                                const std::string& reason, int64_t generation, int32_t world) {
    SCOPED_TRACE(absl::StrCat("event ", i));
    const v1::JobEvent& event = (*events)[i].second;
    ASSERT_TRUE(event.has_state_changed()) << event.DebugString();
    EXPECT_EQ(event.state_changed().old_state(), from);
    EXPECT_EQ(event.state_changed().new_state(), to);
    EXPECT_EQ(event.state_changed().reason(), reason);
    EXPECT_EQ(event.state_changed().generation(), generation);
    EXPECT_EQ(event.state_changed().world_size(), world);
  };
  const auto expect_checkpoint = [&](size_t i, int64_t step, const std::string& path,
                                     int64_t generation) {
    SCOPED_TRACE(absl::StrCat("event ", i));
    const v1::JobEvent& event = (*events)[i].second;
    ASSERT_TRUE(event.has_checkpoint()) << event.DebugString();
    EXPECT_EQ(event.checkpoint().step(), step);
    EXPECT_EQ(event.checkpoint().path(), path);
    EXPECT_EQ(event.checkpoint().generation(), generation);
  };
  expect_state(0, v1::JOB_STATE_PENDING, v1::JOB_STATE_RUNNING, "", 1, 2);
  expect_checkpoint(1, 10, "/runs/a/step_10", 1);
  expect_checkpoint(2, 20, "/runs/a/step_20", 1);
  expect_state(3, v1::JOB_STATE_RUNNING, v1::JOB_STATE_RECOVERING, "worker w1 lost", 1, 2);
  expect_state(4, v1::JOB_STATE_RECOVERING, v1::JOB_STATE_RUNNING, "", 2, 1);
  expect_state(5, v1::JOB_STATE_RUNNING, v1::JOB_STATE_SUCCEEDED, "", 2, 1);
  // An event's time is its change's: the state change's is the job's update time.
  EXPECT_EQ(TimeUtil::TimestampToMilliseconds((*events)[0].second.time()),
            TimeUtil::TimestampToMilliseconds(running->update_time()));
  EXPECT_EQ(TimeUtil::TimestampToMilliseconds((*events)[5].second.time()),
            TimeUtil::TimestampToMilliseconds(done->end_time()));
  EXPECT_EQ(*store->LastEventSeq(id), events->back().first);

  // The other job's log holds only its own change.
  events = store->JobEvents(other, 0, 100);
  ASSERT_TRUE(events.ok());
  ASSERT_EQ(events->size(), 1u);
  expect_state(0, v1::JOB_STATE_PENDING, v1::JOB_STATE_CANCELLED, "not this one", 0, 0);

  // The log is durable.
  store.reset();
  store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->JobEvents(id, 0, 100)->size(), 6u);
}

TEST_F(JobStoreTest, JobEventsPaging) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::string id = store->CreateJob(ValidSpec(), "")->id();
  for (int step = 1; step <= 5; ++step) {
    ASSERT_TRUE(store->CommitCheckpoint(id, step, absl::StrCat("/runs/a/step_", step), 0).ok());
  }
  // Pages of two, each after the previous page's last seq, read every event once, in order.
  std::vector<int64_t> steps;
  int64_t after = 0;
  int pages = 0;
  while (true) {
    absl::StatusOr<std::vector<std::pair<int64_t, v1::JobEvent>>> page =
        store->JobEvents(id, after, 2);
    ASSERT_TRUE(page.ok()) << page.status();
    if (page->empty()) break;
    ASSERT_LE(page->size(), 2u);
    ++pages;
    for (const auto& [seq, event] : *page) {
      EXPECT_GT(seq, after);
      after = seq;
      steps.push_back(event.checkpoint().step());
    }
  }
  EXPECT_EQ(pages, 3);
  EXPECT_EQ(steps, (std::vector<int64_t>{1, 2, 3, 4, 5}));
  EXPECT_EQ(after, *store->LastEventSeq(id));
  EXPECT_TRUE(store->JobEvents(id, after, 10)->empty());

  EXPECT_EQ(store->JobEvents(id, 0, 0).status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(store->JobEvents("job-424242", 0, 10).status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->LastEventSeq("job-424242").status().code(), absl::StatusCode::kNotFound);
  EXPECT_EQ(store->GetJobWithEventSeq("job-424242").status().code(), absl::StatusCode::kNotFound);
}

// GetJobWithEventSeq pairs the job with its log position: the job shows every event up to the
// seq and none after it, also while another connection writes.
TEST_F(JobStoreTest, GetJobWithEventSeqIsConsistent) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  const std::string id = store->CreateJob(ValidSpec(), "")->id();
  absl::StatusOr<JobWithEventSeq> start = store->GetJobWithEventSeq(id);
  ASSERT_TRUE(start.ok()) << start.status();
  EXPECT_EQ(start->job.state(), v1::JOB_STATE_PENDING);
  EXPECT_EQ(start->last_event_seq, 0);

  auto writer = OpenOrDie();
  ASSERT_NE(writer, nullptr);
  constexpr int kCheckpoints = 200;
  std::thread commits([&] {
    for (int step = 1; step <= kCheckpoints; ++step) {
      ASSERT_TRUE(writer->CommitCheckpoint(id, step, absl::StrCat("/ck/", step), 0).ok());
    }
  });
  int checked = 0;
  for (int i = 0; i < 2000 && checked < kCheckpoints; ++i) {
    absl::StatusOr<JobWithEventSeq> read = store->GetJobWithEventSeq(id);
    ASSERT_TRUE(read.ok()) << read.status();
    // Every event is a checkpoint, so the snapshot's checkpoint step is the count of events up
    // to the seq.
    absl::StatusOr<std::vector<std::pair<int64_t, v1::JobEvent>>> logged =
        store->JobEvents(id, 0, kCheckpoints + 1);
    ASSERT_TRUE(logged.ok());
    int64_t upto = 0;
    for (const auto& [seq, event] : *logged) {
      if (seq <= read->last_event_seq) ++upto;
    }
    EXPECT_EQ(
        read->job.progress().has_checkpoint_step() ? read->job.progress().checkpoint_step() : 0,
        upto);
    checked = static_cast<int>(upto);
  }
  commits.join();
}

TEST_F(JobStoreTest, Workers) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  WorkerRecord w;
  w.worker_id = "host-b/gpu0";
  w.backend = v1::BACKEND_CUDA;
  w.devices = 1;
  w.memory_bytes = 1 << 30;
  w.state = "idle";
  ASSERT_TRUE(store->UpsertWorker(w).ok());
  w.state = "busy";
  w.last_seen_ms = 1234;
  ASSERT_TRUE(store->UpsertWorker(w).ok());
  WorkerRecord cpu;
  cpu.worker_id = "host-a/cpu";
  cpu.backend = v1::BACKEND_CPU;
  ASSERT_TRUE(store->UpsertWorker(cpu).ok());
  EXPECT_EQ(store->UpsertWorker(WorkerRecord{}).code(), absl::StatusCode::kInvalidArgument);
  absl::StatusOr<std::vector<WorkerRecord>> workers = store->ListWorkers();
  ASSERT_TRUE(workers.ok()) << workers.status();
  ASSERT_EQ(workers->size(), 2u);
  EXPECT_EQ((*workers)[0].worker_id, "host-a/cpu");
  EXPECT_GT((*workers)[0].last_seen_ms, 0);
  EXPECT_EQ((*workers)[1].backend, v1::BACKEND_CUDA);
  EXPECT_EQ((*workers)[1].state, "busy");
  EXPECT_EQ((*workers)[1].last_seen_ms, 1234);
  EXPECT_EQ((*workers)[1].memory_bytes, 1 << 30);
}

// The coordinator-restart property: destroy the store, reopen the file, nothing is lost.
TEST_F(JobStoreTest, ReopenLosesNothing) {
  std::string pending, running, recovering, done;
  {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    pending = store->CreateJob(ValidSpec("p"), "req-p")->id();
    running = store->CreateJob(ValidSpec("r"), "")->id();
    recovering = store->CreateJob(ValidSpec("c"), "")->id();
    done = store->CreateJob(ValidSpec("d"), "")->id();
    for (const std::string& id : {running, recovering, done}) {
      ASSERT_TRUE(store->UpdateJobState(id, v1::JOB_STATE_RUNNING, "").ok());
    }
    ASSERT_TRUE(store->UpdateJobState(recovering, v1::JOB_STATE_RECOVERING, "lost w2").ok());
    ASSERT_TRUE(store->UpdateJobState(done, v1::JOB_STATE_SUCCEEDED, "").ok());
    ASSERT_TRUE(store->SetJobGroup(running, 3, 2).ok());
    ASSERT_TRUE(store->RecordStepSummaries(running, {Step(0, 5), Step(1, 4)}).ok());
    ASSERT_TRUE(store->CommitCheckpoint(running, 1, "/ck/1", 0).ok());
    WorkerRecord w;
    w.worker_id = "w1";
    w.backend = v1::BACKEND_CPU;
    ASSERT_TRUE(store->UpsertWorker(w).ok());
  }
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<std::vector<v1::Job>> all = store->ListJobs({});
  ASSERT_TRUE(all.ok());
  ASSERT_EQ(all->size(), 4u);
  absl::StatusOr<v1::Job> r = store->GetJob(running);
  ASSERT_TRUE(r.ok());
  EXPECT_EQ(r->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(r->spec().name(), "r");
  EXPECT_EQ(r->generation(), 3);
  EXPECT_EQ(r->world_size(), 2);
  EXPECT_EQ(r->progress().step(), 2);
  EXPECT_EQ(r->progress().checkpoint_step(), 1);
  EXPECT_EQ(store->GetJob(recovering)->message(), "lost w2");
  EXPECT_EQ(store->GetJob(done)->state(), v1::JOB_STATE_SUCCEEDED);
  absl::StatusOr<std::vector<v1::Job>> recover = store->JobsToRecover();
  ASSERT_TRUE(recover.ok());
  ASSERT_EQ(recover->size(), 2u);
  EXPECT_EQ((*recover)[0].id(), running);
  EXPECT_EQ((*recover)[1].id(), recovering);
  // The request id still dedupes, and ids are never reused.
  EXPECT_EQ(store->CreateJob(ValidSpec("p"), "req-p")->id(), pending);
  EXPECT_EQ(store->CreateJob(ValidSpec("n"), "")->id(), "job-000005");
  EXPECT_EQ(store->ListWorkers()->size(), 1u);
}

TEST_F(JobStoreTest, TwoStoresOnOneFile) {
  auto a = OpenOrDie();
  auto b = OpenOrDie();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  const std::string id = a->CreateJob(ValidSpec(), "")->id();
  absl::StatusOr<v1::Job> seen = b->GetJob(id);
  ASSERT_TRUE(seen.ok()) << seen.status();
  ASSERT_TRUE(b->UpdateJobState(id, v1::JOB_STATE_RUNNING, "").ok());
  EXPECT_EQ(a->GetJob(id)->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(b->CreateJob(ValidSpec(), "")->id(), "job-000002");
}

// Threads share one store, and a second store on the same file writes beside them.
TEST_F(JobStoreTest, ConcurrentWriters) {
  auto a = OpenOrDie();
  auto b = OpenOrDie();
  ASSERT_NE(a, nullptr);
  ASSERT_NE(b, nullptr);
  constexpr int kThreads = 4;
  constexpr int kJobsEach = 10;
  std::vector<std::thread> threads;
  for (int t = 0; t < kThreads; ++t) {
    JobStore* store = t % 2 == 0 ? a.get() : b.get();
    threads.emplace_back([store, t] {
      for (int j = 0; j < kJobsEach; ++j) {
        absl::StatusOr<v1::Job> job = store->CreateJob(ValidSpec(), absl::StrCat("t", t, "-", j));
        ASSERT_TRUE(job.ok()) << job.status();
        ASSERT_TRUE(store->RecordStepSummaries(job->id(), {Step(0, 1), Step(1, 1)}).ok());
      }
    });
  }
  for (std::thread& thread : threads) thread.join();
  EXPECT_EQ(CountRows("jobs"), kThreads * kJobsEach);
  EXPECT_EQ(CountRows("step_summaries"), 2 * kThreads * kJobsEach);
  JobFilter all;
  all.limit = 1000;
  absl::StatusOr<std::vector<v1::Job>> jobs = a->ListJobs(all);
  ASSERT_TRUE(jobs.ok());
  ASSERT_EQ(jobs->size(), static_cast<size_t>(kThreads * kJobsEach));
  EXPECT_EQ(jobs->back().id(), absl::StrCat("job-0000", kThreads * kJobsEach));
}

TEST_F(JobStoreTest, NotADatabaseIsAClearError) {
  {
    std::ofstream out(path_);
    out << "this is not an SQLite database, just some text that is long enough to matter.\n";
    for (int i = 0; i < 100; ++i) out << "garbage garbage garbage garbage\n";
  }
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kDataLoss) << store.status();
  EXPECT_NE(store.status().message().find(path_), std::string::npos) << store.status();
  std::printf("not a database: %s\n", store.status().ToString().c_str());
}

TEST_F(JobStoreTest, ForeignDatabaseIsRefused) {
  Sql("CREATE TABLE something_else (x INTEGER)");
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_NE(store.status().message().find("not a raptr store"), std::string::npos);
}

TEST_F(JobStoreTest, FutureSchemaVersionIsRefused) {
  { ASSERT_NE(OpenOrDie(), nullptr); }
  const int future = JobStore::kSchemaVersion + 1;
  Sql(absl::StrCat("UPDATE schema_version SET version = ", future));
  absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path_);
  ASSERT_FALSE(store.ok());
  EXPECT_EQ(store.status().code(), absl::StatusCode::kFailedPrecondition) << store.status();
  EXPECT_NE(store.status().message().find(absl::StrCat("schema version ", future)),
            std::string::npos)
      << store.status();
}

TEST_F(JobStoreTest, NewStoreHasTheCurrentSchemaVersion) {
  { ASSERT_NE(OpenOrDie(), nullptr); }
  EXPECT_EQ(SchemaVersion(), JobStore::kSchemaVersion);
  EXPECT_EQ(CountRows("schema_version"), 1);
  EXPECT_EQ(CountRows("job_events"), 0);
}

// Jobs keep their submitter; request ids are per owner: another owner's use of the same id is
// another job, never the first owner's.
TEST_F(JobStoreTest, RecordsOwnersAndScopesRequestIds) {
  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  absl::StatusOr<v1::Job> alice = store->CreateJob(ValidSpec("a"), "req-1", "alice");
  ASSERT_TRUE(alice.ok()) << alice.status();
  EXPECT_EQ(alice->owner(), "alice");
  EXPECT_EQ(store->GetJob(alice->id())->owner(), "alice");
  absl::StatusOr<v1::Job> again = store->CreateJob(ValidSpec("a"), "req-1", "alice");
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->id(), alice->id());
  // Bob's "req-1" is his own: a new job, even with a different spec.
  absl::StatusOr<v1::Job> bob = store->CreateJob(ValidSpec("b"), "req-1", "bob");
  ASSERT_TRUE(bob.ok()) << bob.status();
  EXPECT_NE(bob->id(), alice->id());
  EXPECT_EQ(bob->owner(), "bob");
  EXPECT_EQ(store->CreateJob(ValidSpec("b"), "req-1", "bob")->id(), bob->id());
  // A control character could forge another owner's key.
  EXPECT_EQ(store->CreateJob(ValidSpec("c"), "alice\x1freq-1", "").status().code(),
            absl::StatusCode::kInvalidArgument);
  JobFilter all;
  absl::StatusOr<std::vector<v1::Job>> listed = store->ListJobs(all);
  ASSERT_TRUE(listed.ok());
  ASSERT_EQ(listed->size(), 2u);
  EXPECT_EQ((*listed)[0].owner(), "alice");
  EXPECT_EQ((*listed)[1].owner(), "bob");
  EXPECT_EQ(store->CreateJob(ValidSpec("b"), "")->owner(), "");
}

// A store written by a build before the event log (schema version 1: no job_events table) opens,
// keeps its jobs and progress, and logs events from then on.
TEST_F(JobStoreTest, MigratesVersion1Store) {
  std::string id;
  {
    auto store = OpenOrDie();
    ASSERT_NE(store, nullptr);
    id = store->CreateJob(ValidSpec("old"), "req-old")->id();
    ASSERT_TRUE(store->SetJobGroup(id, 2, 4).ok());
    ASSERT_TRUE(store->UpdateJobState(id, v1::JOB_STATE_RUNNING, "").ok());
    ASSERT_TRUE(store->RecordStepSummaries(id, {Step(0, 5.0), Step(1, 4.0)}).ok());
    ASSERT_TRUE(store->CommitCheckpoint(id, 2, "/runs/old/step_2", 0).ok());
  }
  // What version 1 looked like: the same tables without job_events (its index goes with it),
  // without version 3's checkpoint columns and without version 4's owner.
  Sql("DROP TABLE job_events; ALTER TABLE checkpoints DROP COLUMN state_digest; "
      "ALTER TABLE checkpoints DROP COLUMN rejected_ms; ALTER TABLE jobs DROP COLUMN owner; "
      "UPDATE schema_version SET version = 1");
  ASSERT_EQ(SchemaVersion(), 1);

  auto store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(SchemaVersion(), JobStore::kSchemaVersion);
  EXPECT_EQ(CountRows("schema_version"), 1);
  EXPECT_EQ(store->GetJob(id)->owner(), "");  // jobs from before authentication have no owner
  // An old checkpoint has no digest: it is resumed from without the check.
  absl::StatusOr<std::optional<CheckpointRecord>> old_checkpoint = store->LatestCheckpoint(id);
  ASSERT_TRUE(old_checkpoint.ok() && old_checkpoint->has_value());
  EXPECT_EQ((*old_checkpoint)->step, 2);
  EXPECT_EQ((*old_checkpoint)->state_digest, 0u);
  absl::StatusOr<v1::Job> job = store->GetJob(id);
  ASSERT_TRUE(job.ok()) << job.status();
  EXPECT_EQ(job->spec().name(), "old");
  EXPECT_EQ(job->state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ(job->generation(), 2);
  EXPECT_EQ(job->progress().step(), 2);
  EXPECT_EQ(job->progress().checkpoint_step(), 2);
  EXPECT_EQ(store->CreateJob(ValidSpec("old"), "req-old")->id(), id);  // Idempotency kept.
  // The old events are gone with the old table; new ones are logged.
  EXPECT_EQ(*store->LastEventSeq(id), 0);
  ASSERT_TRUE(store->UpdateJobState(id, v1::JOB_STATE_SUCCEEDED, "").ok());
  absl::StatusOr<std::vector<std::pair<int64_t, v1::JobEvent>>> events =
      store->JobEvents(id, 0, 10);
  ASSERT_TRUE(events.ok()) << events.status();
  ASSERT_EQ(events->size(), 1u);
  EXPECT_EQ((*events)[0].second.state_changed().old_state(), v1::JOB_STATE_RUNNING);
  EXPECT_EQ((*events)[0].second.state_changed().new_state(), v1::JOB_STATE_SUCCEEDED);
  EXPECT_EQ(*store->LastEventSeq(id), (*events)[0].first);

  // A migrated store reopens as a current one: the migration ran once.
  store.reset();
  store = OpenOrDie();
  ASSERT_NE(store, nullptr);
  EXPECT_EQ(store->JobEvents(id, 0, 10)->size(), 1u);
}

TEST_F(JobStoreTest, MissingDirectoryIsAnError) {
  absl::StatusOr<std::unique_ptr<JobStore>> store =
      JobStore::Open((dir_ / "no" / "such" / "dir" / "store.db").string());
  ASSERT_FALSE(store.ok());
  EXPECT_NE(store.status().message().find("no/such/dir"), std::string::npos) << store.status();
}

}  // namespace
}  // namespace raptr
