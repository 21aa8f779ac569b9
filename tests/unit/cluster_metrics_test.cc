// What the coordinator exports and for how long, on a real JobStore (a temporary SQLite file), a
// real Cluster and a metrics::Registry: every unfinished job plus the latest finished ones, however
// many jobs the store holds; a departed worker's series for the retention window only. Also the
// store queries behind it and ListJobs' views (JobServiceImpl over the same kind of store).
#include <gtest/gtest.h>
#include <sqlite3.h>
#include <unistd.h>

#include <filesystem>
#include <memory>
#include <regex>
#include <set>
#include <string>
#include <tuple>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/job_spec.h"
#include "common/metrics.h"
#include "coordinator/cluster.h"
#include "coordinator/job_service.h"
#include "coordinator/store/job_store.h"
#include "tests/unit/job_fixtures.h"

namespace raptr {
namespace {

v1::JobSpec Spec(const std::string& name) { return testing::TinyJobSpec(name); }

class NullLink final : public WorkerLink {
 public:
  void Send(const v1::CoordinatorMessage& /*message*/) override {}
  void Close(const absl::Status& /*status*/) override {}
};

v1::Hello Hello(const std::string& worker_id) {
  v1::Hello hello;
  hello.set_worker_id(worker_id);
  hello.set_backend(v1::BACKEND_CPU);
  hello.set_instance_id(absl::StrCat(worker_id, "-instance"));
  return hello;
}

// The distinct job_id label values of raptr_job_* series in a rendered registry.
std::set<std::string> ExportedJobIds(const std::string& text) {
  std::set<std::string> ids;
  static const std::regex kJobId("^raptr_job_[a-z_]+\\{job_id=\"([^\"]+)\"");
  std::smatch match;
  size_t begin = 0;
  while (begin < text.size()) {
    size_t end = text.find('\n', begin);
    if (end == std::string::npos) end = text.size();
    const std::string line = text.substr(begin, end - begin);
    if (std::regex_search(line, match, kJobId)) ids.insert(match[1]);
    begin = end + 1;
  }
  return ids;
}

bool Has(const std::string& text, const std::string& line) {
  return text.find(absl::StrCat(line, "\n")) != std::string::npos;
}

class ClusterMetricsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    dir_ = testing::FreshTestDir("raptr_cluster_metrics_test");
    path_ = (dir_ / "store.db").string();
    absl::StatusOr<std::unique_ptr<JobStore>> store = JobStore::Open(path_);
    ASSERT_TRUE(store.ok()) << store.status();
    store_ = *std::move(store);
  }
  void TearDown() override {
    store_.reset();
    std::filesystem::remove_all(dir_);
  }

  // Runs SQL on a second, raw connection to the store's file.
  void Sql(const std::string& sql) {
    sqlite3* db = nullptr;
    ASSERT_EQ(sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READWRITE, nullptr), SQLITE_OK);
    char* error = nullptr;
    EXPECT_EQ(sqlite3_exec(db, sql.c_str(), nullptr, nullptr, &error), SQLITE_OK)
        << (error != nullptr ? error : "") << "\n"
        << sql;
    sqlite3_free(error);
    sqlite3_close(db);
  }

  // `count` CANCELLED jobs copied from job-000001's row, in one transaction (thousands of
  // CreateJob calls would pay an fsync each): ids job-000002.., finishing 1 ms apart long ago,
  // in id order.
  void AddFinishedJobs(int count) {
    Sql(absl::StrCat(
        "WITH RECURSIVE n(seq) AS (SELECT 2 UNION ALL SELECT seq + 1 FROM n WHERE seq < ",
        count + 1,
        ") INSERT INTO jobs (seq, id, name, spec, spec_yaml, state, priority, created_ms, "
        "updated_ms, finished_ms) SELECT n.seq, printf('job-%06d', n.seq), 'old', j.spec, "
        "j.spec_yaml, ",
        static_cast<int>(v1::JOB_STATE_CANCELLED),
        ", 0, 1000 + n.seq, 1000 + n.seq, 1000 + n.seq FROM n, jobs j WHERE j.id = "
        "'job-000001'"));
  }

  std::filesystem::path dir_;
  std::string path_;
  std::unique_ptr<JobStore> store_;
};

