// JobStore over SQLite: schema, transactions and the job state machine.
#include "coordinator/store/job_store.h"

#include <sqlite3.h>

#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/string_view.h"
#include "absl/time/clock.h"
#include "absl/time/time.h"
#include "common/failpoint.h"
#include "common/job_spec.h"
#include "common/status.h"
#include "google/protobuf/util/message_differencer.h"
#include "google/protobuf/util/time_util.h"

namespace raptr {
namespace {

using ::google::protobuf::util::TimeUtil;

// How long a call waits for another connection's write lock before UNAVAILABLE.
constexpr int kBusyTimeoutMs = 5000;

// Schema version 1. Timestamps are unix milliseconds; states and backends are enum numbers.
// jobs.seq is the AUTOINCREMENT counter the id is formatted from (never reused); id is the key
// every other table refers to.
constexpr char kSchemaV1[] = R"sql(
CREATE TABLE schema_version (version INTEGER NOT NULL);
CREATE TABLE jobs (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  id TEXT NOT NULL UNIQUE,
  name TEXT NOT NULL,
  spec BLOB NOT NULL,
  spec_yaml TEXT NOT NULL,
  state INTEGER NOT NULL,
  priority INTEGER NOT NULL,
  generation INTEGER NOT NULL DEFAULT 0,
  world_size INTEGER NOT NULL DEFAULT 0,
  created_ms INTEGER NOT NULL,
  updated_ms INTEGER NOT NULL,
  started_ms INTEGER,
  finished_ms INTEGER,
  error TEXT NOT NULL DEFAULT '',
  request_id TEXT UNIQUE
);
CREATE INDEX jobs_by_state ON jobs (state, seq);
CREATE TABLE step_summaries (
  job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  stage INTEGER NOT NULL,
  path_length INTEGER NOT NULL,
  loss REAL NOT NULL,
  eval_loss REAL,
  learning_rate REAL NOT NULL,
  tokens INTEGER NOT NULL,
  flops REAL NOT NULL,
  flops_full REAL NOT NULL,
  seconds REAL NOT NULL,
  PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
CREATE TABLE checkpoints (
  job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  step INTEGER NOT NULL,
  path TEXT NOT NULL,
  committed_ms INTEGER NOT NULL,
  PRIMARY KEY (job_id, step)
) WITHOUT ROWID;
CREATE TABLE workers (
  worker_id TEXT PRIMARY KEY,
  backend INTEGER NOT NULL,
  devices INTEGER NOT NULL,
  memory_bytes INTEGER NOT NULL,
  last_seen_ms INTEGER NOT NULL,
  state TEXT NOT NULL
) WITHOUT ROWID;
INSERT INTO schema_version (version) VALUES (1);
)sql";

// Version 1 -> 2: the per-job event log WatchJob streams from. seq is AUTOINCREMENT and every
// write takes the write lock up front (BEGIN IMMEDIATE), so seqs grow in commit order: a reader
// that has seen seq N can never later find a committed event below N, and "seq > N" tails the
// log without gaps. A fresh store is created as version 1 and migrated in the same transaction,
// so there is one path to the current schema.
constexpr char kMigrateV1ToV2[] = R"sql(
CREATE TABLE job_events (
  seq INTEGER PRIMARY KEY AUTOINCREMENT,
  job_id TEXT NOT NULL REFERENCES jobs (id) ON DELETE CASCADE,
  time_ms INTEGER NOT NULL,
  event BLOB NOT NULL
);
CREATE INDEX job_events_by_job ON job_events (job_id, seq);
UPDATE schema_version SET version = 2;
)sql";

// Version 2 -> 3: each committed checkpoint's state digest (checked when a group resumes from
// it), and when it was found unusable (NULL while usable). Rows of older stores keep a NULL
// digest: they are resumed from without the check.
constexpr char kMigrateV2ToV3[] = R"sql(
ALTER TABLE checkpoints ADD COLUMN state_digest INTEGER;
ALTER TABLE checkpoints ADD COLUMN rejected_ms INTEGER;
UPDATE schema_version SET version = 3;
)sql";

// Version 3 -> 4: who submitted each job (the authenticated principal's name; '' when the
// coordinator ran without authentication, as every job of an older store did).
constexpr char kMigrateV3ToV4[] = R"sql(
ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '';
UPDATE schema_version SET version = 4;
)sql";

// Indexes that change nothing a reader sees, only how fast it finds it: created at every open
// when absent, without a schema version bump, so a store stays readable by the builds before
// them (SQLite maintains every index of the file whichever build writes it).
// jobs_by_end: the jobs that finished last (LatestFinishedJobIds, the metrics scrape), read
// newest first without sorting every finished job. Partial: only finished jobs have an end.
constexpr char kIndexes[] = R"sql(
CREATE INDEX IF NOT EXISTS jobs_by_end ON jobs (finished_ms) WHERE finished_ms IS NOT NULL;
)sql";

int64_t NowMillis() { return absl::ToUnixMillis(absl::Now()); }

// Maps an SQLite result code onto a status naming the store and what was being done.
absl::Status SqliteError(sqlite3* db, int rc, absl::string_view what, const std::string& path) {
  const std::string message = absl::StrCat("job store ", path, ": ", what, ": ",
                                           db != nullptr ? sqlite3_errmsg(db) : sqlite3_errstr(rc),
                                           " (sqlite code ", rc, ")");
  switch (rc & 0xff) {
    case SQLITE_NOTADB:
    case SQLITE_CORRUPT:
      return absl::DataLossError(message);
    case SQLITE_BUSY:
    case SQLITE_LOCKED:
      return absl::UnavailableError(message);
    case SQLITE_FULL:
      return absl::ResourceExhaustedError(message);
    case SQLITE_CONSTRAINT:
      return absl::FailedPreconditionError(message);
    default:
      return absl::InternalError(message);
  }
}

// One prepared statement; finalized on destruction. Bind errors surface on the first Step.
class Statement {
 public:
  static absl::StatusOr<Statement> Prepare(sqlite3* db, absl::string_view sql,
                                           const std::string& path) {
    sqlite3_stmt* stmt = nullptr;
    const int rc = sqlite3_prepare_v2(db, sql.data(), static_cast<int>(sql.size()), &stmt, nullptr);
    if (rc != SQLITE_OK) {
      sqlite3_finalize(stmt);
      return SqliteError(db, rc, absl::StrCat("preparing \"", sql, "\""), path);
    }
    return Statement(db, stmt, path);
  }
  Statement(Statement&& other) noexcept
      : db_(other.db_),
        stmt_(std::exchange(other.stmt_, nullptr)),
        path_(other.path_),
        bind_rc_(other.bind_rc_) {}
  Statement& operator=(Statement&&) = delete;
  ~Statement() { sqlite3_finalize(stmt_); }

