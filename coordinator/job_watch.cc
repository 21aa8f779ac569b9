// JobWatch and JobWatchHub: see job_watch.h.
#include "coordinator/job_watch.h"

#include <algorithm>
#include <deque>
#include <limits>
#include <optional>
#include <utility>

#include "absl/strings/str_cat.h"
#include "coordinator/job_service.h"
#include "google/protobuf/util/time_util.h"

namespace raptr {
namespace {

using google::protobuf::util::TimeUtil;

bool IsTerminal(v1::JobState state) {
  return state == v1::JOB_STATE_SUCCEEDED || state == v1::JOB_STATE_FAILED ||
         state == v1::JOB_STATE_CANCELLED;
}

// A logged state change into a final state: nothing follows it in a stream.
bool IsEndOfJob(const v1::JobEvent& event) {
  return event.has_state_changed() && IsTerminal(event.state_changed().new_state());
}

v1::JobEvent NewEvent() {
  v1::JobEvent event;
  *event.mutable_time() = TimeUtil::GetCurrentTime();
  return event;
}

}  // namespace

void FillStepSummary(const StepSummaryRecord& step, v1::StepSummary* summary) {
  summary->set_step(step.step);
  summary->set_stage(step.stage);
  summary->set_path_length(step.path_length);
  summary->set_loss(step.loss);
  summary->set_learning_rate(step.learning_rate);
  summary->set_tokens(step.tokens);
  summary->set_flops(step.flops);
  summary->set_flops_full(step.flops_full);
  summary->set_step_seconds(step.seconds);
  if (step.eval_loss.has_value()) summary->set_eval_loss(*step.eval_loss);
}

// --- JobWatch ----------------------------------------------------------------------------------

JobWatch::JobWatch(std::string job_id, int64_t step_every, bool from_start, bool no_follow)
    : job_id_(std::move(job_id)),
      step_every_(std::max<int64_t>(step_every, 1)),
      from_start_(from_start),
      no_follow_(no_follow) {}

absl::StatusOr<bool> JobWatch::Start(JobStore& store, std::vector<v1::JobEvent>* out) {
  // The snapshot and the log's position are read together, so tailing the log from last_seq_
  // delivers exactly the changes the snapshot does not show.
  absl::StatusOr<JobWithEventSeq> start = store.GetJobWithEventSeq(job_id_);
  if (!start.ok()) return start.status();
  const v1::Job& job = start->job;
  last_seq_ = start->last_event_seq;
  progress_ = job.progress();
  last_step_ = job.spec().training().steps() - 1;
  eval_batches_ = job.spec().training().eval_batches();
  v1::JobEvent snapshot = NewEvent();
  *snapshot.mutable_snapshot() = job;
  out->push_back(std::move(snapshot));
  if (!from_start_) return no_follow_ || IsTerminal(job.state());
  // The history: tail the log and the summaries from the very start, up to the snapshot's
  // position (or the end of the job), here, before the stream is handed to the hub: a job that
  // has ended changes no more, so nothing would wake a poll for it.
  last_seq_ = 0;
  progress_ = v1::JobProgress();
  while (true) {
    absl::StatusOr<bool> ended = Poll(store, out);
    if (!ended.ok()) return ended.status();
    if (*ended) return true;
    if (!behind_) break;
  }
  return no_follow_ || IsTerminal(job.state());
}

absl::StatusOr<std::vector<StepSummaryRecord>> JobWatch::ReadSteps(JobStore& store, int64_t from,
                                                                   bool all) {
  std::vector<StepSummaryRecord> steps;
  while (true) {
    const int64_t next = steps.empty() ? from : steps.back().step + 1;
    absl::StatusOr<std::vector<StepSummaryRecord>> batch =
        store.StepSummaries(job_id_, next, kStepBatch);
    if (!batch.ok()) return batch.status();
    const bool full = static_cast<int>(batch->size()) == kStepBatch;
    steps.insert(steps.end(), batch->begin(), batch->end());
    if (!all || !full) {
      behind_ = behind_ || full;
      return steps;
    }
  }
}

void JobWatch::AddStep(const StepSummaryRecord& step, std::vector<v1::JobEvent>* out) {
  progress_.set_step(step.step + 1);
  progress_.set_stage(step.stage);
  progress_.set_path_length(step.path_length);
  progress_.set_loss(step.loss);
  if (step.eval_loss.has_value()) {
    progress_.set_eval_loss(*step.eval_loss);
    progress_.set_eval_step(step.step);
  }
  progress_.set_tokens(progress_.tokens() + step.tokens);
  progress_.set_flops(progress_.flops() + step.flops);
  progress_.set_flops_full(progress_.flops_full() + step.flops_full);
  progress_.set_train_seconds(progress_.train_seconds() + step.seconds);
  if (step.step % step_every_ == 0 || step.step == last_step_) {
    v1::JobEvent event = NewEvent();
    v1::StepSummary* summary = event.mutable_step();
    FillStepSummary(step, summary);
    *summary->mutable_progress() = progress_;
    out->push_back(std::move(event));
  }
  if (step.eval_loss.has_value()) {
    v1::JobEvent event = NewEvent();
    v1::EvalCompleted* eval = event.mutable_eval();
    eval->set_step(step.step);
    eval->set_eval_loss(*step.eval_loss);
    eval->set_batches(eval_batches_);
    out->push_back(std::move(event));
  }
}

absl::StatusOr<bool> JobWatch::Poll(JobStore& store, std::vector<v1::JobEvent>* out) {
  // The log is read before the summaries: every summary recorded before a logged change is then
  // in this read too, and can be sent ahead of that change.
  absl::StatusOr<std::vector<std::pair<int64_t, v1::JobEvent>>> events =
      store.JobEvents(job_id_, last_seq_, kEventBatch);
  if (!events.ok()) return events.status();
  behind_ = static_cast<int>(events->size()) == kEventBatch;
  const bool ends = std::any_of(events->begin(), events->end(),
                                [](const auto& logged) { return IsEndOfJob(logged.second); });
  absl::StatusOr<std::vector<StepSummaryRecord>> steps = ReadSteps(store, progress_.step(), ends);
  if (!steps.ok()) return steps.status();
  size_t next = 0;
  // Sends the read summaries of steps < `before`, in step order.
  auto add_steps_before = [&](int64_t before) {
    for (; next < steps->size() && (*steps)[next].step < before; ++next) AddStep((*steps)[next], out);
  };
  for (auto& [seq, event] : *events) {
    last_seq_ = seq;
    if (event.has_rewound()) {
      const v1::JobRewound& rewound = event.rewound();
      // The steps before the rewind point stand; those from it on were discarded. A watcher past
      // that point continues from the rewind's totals, and the summaries it read from its old
      // position are replays recorded after the rewind: read again from the new position.
      add_steps_before(rewound.to_step());
      if (progress_.step() > rewound.to_step()) {
        progress_ = rewound.progress();
        steps = ReadSteps(store, progress_.step(), ends);
        if (!steps.ok()) return steps.status();
        next = 0;
      }
      out->push_back(std::move(event));
      continue;
    }
    // A checkpoint of step S holds the weights after steps 0 .. S-1: their summaries go first.
    // A final state is the job's last word: every summary goes before it. Unless more follows
    // it: a FAILED job that was retried (RetryJob) goes on, and a replay of its history with it.
    bool terminal = false;
    if (IsEndOfJob(event)) {
      absl::StatusOr<int64_t> latest = store.LastEventSeq(job_id_);
      if (!latest.ok()) return latest.status();
      terminal = *latest == seq;
    }
    if (event.has_checkpoint()) add_steps_before(event.checkpoint().step());
    if (terminal) add_steps_before(std::numeric_limits<int64_t>::max());
    out->push_back(std::move(event));
    if (terminal) return true;
  }
  add_steps_before(std::numeric_limits<int64_t>::max());
  return false;
}

// --- JobWatchHub -------------------------------------------------------------------------------

// One stream's state, shared by its reactor (gRPC's threads) and the hub thread.
class JobWatchHub::Stream {
 public:
  explicit Stream(JobWatch watch) : watch(std::move(watch)) {}