TEST_F(ClusterMetricsTest, StoreListsTheLatestFinishedJobsFromAnIndex) {
  ASSERT_TRUE(store_->CreateJob(Spec("first"), "").ok());
  AddFinishedJobs(20);
  absl::StatusOr<std::vector<std::string>> ids = store_->LatestFinishedJobIds(3);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<std::string>{"job-000021", "job-000020", "job-000019"}));
  // job-000001 is PENDING: not finished, never listed; once it finishes it is the latest.
  ASSERT_TRUE(store_->UpdateJobState("job-000001", v1::JOB_STATE_CANCELLED, "").ok());
  ids = store_->LatestFinishedJobIds(2);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<std::string>{"job-000001", "job-000021"}));
  EXPECT_EQ(store_->LatestFinishedJobIds(0).status().code(), absl::StatusCode::kInvalidArgument);

  // The query walks jobs_by_end rather than sorting the table.
  sqlite3* db = nullptr;
  ASSERT_EQ(sqlite3_open_v2(path_.c_str(), &db, SQLITE_OPEN_READONLY, nullptr), SQLITE_OK);
  sqlite3_stmt* stmt = nullptr;
  ASSERT_EQ(sqlite3_prepare_v2(db,
                               "EXPLAIN QUERY PLAN SELECT id FROM jobs WHERE finished_ms IS NOT "
                               "NULL ORDER BY finished_ms DESC, seq DESC LIMIT 3",
                               -1, &stmt, nullptr),
            SQLITE_OK);
  std::string plan;
  while (sqlite3_step(stmt) == SQLITE_ROW) {
    absl::StrAppend(&plan, reinterpret_cast<const char*>(sqlite3_column_text(stmt, 3)), "\n");
  }
  sqlite3_finalize(stmt);
  sqlite3_close(db);
  EXPECT_NE(plan.find("jobs_by_end"), std::string::npos) << plan;
  EXPECT_EQ(plan.find("TEMP B-TREE"), std::string::npos) << plan;

  // A store opened before the index existed gets it at its next open, with no version bump.
  Sql("DROP INDEX jobs_by_end");
  store_.reset();
  absl::StatusOr<std::unique_ptr<JobStore>> reopened = JobStore::Open(path_);
  ASSERT_TRUE(reopened.ok()) << reopened.status();
  ids = (*reopened)->LatestFinishedJobIds(1);
  ASSERT_TRUE(ids.ok()) << ids.status();
  EXPECT_EQ(*ids, (std::vector<std::string>{"job-000001"}));
}

TEST_F(ClusterMetricsTest, ListWithoutSpecReadsOnlyTheName) {
  v1::JobSpec spec = Spec("named");
  spec.mutable_schedule()->mutable_full();
  ASSERT_TRUE(store_->CreateJob(spec, "").ok());
  JobFilter filter;
  filter.with_spec = false;
  absl::StatusOr<std::vector<v1::Job>> jobs = store_->ListJobs(filter);
  ASSERT_TRUE(jobs.ok()) << jobs.status();
  ASSERT_EQ(jobs->size(), 1u);
  EXPECT_EQ((*jobs)[0].spec().name(), "named");
  EXPECT_FALSE((*jobs)[0].spec().has_schedule());
  EXPECT_EQ((*jobs)[0].state(), v1::JOB_STATE_PENDING);
}