  void BindInt(int index, int64_t value) { Note(sqlite3_bind_int64(stmt_, index, value)); }
  void BindDouble(int index, double value) { Note(sqlite3_bind_double(stmt_, index, value)); }
  void BindNull(int index) { Note(sqlite3_bind_null(stmt_, index)); }
  void BindText(int index, absl::string_view value) {
    Note(sqlite3_bind_text(stmt_, index, value.data(), static_cast<int>(value.size()),
                           SQLITE_TRANSIENT));
  }
  void BindBlob(int index, absl::string_view value) {
    Note(sqlite3_bind_blob(stmt_, index, value.data(), static_cast<int>(value.size()),
                           SQLITE_TRANSIENT));
  }

  // True when a row is ready, false when the statement is done.
  absl::StatusOr<bool> Step() {
    if (bind_rc_ != SQLITE_OK) return SqliteError(db_, bind_rc_, Sql("binding"), path_);
    const int rc = sqlite3_step(stmt_);
    if (rc == SQLITE_ROW) return true;
    if (rc == SQLITE_DONE) return false;
    return SqliteError(db_, rc, Sql("running"), path_);
  }
  // Steps to completion, ignoring rows; then the statement may be bound and run again.
  absl::Status Run() {
    while (true) {
      ASSIGN_OR_RETURN(bool row, Step());
      if (!row) break;
    }
    return Reset();
  }
  absl::Status Reset() {
    sqlite3_reset(stmt_);
    sqlite3_clear_bindings(stmt_);
    bind_rc_ = SQLITE_OK;
    return absl::OkStatus();
  }

  bool IsNull(int col) const { return sqlite3_column_type(stmt_, col) == SQLITE_NULL; }
  int64_t Int(int col) const { return sqlite3_column_int64(stmt_, col); }
  double Double(int col) const { return sqlite3_column_double(stmt_, col); }
  std::string Text(int col) const {
    const auto* text = sqlite3_column_text(stmt_, col);
    return text == nullptr ? std::string()
                           : std::string(reinterpret_cast<const char*>(text),
                                         static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }
  std::string Blob(int col) const {
    const void* blob = sqlite3_column_blob(stmt_, col);
    return blob == nullptr ? std::string()
                           : std::string(static_cast<const char*>(blob),
                                         static_cast<size_t>(sqlite3_column_bytes(stmt_, col)));
  }

 private:
  Statement(sqlite3* db, sqlite3_stmt* stmt, const std::string& path)
      : db_(db), stmt_(stmt), path_(path) {}
  void Note(int rc) {
    if (bind_rc_ == SQLITE_OK) bind_rc_ = rc;
  }
  std::string Sql(absl::string_view verb) const {
    return absl::StrCat(verb, " \"", sqlite3_sql(stmt_), "\"");
  }

  sqlite3* db_;
  sqlite3_stmt* stmt_;
  std::string path_;
  int bind_rc_ = SQLITE_OK;
};

absl::Status Exec(sqlite3* db, const char* sql, const std::string& path) {
  char* error = nullptr;
  const int rc = sqlite3_exec(db, sql, nullptr, nullptr, &error);
  sqlite3_free(error);
  if (rc != SQLITE_OK) return SqliteError(db, rc, absl::StrCat("running \"", sql, "\""), path);
  return absl::OkStatus();
}

// A transaction; rolled back unless Commit() succeeded. A write transaction is BEGIN IMMEDIATE, so
// the write lock is taken up front and a busy writer is waited for instead of failing an upgrade
// later. A read transaction (BEGIN) makes several SELECTs see one snapshot of the file, which
// matters when another connection writes between them.
class Transaction {
 public:
  static absl::StatusOr<std::unique_ptr<Transaction>> BeginWrite(sqlite3* db,
                                                                 const std::string& path) {
    RETURN_IF_ERROR(Exec(db, "BEGIN IMMEDIATE", path));
    return std::unique_ptr<Transaction>(new Transaction(db, path));
  }
  static absl::StatusOr<std::unique_ptr<Transaction>> BeginRead(sqlite3* db,
                                                                const std::string& path) {
    RETURN_IF_ERROR(Exec(db, "BEGIN", path));
    return std::unique_ptr<Transaction>(new Transaction(db, path));
  }
  ~Transaction() {
    if (!done_) sqlite3_exec(db_, "ROLLBACK", nullptr, nullptr, nullptr);
  }
  absl::Status Commit() {
    // A statement that stopped on a row (a point lookup read once) would block the COMMIT; its
    // row was copied out already, so reset every such statement of this connection first.
    for (sqlite3_stmt* stmt = sqlite3_next_stmt(db_, nullptr); stmt != nullptr;
         stmt = sqlite3_next_stmt(db_, stmt)) {
      if (sqlite3_stmt_busy(stmt)) sqlite3_reset(stmt);
    }
    RETURN_IF_ERROR(Exec(db_, "COMMIT", path_));
    done_ = true;
    return absl::OkStatus();
  }