  // Starts the next write or the Finish, if one is due and none is in flight. Called after
  // every change of the fields below; the reactor's calls happen outside `mu`, as a reaction
  // may run inline.
  void Pump();

  // The hub thread's alone (the handler's before the stream is added to the hub).
  JobWatch watch;
  int64_t seen_version = -1;

  absl::Mutex mu;
  Reactor* reactor ABSL_GUARDED_BY(mu) = nullptr;
  std::deque<v1::JobEvent> queue ABSL_GUARDED_BY(mu);
  v1::JobEvent current;  // the event in flight; touched only by the thread that set `writing`
  bool writing ABSL_GUARDED_BY(mu) = false;
  bool cancelled ABSL_GUARDED_BY(mu) = false;
  bool finished ABSL_GUARDED_BY(mu) = false;  // Finish was called
  std::optional<grpc::Status> end ABSL_GUARDED_BY(mu);  // Finish with it once the queue is out
};

class JobWatchHub::Reactor final : public grpc::ServerWriteReactor<v1::JobEvent> {
 public:
  explicit Reactor(std::shared_ptr<Stream> stream) : stream_(std::move(stream)) {}

  void OnWriteDone(bool ok) override {
    {
      absl::MutexLock lock(&stream_->mu);
      stream_->writing = false;
      if (!ok) stream_->cancelled = true;  // The client is gone.
    }
    stream_->Pump();
  }
  void OnCancel() override {
    {
      absl::MutexLock lock(&stream_->mu);
      stream_->cancelled = true;
    }
    stream_->Pump();
  }
  void OnDone() override { delete this; }