TEST_F(ClusterMetricsTest, ExportsEveryUnfinishedJobAndOnlyTheLatestFinished) {
  ASSERT_TRUE(store_->CreateJob(Spec("template"), "").ok());
  ASSERT_TRUE(store_->UpdateJobState("job-000001", v1::JOB_STATE_CANCELLED, "").ok());
  AddFinishedJobs(1010);  // job-000002 .. job-001011, all finished before job-000001
  ClusterOptions options;
  options.metrics_finished_jobs = 3;
  Cluster cluster(store_.get(), options);
  metrics::Registry registry;
  cluster.ExportMetrics(&registry);
  cluster.RefreshMetrics();
  EXPECT_EQ(ExportedJobIds(registry.Render()),
            (std::set<std::string>{"job-000001", "job-001011", "job-001010"}));

  // A job submitted after a thousand others is exported (a listing of the first 1000 missed it),
  // with its spec's labels, and keeps them while it is read without its spec.
  v1::JobSpec spec = Spec("fresh");
  spec.mutable_schedule()->mutable_full();
  absl::StatusOr<v1::Job> fresh = store_->CreateJob(spec, "");
  ASSERT_TRUE(fresh.ok()) << fresh.status();
  ASSERT_EQ(fresh->id(), "job-001012");
  cluster.RefreshMetrics();
  std::string text = registry.Render();
  const std::string labels = "job_id=\"job-001012\",job_name=\"fresh\",method=\"full\"";
  EXPECT_TRUE(Has(text, absl::StrCat("raptr_job_state{", labels, ",state=\"pending\"} 1"))) << text;
  EXPECT_TRUE(Has(text, absl::StrCat("raptr_job_steps{", labels, "} 100"))) << text;
  EXPECT_TRUE(Has(text, absl::StrCat("raptr_job_recoveries_total{", labels, "} 0"))) << text;
  ASSERT_TRUE(store_->UpdateJobState(fresh->id(), v1::JOB_STATE_RUNNING, "").ok());
  cluster.RefreshMetrics();
  text = registry.Render();
  EXPECT_TRUE(Has(text, absl::StrCat("raptr_job_state{", labels, ",state=\"running\"} 1"))) << text;
  EXPECT_TRUE(Has(text, absl::StrCat("raptr_job_state{", labels, ",state=\"pending\"} 0"))) << text;
  EXPECT_TRUE(Has(text, absl::StrCat("raptr_job_steps{", labels, "} 100"))) << text;
  EXPECT_EQ(text.find("job_id=\"job-001012\",job_name=\"fresh\",method=\"raptr\""),
            std::string::npos)
      << text;
  EXPECT_EQ(ExportedJobIds(text),
            (std::set<std::string>{"job-000001", "job-001011", "job-001010", "job-001012"}));

  // Once it finishes it is the latest finished job: its final state is exported and the oldest
  // of the three before it goes, every series of it (each state's, the counters).
  ASSERT_TRUE(store_->UpdateJobState(fresh->id(), v1::JOB_STATE_FAILED, "boom").ok());
  cluster.RefreshMetrics();
  text = registry.Render();
  EXPECT_TRUE(Has(text, absl::StrCat("raptr_job_state{", labels, ",state=\"failed\"} 1"))) << text;
  EXPECT_TRUE(Has(text, absl::StrCat("raptr_job_state{", labels, ",state=\"running\"} 0"))) << text;
  EXPECT_EQ(ExportedJobIds(text),
            (std::set<std::string>{"job-001012", "job-000001", "job-001011"}));
  EXPECT_EQ(text.find("job-001010"), std::string::npos) << text;
  EXPECT_EQ(text.find("job-000500"), std::string::npos);

  // With no finished jobs kept, only the unfinished ones are exported.
  ClusterOptions none;
  none.metrics_finished_jobs = 0;
  Cluster unfinished_only(store_.get(), none);
  metrics::Registry other;
  unfinished_only.ExportMetrics(&other);
  ASSERT_TRUE(store_->CreateJob(Spec("waiting"), "").ok());
  unfinished_only.RefreshMetrics();
  EXPECT_EQ(ExportedJobIds(other.Render()), (std::set<std::string>{"job-001013"}));
}