 private:
  Transaction(sqlite3* db, const std::string& path) : db_(db), path_(path) {}
  sqlite3* db_;
  const std::string& path_;
  bool done_ = false;
};

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

bool IsLegalTransition(v1::JobState from, v1::JobState to) {
  switch (from) {
    case v1::JOB_STATE_PENDING:
      return to == v1::JOB_STATE_RUNNING || to == v1::JOB_STATE_CANCELLED ||
             to == v1::JOB_STATE_FAILED;
    case v1::JOB_STATE_RUNNING:
      return to == v1::JOB_STATE_RECOVERING || to == v1::JOB_STATE_SUCCEEDED ||
             to == v1::JOB_STATE_FAILED || to == v1::JOB_STATE_CANCELLED;
    case v1::JOB_STATE_RECOVERING:
      return to == v1::JOB_STATE_RUNNING || to == v1::JOB_STATE_FAILED ||
             to == v1::JOB_STATE_CANCELLED;
    default:
      return false;
  }
}

std::string StateName(v1::JobState state) {
  const std::string& name = v1::JobState_Name(state);
  return name.empty() ? absl::StrCat("JobState(", static_cast<int>(state), ")") : name;
}

// The columns LoadJob and the list queries read, in JobFromRow's order.
constexpr char kJobColumns[] =
    "id, spec, state, error, generation, world_size, created_ms, updated_ms, started_ms, "
    "finished_ms, owner";

// kJobColumns with the name in place of the spec (JobFilter::with_spec false).
constexpr char kJobColumnsWithoutSpec[] =
    "id, name, state, error, generation, world_size, created_ms, updated_ms, started_ms, "
    "finished_ms, owner";

// `with_spec` false: the row has the name (kJobColumnsWithoutSpec), which becomes spec.name.
absl::StatusOr<v1::Job> JobFromRow(const Statement& row, const std::string& path,
                                   bool with_spec = true) {
  v1::Job job;
  job.set_id(row.Text(0));
  if (!with_spec) {
    job.mutable_spec()->set_name(row.Text(1));
  } else if (!job.mutable_spec()->ParseFromString(row.Blob(1))) {
    return absl::DataLossError(
        absl::StrCat("job store ", path, ": job ", job.id(), ": stored spec does not parse"));
  }
  job.set_state(static_cast<v1::JobState>(row.Int(2)));
  job.set_message(row.Text(3));
  job.set_generation(row.Int(4));
  job.set_world_size(static_cast<int32_t>(row.Int(5)));
  *job.mutable_create_time() = TimeUtil::MillisecondsToTimestamp(row.Int(6));
  *job.mutable_update_time() = TimeUtil::MillisecondsToTimestamp(row.Int(7));
  if (!row.IsNull(8)) *job.mutable_start_time() = TimeUtil::MillisecondsToTimestamp(row.Int(8));
  if (!row.IsNull(9)) *job.mutable_end_time() = TimeUtil::MillisecondsToTimestamp(row.Int(9));
  job.set_owner(row.Text(10));
  return job;
}

constexpr char kStepColumns[] =
    "step, stage, path_length, loss, eval_loss, learning_rate, tokens, flops, flops_full, "
    "seconds";

StepSummaryRecord StepFromRow(const Statement& row) {
  StepSummaryRecord s;
  s.step = row.Int(0);
  s.stage = static_cast<int32_t>(row.Int(1));
  s.path_length = static_cast<int32_t>(row.Int(2));
  s.loss = row.Double(3);
  if (!row.IsNull(4)) s.eval_loss = row.Double(4);
  s.learning_rate = row.Double(5);
  s.tokens = row.Int(6);
  s.flops = row.Double(7);
  s.flops_full = row.Double(8);
  s.seconds = row.Double(9);
  return s;
}

// A checkpoint from a row of (step, path, committed_ms, state_digest, ...).
CheckpointRecord CheckpointFromRow(const Statement& row) {
  CheckpointRecord checkpoint;
  checkpoint.step = row.Int(0);
  checkpoint.path = row.Text(1);
  checkpoint.committed_at_ms = row.Int(2);
  // SQLite integers are signed 64-bit: the digest's bits are stored as they are.
  checkpoint.state_digest = row.IsNull(3) ? 0 : static_cast<uint64_t>(row.Int(3));
  return checkpoint;
}

// Reads the schema version of an open database, creates the schema in an empty one and migrates
// an older one to JobStore::kSchemaVersion, all in one transaction: a crash mid-migration leaves
// the old version intact, and two processes opening an old store migrate it once.
absl::Status EnsureSchema(sqlite3* db, const std::string& path) {
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginWrite(db, path));
  ASSIGN_OR_RETURN(Statement tables,
                   Statement::Prepare(db,
                                      "SELECT COUNT(*), COALESCE(SUM(name = 'schema_version'), 0) "
                                      "FROM sqlite_schema WHERE type = 'table'",
                                      path));
  ASSIGN_OR_RETURN(bool row, tables.Step());
  if (!row) return absl::InternalError(absl::StrCat("job store ", path, ": no table count"));
  const int64_t table_count = tables.Int(0);
  const bool has_version = tables.Int(1) > 0;
  if (table_count == 0) {
    RETURN_IF_ERROR(Exec(db, kSchemaV1, path));
    RETURN_IF_ERROR(Exec(db, kMigrateV1ToV2, path));
    RETURN_IF_ERROR(Exec(db, kMigrateV2ToV3, path));
    RETURN_IF_ERROR(Exec(db, kMigrateV3ToV4, path));
    RETURN_IF_ERROR(Exec(db, kIndexes, path));
    return txn->Commit();
  }
  if (!has_version) {
    return absl::FailedPreconditionError(
        absl::StrCat("job store ", path, ": an SQLite database that is not a raptr store (it has ",
                     table_count, " tables but no schema_version table)"));
  }
  ASSIGN_OR_RETURN(Statement version,
                   Statement::Prepare(db, "SELECT MAX(version) FROM schema_version", path));
  ASSIGN_OR_RETURN(row, version.Step());
  if (!row || version.IsNull(0)) {
    return absl::FailedPreconditionError(
        absl::StrCat("job store ", path, ": schema_version table is empty"));
  }
  const int64_t v = version.Int(0);
  if (v > JobStore::kSchemaVersion) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job store ", path, ": schema version ", v, " is newer than this build supports (",
        JobStore::kSchemaVersion, "); run a newer raptr-coordinator"));
  }
  if (v < 1) {
    return absl::FailedPreconditionError(
        absl::StrCat("job store ", path, ": unknown schema version ", v));
  }
  // The version read is done; a pending read of the schema must not overlap its change.
  RETURN_IF_ERROR(version.Reset());
  RETURN_IF_ERROR(tables.Reset());
  if (v < 2) RETURN_IF_ERROR(Exec(db, kMigrateV1ToV2, path));
  if (v < 3) RETURN_IF_ERROR(Exec(db, kMigrateV2ToV3, path));
  if (v < 4) RETURN_IF_ERROR(Exec(db, kMigrateV3ToV4, path));
  RETURN_IF_ERROR(Exec(db, kIndexes, path));
  return txn->Commit();
}

}  // namespace

absl::StatusOr<std::unique_ptr<JobStore>> JobStore::Open(const std::string& path) {
  if (path.empty()) return absl::InvalidArgumentError("job store path is empty");
  sqlite3* db = nullptr;
  const int rc = sqlite3_open_v2(
      path.c_str(), &db, SQLITE_OPEN_READWRITE | SQLITE_OPEN_CREATE | SQLITE_OPEN_NOMUTEX, nullptr);
  if (rc != SQLITE_OK) {
    absl::Status status = SqliteError(db, rc, "opening", path);
    sqlite3_close(db);
    return status;
  }
  // From here on the store owns the handle (its destructor closes it).
  std::unique_ptr<JobStore> store(new JobStore(path, db));
  sqlite3_extended_result_codes(db, 1);
  sqlite3_busy_timeout(db, kBusyTimeoutMs);
  // A non-database file fails here, on the first read of its header.
  ASSIGN_OR_RETURN(Statement wal, Statement::Prepare(db, "PRAGMA journal_mode = WAL", path));
  ASSIGN_OR_RETURN(bool row, wal.Step());
  if (!row || wal.Text(0) != "wal") {
    return absl::FailedPreconditionError(
        absl::StrCat("job store ", path, ": cannot use WAL journal mode (got ",
                     row ? wal.Text(0) : std::string("nothing"), ")"));
  }
  // FULL, not NORMAL: in WAL mode NORMAL survives a process crash but may lose the last commits
  // on a power loss or OS crash, and a submitted job the client was told about must survive
  // those too. The store writes a few transactions per second (step summaries are batched), so
  // an fsync per commit is cheap.
  RETURN_IF_ERROR(Exec(db, "PRAGMA synchronous = FULL", path));
  RETURN_IF_ERROR(Exec(db, "PRAGMA foreign_keys = ON", path));
  RETURN_IF_ERROR(EnsureSchema(db, path));
  return store;
}

JobStore::JobStore(std::string path, sqlite3* db) : path_(std::move(path)), db_(db) {}

JobStore::~JobStore() { sqlite3_close(db_); }