 private:
  const std::shared_ptr<Stream> stream_;
};

void JobWatchHub::Stream::Pump() {
  Reactor* reactor = nullptr;
  bool write = false;
  grpc::Status status;
  {
    absl::MutexLock lock(&mu);
    if (finished || writing) return;
    if (cancelled) {
      status = grpc::Status(grpc::StatusCode::CANCELLED, "WatchJob cancelled by the client");
    } else if (!queue.empty()) {
      current = std::move(queue.front());
      queue.pop_front();
      write = true;
    } else if (end.has_value()) {
      status = *end;
    } else {
      return;
    }
    // Only the thread that set `writing` (or `finished`) calls the reactor, so the reactor is
    // alive: gRPC deletes it (OnDone) only after Finish.
    if (write) {
      writing = true;
    } else {
      finished = true;
    }
    reactor = this->reactor;
  }
  if (write) {
    reactor->StartWrite(&current);
  } else {
    reactor->Finish(status);
  }
}

JobWatchHub::JobWatchHub(JobStore* store, Options options)
    : store_(store), options_(options), thread_([this] { Run(); }) {}

JobWatchHub::~JobWatchHub() {
  {
    absl::MutexLock lock(&mu_);
    stop_ = true;
  }
  thread_.join();
}

int JobWatchHub::open_streams() const {
  absl::MutexLock lock(&mu_);
  return static_cast<int>(streams_.size());
}

grpc::ServerWriteReactor<v1::JobEvent>* JobWatchHub::Refuse(grpc::Status status) {
  auto stream = std::make_shared<Stream>(JobWatch("", 0));
  auto* reactor = new Reactor(stream);
  {
    absl::MutexLock lock(&stream->mu);
    stream->reactor = reactor;
    stream->end = std::move(status);
  }
  stream->Pump();
  return reactor;
}

grpc::ServerWriteReactor<v1::JobEvent>* JobWatchHub::Watch(grpc::CallbackServerContext* /*context*/,
                                                           const v1::WatchJobRequest* request) {
  auto stream = std::make_shared<Stream>(JobWatch(request->job_id(), request->step_every(),
                                                  request->from_start(), request->no_follow()));
  auto* reactor = new Reactor(stream);
  auto finish = [&](grpc::Status status) {
    {
      absl::MutexLock lock(&stream->mu);
      stream->end = std::move(status);
    }
    stream->Pump();
    return reactor;
  };
  {
    absl::MutexLock lock(&stream->mu);
    stream->reactor = reactor;
  }
  if (request->job_id().empty()) {
    return finish(grpc::Status(grpc::StatusCode::INVALID_ARGUMENT, "job_id is required"));
  }
  {
    absl::MutexLock lock(&mu_);
    if (ended_.has_value()) return finish(*ended_);
    if (static_cast<int>(streams_.size()) >= options_.max_streams) {
      return finish(grpc::Status(
          grpc::StatusCode::RESOURCE_EXHAUSTED,
          absl::StrCat(streams_.size(), " WatchJob streams are open, the most this coordinator "
                                        "serves; retry later or watch with fewer clients")));
    }
  }
  // The version before the snapshot: a change between the two is read again, never missed.
  stream->seen_version = store_->JobVersion(request->job_id());
  std::vector<v1::JobEvent> first;
  absl::StatusOr<bool> over = stream->watch.Start(*store_, &first);
  if (!over.ok()) return finish(ToGrpcStatus(over.status()));
  {
    absl::MutexLock lock(&stream->mu);
    for (v1::JobEvent& event : first) stream->queue.push_back(std::move(event));
    if (*over) stream->end = grpc::Status::OK;
  }
  if (!*over) {
    std::optional<grpc::Status> ended;
    {
      absl::MutexLock lock(&mu_);
      if (ended_.has_value()) {
        ended = ended_;
      } else {
        streams_.push_back(stream);
      }
    }
    if (ended.has_value()) {
      absl::MutexLock lock(&stream->mu);
      stream->end = *ended;
    }
  }
  stream->Pump();
  return reactor;
}

void JobWatchHub::EndAll(const grpc::Status& status) {
  std::vector<std::shared_ptr<Stream>> streams;
  {
    absl::MutexLock lock(&mu_);
    ended_ = status;
    streams.swap(streams_);
  }
  for (const std::shared_ptr<Stream>& stream : streams) {
    {
      absl::MutexLock lock(&stream->mu);
      if (!stream->end.has_value()) stream->end = status;
    }
    stream->Pump();
  }
}

void JobWatchHub::Run() {
  int64_t seen = -1;
  bool behind = false;  // a stream has more to read than its last read took
  while (true) {
    // A stream catching up on a backlog is read again as soon as it has written its last read.
    seen = store_->WaitForChange(seen, behind ? absl::Milliseconds(5) : options_.idle_wait);
    behind = false;
    std::vector<std::shared_ptr<Stream>> streams;
    {
      absl::MutexLock lock(&mu_);
      if (stop_) return;
      // Streams that finished need nothing more from the hub.
      streams_.erase(std::remove_if(streams_.begin(), streams_.end(),
                                    [](const std::shared_ptr<Stream>& stream) {
                                      absl::MutexLock stream_lock(&stream->mu);
                                      return stream->finished || stream->cancelled;
                                    }),
                     streams_.end());
      streams = streams_;
    }
    for (const std::shared_ptr<Stream>& stream : streams) {
      {
        absl::MutexLock lock(&stream->mu);
        if (stream->finished || stream->cancelled || stream->end.has_value()) continue;
        // Backpressure: a stream is read again only once it wrote what it read before.
        if (!stream->queue.empty()) {
          behind = behind || stream->watch.behind();
          continue;
        }
      }
      const int64_t version = store_->JobVersion(stream->watch.job_id());
      if (version == stream->seen_version && !stream->watch.behind()) continue;
      stream->seen_version = version;
      std::vector<v1::JobEvent> events;
      absl::StatusOr<bool> over = stream->watch.Poll(*store_, &events);
      {
        absl::MutexLock lock(&stream->mu);
        for (v1::JobEvent& event : events) stream->queue.push_back(std::move(event));
        if (!over.ok()) {
          stream->end = ToGrpcStatus(over.status());
        } else if (*over) {
          stream->end = grpc::Status::OK;
        }
      }
      behind = behind || stream->watch.behind();
      stream->Pump();
    }
  }
}

}  // namespace raptr