TEST_F(ClusterMetricsTest, DepartedWorkersAreRetainedForTheWindowThenRemoved) {
  double now = 1000;
  ClusterOptions options;
  options.metrics_worker_retention_seconds = 60;
  options.clock = [&now] { return now; };
  // Workers a previous coordinator knew: one it saw leave long ago (gone), one that left 10 s
  // ago, and one still connected when it died (its record not marked gone).
  const int64_t wall_ms = absl::ToUnixMillis(absl::Now());
  for (const auto& [id, state, age_ms] : std::vector<std::tuple<std::string, std::string, int64_t>>{
           {"w-ancient", "gone", 3'600'000},
           {"w-recent", "gone", 10'000},
           {"w-crashed", "busy", 3'600'000}}) {
    WorkerRecord record;
    record.worker_id = id;
    record.backend = v1::BACKEND_CPU;
    record.state = state;
    record.last_seen_ms = wall_ms - age_ms;
    ASSERT_TRUE(store_->UpsertWorker(record).ok());
  }
  Cluster cluster(store_.get(), options);
  metrics::Registry registry;
  cluster.ExportMetrics(&registry);
  absl::StatusOr<int64_t> session = cluster.Connect(Hello("w0"), std::make_shared<NullLink>());
  ASSERT_TRUE(session.ok()) << session.status();
  cluster.RefreshMetrics();
  std::string text = registry.Render();
  EXPECT_TRUE(Has(text, "raptr_worker_connected{worker=\"w0\"} 1")) << text;
  EXPECT_TRUE(Has(text, "raptr_worker_connected{worker=\"w-recent\"} 0")) << text;
  EXPECT_TRUE(Has(text, "raptr_worker_connected{worker=\"w-crashed\"} 0")) << text;
  EXPECT_EQ(text.find("w-ancient"), std::string::npos) << text;

  cluster.Disconnect(*session);
  now += 10;
  cluster.RefreshMetrics();
  text = registry.Render();
  EXPECT_TRUE(Has(text, "raptr_worker_connected{worker=\"w0\"} 0")) << text;
  EXPECT_EQ(text.find("raptr_worker_tokens_per_second{worker=\"w0\"}"), std::string::npos);

  // w-recent left 10 s before the start (its window ends 50 s in); w0 and w-crashed 60 s after
  // they were seen gone.
  now += 45;
  cluster.RefreshMetrics();
  text = registry.Render();
  EXPECT_EQ(text.find("w-recent"), std::string::npos) << text;
  EXPECT_TRUE(Has(text, "raptr_worker_connected{worker=\"w0\"} 0")) << text;
  now += 10;
  cluster.RefreshMetrics();
  text = registry.Render();
  EXPECT_EQ(text.find("worker=\"w0\""), std::string::npos) << text;
  EXPECT_EQ(text.find("w-crashed"), std::string::npos) << text;
  EXPECT_TRUE(Has(text, "raptr_coordinator_workers 0")) << text;

  // A worker that comes back is exported again.
  session = cluster.Connect(Hello("w0"), std::make_shared<NullLink>());
  ASSERT_TRUE(session.ok()) << session.status();
  cluster.RefreshMetrics();
  EXPECT_TRUE(Has(registry.Render(), "raptr_worker_connected{worker=\"w0\"} 1"));
  cluster.Shutdown("test over");
}

TEST_F(ClusterMetricsTest, ZeroRetentionRemovesADepartedWorkerAtTheNextScrape) {
  ClusterOptions options;
  options.metrics_worker_retention_seconds = 0;
  Cluster cluster(store_.get(), options);
  metrics::Registry registry;
  cluster.ExportMetrics(&registry);
  absl::StatusOr<int64_t> session = cluster.Connect(Hello("w1"), std::make_shared<NullLink>());
  ASSERT_TRUE(session.ok()) << session.status();
  cluster.RefreshMetrics();
  EXPECT_TRUE(Has(registry.Render(), "raptr_worker_connected{worker=\"w1\"} 1"));
  cluster.Disconnect(*session);
  cluster.RefreshMetrics();
  EXPECT_EQ(registry.Render().find("w1"), std::string::npos) << registry.Render();
}

// ListJobs: BASIC (the default) without the specs' details, FULL with them; page tokens work
// with both, and a page of big specs ends early instead of passing the message cap.
TEST_F(ClusterMetricsTest, ListJobsViews) {
  JobServiceImpl service(store_.get());
  for (const char* name : {"a", "b", "c"}) {
    v1::JobSpec spec = Spec(name);
    spec.mutable_schedule()->mutable_pld()->set_gamma(0.002);
    ASSERT_TRUE(store_->CreateJob(spec, "").ok());
  }
  v1::ListJobsRequest request;
  request.set_page_size(2);
  v1::ListJobsResponse page;
  ASSERT_TRUE(service.ListJobs(nullptr, &request, &page).ok());
  ASSERT_EQ(page.jobs_size(), 2);
  const v1::Job& basic = page.jobs(0);
  EXPECT_EQ(basic.id(), "job-000001");
  EXPECT_EQ(basic.spec().name(), "a");
  EXPECT_EQ(basic.spec().training().steps(), 100);
  EXPECT_FALSE(basic.spec().training().has_batch());
  EXPECT_FALSE(basic.spec().has_model());
  EXPECT_FALSE(basic.spec().has_data());
  EXPECT_FALSE(basic.spec().has_optimizer());
  EXPECT_TRUE(basic.spec().schedule().has_pld());  // the kind, without its parameters
  EXPECT_FALSE(basic.spec().schedule().pld().has_gamma());
  EXPECT_EQ(basic.state(), v1::JOB_STATE_PENDING);
  EXPECT_TRUE(basic.has_create_time());
  EXPECT_EQ(page.next_page_token(), "job-000002");
  request.set_page_token(page.next_page_token());
  page.Clear();
  ASSERT_TRUE(service.ListJobs(nullptr, &request, &page).ok());
  ASSERT_EQ(page.jobs_size(), 1);
  EXPECT_EQ(page.jobs(0).id(), "job-000003");
  EXPECT_FALSE(page.jobs(0).spec().has_model());
  EXPECT_TRUE(page.next_page_token().empty());

  request.set_view(v1::JOB_VIEW_FULL);
  request.clear_page_token();
  page.Clear();
  ASSERT_TRUE(service.ListJobs(nullptr, &request, &page).ok());
  ASSERT_EQ(page.jobs_size(), 2);
  absl::StatusOr<v1::Job> stored = store_->GetJob("job-000001");
  ASSERT_TRUE(stored.ok()) << stored.status();
  EXPECT_EQ(page.jobs(0).spec().SerializeAsString(), stored->spec().SerializeAsString());
  EXPECT_DOUBLE_EQ(page.jobs(0).spec().schedule().pld().gamma(), 0.002);
  EXPECT_EQ(page.jobs(0).spec().model().layers(), 4);
  request.set_page_token(page.next_page_token());
  page.Clear();
  ASSERT_TRUE(service.ListJobs(nullptr, &request, &page).ok());
  ASSERT_EQ(page.jobs_size(), 1);
  EXPECT_EQ(page.jobs(0).spec().model().layers(), 4);
  EXPECT_TRUE(page.next_page_token().empty());

  request.set_view(static_cast<v1::JobView>(7));
  page.Clear();
  EXPECT_EQ(service.ListJobs(nullptr, &request, &page).error_code(),
            grpc::StatusCode::INVALID_ARGUMENT);

  // 40 specs of ~55 KB: over 2 MiB in all; a FULL page of 100 stops short, and the tokens reach
  // every job exactly once.
  v1::JobSpec big = Spec("big");
  for (int i = 0; i < 1900; ++i) {
    big.mutable_data()->add_train_shards(absl::StrFormat("/shared/data/shard-%06d.bin", i));
  }
  ASSERT_GT(big.ByteSizeLong(), 50'000u);
  for (int i = 0; i < 40; ++i) ASSERT_TRUE(store_->CreateJob(big, "").ok());
  request.set_view(v1::JOB_VIEW_FULL);
  request.set_page_size(100);
  request.clear_page_token();
  std::set<std::string> seen;
  int pages = 0;
  do {
    page.Clear();
    ASSERT_TRUE(service.ListJobs(nullptr, &request, &page).ok());
    ASSERT_GT(page.jobs_size(), 0);
    EXPECT_LE(page.ByteSizeLong(), (2u << 20) + 100'000);
    for (const v1::Job& job : page.jobs()) EXPECT_TRUE(seen.insert(job.id()).second) << job.id();
    request.set_page_token(page.next_page_token());
    ++pages;
  } while (!request.page_token().empty());
  EXPECT_EQ(seen.size(), 43u);
  EXPECT_GE(pages, 2);
  // BASIC pages of the same jobs are small: one page holds them all.
  request.set_view(v1::JOB_VIEW_BASIC);
  page.Clear();
  ASSERT_TRUE(service.ListJobs(nullptr, &request, &page).ok());
  EXPECT_EQ(page.jobs_size(), 43);
  EXPECT_TRUE(page.next_page_token().empty());
}

}  // namespace
}  // namespace raptr