absl::StatusOr<v1::Job> JobStore::CreateJob(const v1::JobSpec& spec,
                                            const std::string& request_id,
                                            const std::string& owner) {
  v1::JobSpec filled = spec;
  ApplyJobSpecDefaults(&filled);
  RETURN_IF_ERROR(ValidateJobSpec(filled));
  if (request_id.size() > 128) {
    return absl::InvalidArgumentError(
        absl::StrCat("request_id must be at most 128 characters, got ", request_id.size()));
  }
  for (char c : request_id) {
    if (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) {
      return absl::InvalidArgumentError("request_id must not hold control characters");
    }
  }
  // Request ids are per owner: the stored key is "<owner>\x1f<request_id>" (the bare id for the
  // unowned jobs of a coordinator without authentication, as before owners existed), so one
  // owner can neither claim nor probe another's ids. Ids hold no control character, so no two
  // owners' keys collide.
  const std::string request_key =
      request_id.empty() || owner.empty() ? request_id : absl::StrCat(owner, "\x1f", request_id);
  std::string blob;
  if (!filled.SerializeToString(&blob)) {
    return absl::InternalError(absl::StrCat("job ", filled.name(), ": spec does not serialize"));
  }
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginWrite(db_, path_));
  if (!request_id.empty()) {
    ASSIGN_OR_RETURN(Statement find,
                     Statement::Prepare(db_, "SELECT id FROM jobs WHERE request_id = ?", path_));
    find.BindText(1, request_key);
    ASSIGN_OR_RETURN(bool found, find.Step());
    if (found) {
      ASSIGN_OR_RETURN(v1::Job existing, LoadJob(find.Text(0)));
      if (existing.owner() != owner) {
        // Request ids are per owner in effect; another owner's job is neither returned nor named.
        return absl::AlreadyExistsError(absl::StrCat(
            "request_id \"", request_id, "\" was used by another owner; choose another"));
      }
      if (!google::protobuf::util::MessageDifferencer::Equals(existing.spec(), filled)) {
        return absl::AlreadyExistsError(absl::StrCat("request_id \"", request_id,
                                                     "\" already created job ", existing.id(),
                                                     " with a different spec"));
      }
      return existing;
    }
  }
  const int64_t now = NowMillis();
  ASSIGN_OR_RETURN(Statement insert,
                   Statement::Prepare(db_,
                                      "INSERT INTO jobs (id, name, spec, spec_yaml, state, "
                                      "priority, created_ms, updated_ms, request_id, owner) "
                                      "VALUES ('', ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                                      path_));
  insert.BindText(1, filled.name());
  insert.BindBlob(2, blob);
  insert.BindText(3, JobSpecToYaml(filled));
  insert.BindInt(4, v1::JOB_STATE_PENDING);
  insert.BindInt(5, filled.resources().priority());
  insert.BindInt(6, now);
  insert.BindInt(7, now);
  if (request_id.empty()) {
    insert.BindNull(8);
  } else {
    insert.BindText(8, request_key);
  }
  insert.BindText(9, owner);
  RETURN_IF_ERROR(insert.Run());
  const int64_t seq = sqlite3_last_insert_rowid(db_);
  const std::string id = absl::StrFormat("job-%06d", seq);
  ASSIGN_OR_RETURN(Statement name_it,
                   Statement::Prepare(db_, "UPDATE jobs SET id = ? WHERE seq = ?", path_));
  name_it.BindText(1, id);
  name_it.BindInt(2, seq);
  RETURN_IF_ERROR(name_it.Run());
  ASSIGN_OR_RETURN(v1::Job job, LoadJob(id));
  RETURN_IF_ERROR(txn->Commit());
  return job;
}

absl::StatusOr<v1::Job> JobStore::GetJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  return LoadJob(id);
}

absl::StatusOr<v1::Job> JobStore::LoadJob(const std::string& id) {
  ASSIGN_OR_RETURN(
      Statement select,
      Statement::Prepare(db_, absl::StrCat("SELECT ", kJobColumns, " FROM jobs WHERE id = ?"),
                         path_));
  select.BindText(1, id);
  ASSIGN_OR_RETURN(bool found, select.Step());
  if (!found) return absl::NotFoundError(absl::StrCat("job \"", id, "\" not found"));
  ASSIGN_OR_RETURN(v1::Job job, JobFromRow(select, path_));
  RETURN_IF_ERROR(LoadProgress(&job));
  return job;
}

absl::Status JobStore::LoadProgress(v1::Job* job) {
  v1::JobProgress* progress = job->mutable_progress();
  progress->set_stage(-1);
  ASSIGN_OR_RETURN(Statement totals,
                   Statement::Prepare(db_,
                                      "SELECT COALESCE(SUM(tokens), 0), COALESCE(SUM(flops), 0), "
                                      "COALESCE(SUM(flops_full), 0), COALESCE(SUM(seconds), 0) "
                                      "FROM step_summaries WHERE job_id = ?",
                                      path_));
  totals.BindText(1, job->id());
  ASSIGN_OR_RETURN(bool row, totals.Step());
  if (row) {
    progress->set_tokens(totals.Int(0));
    progress->set_flops(totals.Double(1));
    progress->set_flops_full(totals.Double(2));
    progress->set_train_seconds(totals.Double(3));
  }
  ASSIGN_OR_RETURN(Statement latest,
                   Statement::Prepare(db_,
                                      "SELECT step, stage, path_length, loss FROM step_summaries "
                                      "WHERE job_id = ? ORDER BY step DESC LIMIT 1",
                                      path_));
  latest.BindText(1, job->id());
  ASSIGN_OR_RETURN(row, latest.Step());
  if (row) {
    progress->set_step(latest.Int(0) + 1);
    progress->set_stage(static_cast<int32_t>(latest.Int(1)));
    progress->set_path_length(static_cast<int32_t>(latest.Int(2)));
    progress->set_loss(latest.Double(3));
  }
  ASSIGN_OR_RETURN(Statement eval,
                   Statement::Prepare(db_,
                                      "SELECT step, eval_loss FROM step_summaries WHERE job_id = ? "
                                      "AND eval_loss IS NOT NULL ORDER BY step DESC LIMIT 1",
                                      path_));
  eval.BindText(1, job->id());
  ASSIGN_OR_RETURN(row, eval.Step());
  if (row) {
    progress->set_eval_step(eval.Int(0));
    progress->set_eval_loss(eval.Double(1));
  }
  ASSIGN_OR_RETURN(Statement checkpoint,
                   Statement::Prepare(db_,
                                      "SELECT step, path FROM checkpoints WHERE job_id = ? "
                                      "ORDER BY step DESC LIMIT 1",
                                      path_));
  checkpoint.BindText(1, job->id());
  ASSIGN_OR_RETURN(row, checkpoint.Step());
  if (row) {
    progress->set_checkpoint_step(checkpoint.Int(0));
    progress->set_checkpoint_path(checkpoint.Text(1));
  }
  return absl::OkStatus();
}

absl::Status JobStore::CheckJobExists(const std::string& id) {
  ASSIGN_OR_RETURN(Statement select,
                   Statement::Prepare(db_, "SELECT 1 FROM jobs WHERE id = ?", path_));
  select.BindText(1, id);
  ASSIGN_OR_RETURN(bool found, select.Step());
  if (!found) return absl::NotFoundError(absl::StrCat("job \"", id, "\" not found"));
  return absl::OkStatus();
}

absl::StatusOr<std::vector<v1::Job>> JobStore::ListJobs(const JobFilter& filter) {
  if (filter.limit < 1) {
    return absl::InvalidArgumentError(absl::StrCat("list limit must be >= 1, got ", filter.limit));
  }
  std::string sql = absl::StrCat("SELECT ", filter.with_spec ? kJobColumns : kJobColumnsWithoutSpec,
                                 " FROM jobs WHERE 1");
  if (!filter.states.empty()) {
    std::vector<std::string> states;
    for (v1::JobState state : filter.states) states.push_back(absl::StrCat(state));
    absl::StrAppend(&sql, " AND state IN (", absl::StrJoin(states, ", "), ")");
  }
  if (!filter.after_id.empty()) {
    absl::StrAppend(&sql, " AND seq > (SELECT seq FROM jobs WHERE id = ?)");
  }
  absl::StrAppend(&sql, " ORDER BY seq LIMIT ", filter.limit);
  absl::MutexLock lock(&mu_);
  if (!filter.after_id.empty()) RETURN_IF_ERROR(CheckJobExists(filter.after_id));
  ASSIGN_OR_RETURN(Statement select, Statement::Prepare(db_, sql, path_));
  if (!filter.after_id.empty()) select.BindText(1, filter.after_id);
  std::vector<v1::Job> jobs;
  while (true) {
    ASSIGN_OR_RETURN(bool row, select.Step());
    if (!row) break;
    ASSIGN_OR_RETURN(v1::Job job, JobFromRow(select, path_, filter.with_spec));
    jobs.push_back(std::move(job));
  }
  for (v1::Job& job : jobs) RETURN_IF_ERROR(LoadProgress(&job));
  return jobs;
}

absl::StatusOr<v1::Job> JobStore::UpdateJobState(const std::string& id, v1::JobState new_state,
                                                 const std::string& message) {
  if (!v1::JobState_IsValid(new_state)) {
    return absl::InvalidArgumentError(
        absl::StrCat("job \"", id, "\": unknown target state ", static_cast<int>(new_state)));
  }
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginWrite(db_, path_));
  ASSIGN_OR_RETURN(
      Statement select,
      Statement::Prepare(db_, "SELECT state, started_ms FROM jobs WHERE id = ?", path_));
  select.BindText(1, id);
  ASSIGN_OR_RETURN(bool found, select.Step());
  if (!found) return absl::NotFoundError(absl::StrCat("job \"", id, "\" not found"));
  const auto old_state = static_cast<v1::JobState>(select.Int(0));
  const bool started = !select.IsNull(1);
  if (!IsLegalTransition(old_state, new_state)) {
    return absl::FailedPreconditionError(
        absl::StrCat("job \"", id, "\" cannot go from ", StateName(old_state), " to ",
                     StateName(new_state), IsTerminal(old_state) ? " (its state is final)" : ""));
  }
  const bool keeps_message = new_state == v1::JOB_STATE_FAILED ||
                             new_state == v1::JOB_STATE_CANCELLED ||
                             new_state == v1::JOB_STATE_RECOVERING;
  const int64_t now = NowMillis();
  ASSIGN_OR_RETURN(Statement update,
                   Statement::Prepare(db_,
                                      "UPDATE jobs SET state = ?, error = ?, updated_ms = ?, "
                                      "started_ms = COALESCE(started_ms, ?), "
                                      "finished_ms = COALESCE(finished_ms, ?) WHERE id = ?",
                                      path_));
  update.BindInt(1, new_state);
  update.BindText(2, keeps_message ? message : std::string());
  update.BindInt(3, now);
  if (new_state == v1::JOB_STATE_RUNNING && !started) {
    update.BindInt(4, now);
  } else {
    update.BindNull(4);
  }
  if (IsTerminal(new_state)) {
    update.BindInt(5, now);
  } else {
    update.BindNull(5);
  }
  update.BindText(6, id);
  RETURN_IF_ERROR(update.Run());
  ASSIGN_OR_RETURN(v1::Job job, LoadJob(id));
  v1::JobEvent event;
  v1::JobStateChanged* changed = event.mutable_state_changed();
  changed->set_old_state(old_state);
  changed->set_new_state(new_state);
  changed->set_reason(message);
  changed->set_generation(job.generation());
  changed->set_world_size(job.world_size());
  RETURN_IF_ERROR(AppendEvent(id, now, &event));
  RETURN_IF_ERROR(txn->Commit());
  Changed(id);
  return job;
}

absl::Status JobStore::SetJobGroup(const std::string& id, int64_t generation, int32_t world_size) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginWrite(db_, path_));
  RETURN_IF_ERROR(CheckJobExists(id));
  ASSIGN_OR_RETURN(Statement update,
                   Statement::Prepare(db_,
                                      "UPDATE jobs SET generation = ?, world_size = ?, "
                                      "updated_ms = ? WHERE id = ?",
                                      path_));
  update.BindInt(1, generation);
  update.BindInt(2, world_size);
  update.BindInt(3, NowMillis());
  update.BindText(4, id);
  RETURN_IF_ERROR(update.Run());
  RETURN_IF_ERROR(txn->Commit());
  Changed(id);
  return absl::OkStatus();
}

absl::Status JobStore::RecordStepSummaries(const std::string& job_id,
                                           const std::vector<StepSummaryRecord>& summaries) {
  return RecordStepSummariesBatch({{job_id, summaries}});
}

absl::Status JobStore::RecordStepSummariesBatch(
    const std::vector<std::pair<std::string, std::vector<StepSummaryRecord>>>& batch) {
  for (const auto& [job_id, summaries] : batch) {
    for (const StepSummaryRecord& s : summaries) {
      if (s.step < 0) {
        return absl::InvalidArgumentError(
            absl::StrCat("job \"", job_id, "\": step summary step must be >= 0, got ", s.step));
      }
    }
  }
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginWrite(db_, path_));
  ASSIGN_OR_RETURN(
      Statement upsert,
      Statement::Prepare(db_,
                         absl::StrCat("INSERT OR REPLACE INTO step_summaries (job_id, ",
                                      kStepColumns, ") VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"),
                         path_));
  ASSIGN_OR_RETURN(Statement touch,
                   Statement::Prepare(db_, "UPDATE jobs SET updated_ms = ? WHERE id = ?", path_));
  for (const auto& [job_id, summaries] : batch) {
    RETURN_IF_ERROR(CheckJobExists(job_id));
    for (const StepSummaryRecord& s : summaries) {
      upsert.BindText(1, job_id);
      upsert.BindInt(2, s.step);
      upsert.BindInt(3, s.stage);
      upsert.BindInt(4, s.path_length);
      upsert.BindDouble(5, s.loss);
      if (s.eval_loss.has_value()) {
        upsert.BindDouble(6, *s.eval_loss);
      } else {
        upsert.BindNull(6);
      }
      upsert.BindDouble(7, s.learning_rate);
      upsert.BindInt(8, s.tokens);
      upsert.BindDouble(9, s.flops);
      upsert.BindDouble(10, s.flops_full);
      upsert.BindDouble(11, s.seconds);
      RETURN_IF_ERROR(upsert.Run());
    }
    touch.BindInt(1, NowMillis());
    touch.BindText(2, job_id);
    RETURN_IF_ERROR(touch.Run());
  }
  RETURN_IF_ERROR(txn->Commit());
  for (const auto& entry : batch) Changed(entry.first);
  return absl::OkStatus();
}

absl::Status JobStore::DiscardStepSummariesAfter(const std::string& job_id, int64_t step) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginWrite(db_, path_));
  RETURN_IF_ERROR(CheckJobExists(job_id));
  ASSIGN_OR_RETURN(bool discarded, DiscardAfterLocked(job_id, step));
  RETURN_IF_ERROR(txn->Commit());
  if (discarded) Changed(job_id);  // else no change a watcher would see
  return absl::OkStatus();
}

absl::StatusOr<bool> JobStore::DiscardAfterLocked(const std::string& job_id, int64_t step) {
  ASSIGN_OR_RETURN(Statement last,
                   Statement::Prepare(db_,
                                      "SELECT MAX(step) FROM step_summaries WHERE job_id = ? AND "
                                      "step > ?",
                                      path_));
  last.BindText(1, job_id);
  last.BindInt(2, step);
  ASSIGN_OR_RETURN(bool row, last.Step());
  // MAX over no rows is NULL: nothing to discard, nothing to log.
  if (!row || last.IsNull(0)) return false;
  const int64_t completed = last.Int(0) + 1;
  RETURN_IF_ERROR(last.Reset());
  ASSIGN_OR_RETURN(
      Statement discard,
      Statement::Prepare(db_, "DELETE FROM step_summaries WHERE job_id = ? AND step > ?", path_));
  discard.BindText(1, job_id);
  discard.BindInt(2, step);
  RETURN_IF_ERROR(discard.Run());
  v1::Job job;
  job.set_id(job_id);
  RETURN_IF_ERROR(LoadProgress(&job));
  v1::JobEvent event;
  v1::JobRewound* rewound = event.mutable_rewound();
  rewound->set_to_step(step + 1);
  rewound->set_from_step(completed);
  *rewound->mutable_progress() = job.progress();
  RETURN_IF_ERROR(AppendEvent(job_id, NowMillis(), &event));
  return true;
}

absl::StatusOr<v1::JobState> JobStore::StateLocked(const std::string& id) {
  ASSIGN_OR_RETURN(Statement select,
                   Statement::Prepare(db_, "SELECT state FROM jobs WHERE id = ?", path_));
  select.BindText(1, id);
  ASSIGN_OR_RETURN(bool found, select.Step());
  if (!found) return absl::NotFoundError(absl::StrCat("job \"", id, "\" not found"));
  return static_cast<v1::JobState>(select.Int(0));
}

absl::StatusOr<v1::Job> JobStore::RetryFailedJob(const std::string& id, const std::string& message) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginWrite(db_, path_));
  ASSIGN_OR_RETURN(const v1::JobState old_state, StateLocked(id));
  if (old_state != v1::JOB_STATE_FAILED) {
    return absl::FailedPreconditionError(absl::StrCat("job \"", id, "\" is ", StateName(old_state),
                                                      ": only a FAILED job can be retried"));
  }
  // The next group resumes from the latest usable checkpoint (LatestCheckpoint's rule), so the
  // summaries of the steps it will redo go now.
  ASSIGN_OR_RETURN(Statement checkpoint,
                   Statement::Prepare(db_,
                                      "SELECT MAX(step) FROM checkpoints WHERE job_id = ? AND "
                                      "rejected_ms IS NULL",
                                      path_));
  checkpoint.BindText(1, id);
  ASSIGN_OR_RETURN(bool row, checkpoint.Step());
  const int64_t resume_step = row && !checkpoint.IsNull(0) ? checkpoint.Int(0) : 0;
  RETURN_IF_ERROR(checkpoint.Reset());
  RETURN_IF_ERROR(DiscardAfterLocked(id, resume_step - 1).status());
  const int64_t now = NowMillis();
  ASSIGN_OR_RETURN(Statement update,
                   Statement::Prepare(db_,
                                      "UPDATE jobs SET state = ?, error = ?, updated_ms = ?, "
                                      "finished_ms = NULL WHERE id = ?",
                                      path_));
  update.BindInt(1, v1::JOB_STATE_RECOVERING);
  update.BindText(2, message);
  update.BindInt(3, now);
  update.BindText(4, id);
  RETURN_IF_ERROR(update.Run());
  ASSIGN_OR_RETURN(v1::Job job, LoadJob(id));
  v1::JobEvent event;
  v1::JobStateChanged* changed = event.mutable_state_changed();
  changed->set_old_state(old_state);
  changed->set_new_state(v1::JOB_STATE_RECOVERING);
  changed->set_reason(message);
  changed->set_generation(job.generation());
  changed->set_world_size(job.world_size());
  RETURN_IF_ERROR(AppendEvent(id, now, &event));
  RETURN_IF_ERROR(txn->Commit());
  Changed(id);
  return job;
}

absl::Status JobStore::DeleteJob(const std::string& id) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginWrite(db_, path_));
  ASSIGN_OR_RETURN(const v1::JobState state, StateLocked(id));
  if (!IsTerminal(state)) {
    return absl::FailedPreconditionError(absl::StrCat(
        "job \"", id, "\" is ", StateName(state), ": only an ended job can be deleted (cancel it first)"));
  }
  // The summaries, events and checkpoint records go with it (ON DELETE CASCADE; foreign keys
  // are on for every connection).
  ASSIGN_OR_RETURN(Statement remove,
                   Statement::Prepare(db_, "DELETE FROM jobs WHERE id = ?", path_));
  remove.BindText(1, id);
  RETURN_IF_ERROR(remove.Run());
  RETURN_IF_ERROR(txn->Commit());
  Changed(id);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<StepSummaryRecord>> JobStore::StepSummaries(const std::string& job_id,
                                                                       int64_t from_step,
                                                                       int limit) {
  if (limit < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("job \"", job_id, "\": step summary limit must be >= 1, got ", limit));
  }
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CheckJobExists(job_id));
  ASSIGN_OR_RETURN(Statement select,
                   Statement::Prepare(db_,
                                      absl::StrCat("SELECT ", kStepColumns,
                                                   " FROM step_summaries WHERE job_id = ? AND "
                                                   "step >= ? ORDER BY step LIMIT ?"),
                                      path_));
  select.BindText(1, job_id);
  select.BindInt(2, from_step);
  select.BindInt(3, limit);
  std::vector<StepSummaryRecord> summaries;
  while (true) {
    ASSIGN_OR_RETURN(bool row, select.Step());
    if (!row) break;
    summaries.push_back(StepFromRow(select));
  }
  return summaries;
}

absl::Status JobStore::CommitCheckpoint(const std::string& job_id, int64_t step,
                                        const std::string& path, uint64_t state_digest) {
  if (step < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("job \"", job_id, "\": checkpoint step must be >= 0, got ", step));
  }
  if (path.empty()) {
    return absl::InvalidArgumentError(
        absl::StrCat("job \"", job_id, "\": checkpoint path of step ", step, " is empty"));
  }
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginWrite(db_, path_));
  // The generation that wrote the checkpoint is the job's current one: a commit comes from the
  // running group, and SetJobGroup runs before a new group starts.
  ASSIGN_OR_RETURN(Statement job,
                   Statement::Prepare(db_, "SELECT generation FROM jobs WHERE id = ?", path_));
  job.BindText(1, job_id);
  ASSIGN_OR_RETURN(bool found, job.Step());
  if (!found) return absl::NotFoundError(absl::StrCat("job \"", job_id, "\" not found"));
  const int64_t generation = job.Int(0);
  const int64_t now = NowMillis();
  ASSIGN_OR_RETURN(Statement upsert,
                   Statement::Prepare(db_,
                                      "INSERT OR REPLACE INTO checkpoints (job_id, step, path, "
                                      "committed_ms, state_digest, rejected_ms) "
                                      "VALUES (?, ?, ?, ?, ?, NULL)",
                                      path_));
  upsert.BindText(1, job_id);
  upsert.BindInt(2, step);
  upsert.BindText(3, path);
  upsert.BindInt(4, now);
  // SQLite integers are signed 64-bit: the digest's bits are stored as they are.
  upsert.BindInt(5, static_cast<int64_t>(state_digest));
  RETURN_IF_ERROR(upsert.Run());
  ASSIGN_OR_RETURN(Statement touch,
                   Statement::Prepare(db_, "UPDATE jobs SET updated_ms = ? WHERE id = ?", path_));
  touch.BindInt(1, now);
  touch.BindText(2, job_id);
  RETURN_IF_ERROR(touch.Run());
  v1::JobEvent event;
  v1::CheckpointCommitted* checkpoint = event.mutable_checkpoint();
  checkpoint->set_step(step);
  checkpoint->set_path(path);
  checkpoint->set_generation(generation);
  RETURN_IF_ERROR(AppendEvent(job_id, now, &event));
  // Tests kill the coordinator here: the record and its event are written but not committed.
  Failpoint("store.commit-checkpoint");
  RETURN_IF_ERROR(txn->Commit());
  Changed(job_id);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<CheckpointRecord>> JobStore::ListCheckpoints(
    const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CheckJobExists(job_id));
  ASSIGN_OR_RETURN(Statement select,
                   Statement::Prepare(db_,
                                      "SELECT step, path, committed_ms, state_digest, "
                                      "rejected_ms IS NOT NULL FROM checkpoints WHERE job_id = ? "
                                      "ORDER BY step",
                                      path_));
  select.BindText(1, job_id);
  std::vector<CheckpointRecord> checkpoints;
  while (true) {
    ASSIGN_OR_RETURN(bool row, select.Step());
    if (!row) break;
    CheckpointRecord checkpoint = CheckpointFromRow(select);
    checkpoint.rejected = select.Int(4) != 0;
    checkpoints.push_back(std::move(checkpoint));
  }
  return checkpoints;
}

absl::Status JobStore::DeleteCheckpoints(const std::string& job_id,
                                         const std::vector<int64_t>& steps) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginWrite(db_, path_));
  RETURN_IF_ERROR(CheckJobExists(job_id));
  ASSIGN_OR_RETURN(
      Statement remove,
      Statement::Prepare(db_, "DELETE FROM checkpoints WHERE job_id = ? AND step = ?", path_));
  for (int64_t step : steps) {
    remove.BindText(1, job_id);
    remove.BindInt(2, step);
    RETURN_IF_ERROR(remove.Run());
  }
  RETURN_IF_ERROR(txn->Commit());
  Changed(job_id);
  return absl::OkStatus();
}

absl::StatusOr<std::optional<CheckpointRecord>> JobStore::LatestCheckpoint(
    const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CheckJobExists(job_id));
  ASSIGN_OR_RETURN(Statement select,
                   Statement::Prepare(db_,
                                      "SELECT step, path, committed_ms, state_digest FROM "
                                      "checkpoints WHERE job_id = ? AND rejected_ms IS NULL "
                                      "ORDER BY step DESC LIMIT 1",
                                      path_));
  select.BindText(1, job_id);
  ASSIGN_OR_RETURN(bool row, select.Step());
  if (!row) return std::optional<CheckpointRecord>();
  return std::optional<CheckpointRecord>(CheckpointFromRow(select));
}

absl::Status JobStore::RejectCheckpoint(const std::string& job_id, int64_t step,
                                        const std::string& reason) {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginWrite(db_, path_));
  RETURN_IF_ERROR(CheckJobExists(job_id));
  ASSIGN_OR_RETURN(Statement select,
                   Statement::Prepare(db_,
                                      "SELECT path FROM checkpoints WHERE job_id = ? AND step = ? "
                                      "AND rejected_ms IS NULL",
                                      path_));
  select.BindText(1, job_id);
  select.BindInt(2, step);
  ASSIGN_OR_RETURN(bool found, select.Step());
  if (!found) {
    return absl::NotFoundError(
        absl::StrCat("job \"", job_id, "\" has no usable checkpoint at step ", step));
  }
  const std::string path = select.Text(0);
  RETURN_IF_ERROR(select.Reset());
  const int64_t now = NowMillis();
  ASSIGN_OR_RETURN(Statement reject,
                   Statement::Prepare(db_,
                                      "UPDATE checkpoints SET rejected_ms = ? WHERE job_id = ? "
                                      "AND step = ?",
                                      path_));
  reject.BindInt(1, now);
  reject.BindText(2, job_id);
  reject.BindInt(3, step);
  RETURN_IF_ERROR(reject.Run());
  v1::JobEvent event;
  v1::CheckpointRejected* rejected = event.mutable_checkpoint_rejected();
  rejected->set_step(step);
  rejected->set_path(path);
  rejected->set_reason(reason);
  RETURN_IF_ERROR(AppendEvent(job_id, now, &event));
  RETURN_IF_ERROR(txn->Commit());
  Changed(job_id);
  return absl::OkStatus();
}

absl::StatusOr<std::vector<std::pair<int64_t, v1::JobEvent>>> JobStore::JobEvents(
    const std::string& job_id, int64_t after_seq, int limit) {
  if (limit < 1) {
    return absl::InvalidArgumentError(
        absl::StrCat("job \"", job_id, "\": event limit must be >= 1, got ", limit));
  }
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CheckJobExists(job_id));
  ASSIGN_OR_RETURN(Statement select,
                   Statement::Prepare(db_,
                                      "SELECT seq, event FROM job_events WHERE job_id = ? AND "
                                      "seq > ? ORDER BY seq LIMIT ?",
                                      path_));
  select.BindText(1, job_id);
  select.BindInt(2, after_seq);
  select.BindInt(3, limit);
  std::vector<std::pair<int64_t, v1::JobEvent>> events;
  while (true) {
    ASSIGN_OR_RETURN(bool row, select.Step());
    if (!row) break;
    const int64_t seq = select.Int(0);
    v1::JobEvent event;
    if (!event.ParseFromString(select.Blob(1))) {
      return absl::DataLossError(
          absl::StrCat("job store ", path_, ": job ", job_id, ": event ", seq, " does not parse"));
    }
    events.emplace_back(seq, std::move(event));
  }
  return events;
}

absl::StatusOr<int64_t> JobStore::LastEventSeq(const std::string& job_id) {
  absl::MutexLock lock(&mu_);
  RETURN_IF_ERROR(CheckJobExists(job_id));
  return LoadLastEventSeq(job_id);
}

absl::StatusOr<JobWithEventSeq> JobStore::GetJobWithEventSeq(const std::string& id) {
  absl::MutexLock lock(&mu_);
  // One read transaction: another connection's write cannot land between the job and the seq.
  ASSIGN_OR_RETURN(auto txn, Transaction::BeginRead(db_, path_));
  JobWithEventSeq result;
  ASSIGN_OR_RETURN(result.job, LoadJob(id));
  ASSIGN_OR_RETURN(result.last_event_seq, LoadLastEventSeq(id));
  RETURN_IF_ERROR(txn->Commit());
  return result;
}

absl::StatusOr<int64_t> JobStore::LoadLastEventSeq(const std::string& job_id) {
  ASSIGN_OR_RETURN(
      Statement select,
      Statement::Prepare(db_, "SELECT COALESCE(MAX(seq), 0) FROM job_events WHERE job_id = ?",
                         path_));
  select.BindText(1, job_id);
  ASSIGN_OR_RETURN(bool row, select.Step());
  return row ? select.Int(0) : 0;
}

absl::Status JobStore::AppendEvent(const std::string& job_id, int64_t time_ms,
                                   v1::JobEvent* event) {
  *event->mutable_time() = TimeUtil::MillisecondsToTimestamp(time_ms);
  std::string blob;
  if (!event->SerializeToString(&blob)) {
    return absl::InternalError(absl::StrCat("job ", job_id, ": event does not serialize"));
  }
  ASSIGN_OR_RETURN(Statement insert,
                   Statement::Prepare(db_,
                                      "INSERT INTO job_events (job_id, time_ms, event) "
                                      "VALUES (?, ?, ?)",
                                      path_));
  insert.BindText(1, job_id);
  insert.BindInt(2, time_ms);
  insert.BindBlob(3, blob);
  return insert.Run();
}

absl::Status JobStore::UpsertWorker(const WorkerRecord& worker) {
  if (worker.worker_id.empty()) return absl::InvalidArgumentError("worker_id is empty");
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement upsert,
                   Statement::Prepare(db_,
                                      "INSERT OR REPLACE INTO workers (worker_id, backend, "
                                      "devices, memory_bytes, last_seen_ms, state) "
                                      "VALUES (?, ?, ?, ?, ?, ?)",
                                      path_));
  upsert.BindText(1, worker.worker_id);
  upsert.BindInt(2, worker.backend);
  upsert.BindInt(3, worker.devices);
  upsert.BindInt(4, worker.memory_bytes);
  upsert.BindInt(5, worker.last_seen_ms != 0 ? worker.last_seen_ms : NowMillis());
  upsert.BindText(6, worker.state);
  // One statement: autocommit makes it its own transaction.
  return upsert.Run();
}

absl::StatusOr<std::vector<WorkerRecord>> JobStore::ListWorkers() {
  absl::MutexLock lock(&mu_);
  ASSIGN_OR_RETURN(Statement select,
                   Statement::Prepare(db_,
                                      "SELECT worker_id, backend, devices, memory_bytes, "
                                      "last_seen_ms, state FROM workers ORDER BY worker_id",
                                      path_));
  std::vector<WorkerRecord> workers;
  while (true) {
    ASSIGN_OR_RETURN(bool row, select.Step());
    if (!row) break;
    WorkerRecord w;
    w.worker_id = select.Text(0);
    w.backend = static_cast<v1::Backend>(select.Int(1));
    w.devices = static_cast<int32_t>(select.Int(2));
    w.memory_bytes = select.Int(3);
    w.last_seen_ms = select.Int(4);
    w.state = select.Text(5);
    workers.push_back(std::move(w));
  }
  return workers;
}

absl::StatusOr<std::vector<v1::Job>> JobStore::JobsToRecover() {
  JobFilter filter;
  filter.states = {v1::JOB_STATE_RUNNING, v1::JOB_STATE_RECOVERING};
  filter.limit = 1 << 30;
  return ListJobs(filter);
}

absl::StatusOr<std::vector<std::string>> JobStore::LatestFinishedJobIds(int limit) {
  if (limit < 1) {
    return absl::InvalidArgumentError(absl::StrCat("list limit must be >= 1, got ", limit));
  }
  absl::MutexLock lock(&mu_);
  // The WHERE matches jobs_by_end's, and the index orders equal ends by rowid (seq), so this
  // walks the index backwards and stops after `limit` entries.
  ASSIGN_OR_RETURN(Statement select,
                   Statement::Prepare(db_,
                                      "SELECT id FROM jobs WHERE finished_ms IS NOT NULL "
                                      "ORDER BY finished_ms DESC, seq DESC LIMIT ?",
                                      path_));
  select.BindInt(1, limit);
  std::vector<std::string> ids;
  while (true) {
    ASSIGN_OR_RETURN(bool row, select.Step());
    if (!row) break;
    ids.push_back(select.Text(0));
  }
  return ids;
}

void JobStore::Changed(const std::string& job_id) {
  absl::MutexLock lock(&versions_mu_);
  ++version_;
  job_versions_[job_id] = version_;
}

int64_t JobStore::JobVersion(const std::string& job_id) const {
  absl::MutexLock lock(&versions_mu_);
  auto it = job_versions_.find(job_id);
  return it == job_versions_.end() ? 0 : it->second;
}

int64_t JobStore::WaitForChange(int64_t seen, absl::Duration timeout) const {
  absl::MutexLock lock(&versions_mu_);
  auto changed = [this, seen]() ABSL_SHARED_LOCKS_REQUIRED(versions_mu_) {
    return version_ != seen;
  };
  versions_mu_.AwaitWithTimeout(absl::Condition(&changed), timeout);
  return version_;
}

}  // namespace raptr
