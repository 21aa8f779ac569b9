// The training loop (see trainer.h).
#include "worker/engine/trainer.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <memory>
#include <new>
#include <nlohmann/json.hpp>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "worker/engine/checkpoint/checkpoint.h"
#include "worker/engine/cpu/cpu_backend.h"
#include "worker/engine/data/data_loader.h"
#include "worker/engine/flops.h"
#include "worker/engine/model.h"
#include "worker/engine/session.h"

namespace raptr {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

}  // namespace

ActiveLayerSet ToActiveSet(const PathPlan& plan) {
  const int L = static_cast<int>(plan.active.size());
  ActiveLayerSet s = ActiveLayerSet::Of(L, {});
  for (int l = 0; l < L; ++l) {
    s.set_active(l, plan.active[l]);
    s.set_scale(l, plan.scale[l]);
  }
  return s;
}

namespace {

// The model as it stands at `step`, for evaluation: every block, except under stacking, whose
// model is its first k_s blocks (the rest are not trained yet; the paper's point is that stacking
// cannot evaluate the full model early).
ActiveLayerSet EvalLayers(const TrainerConfig& cfg, int64_t step) {
  ActiveLayerSet model_now = ActiveLayerSet::Full(cfg.model.num_layers);
  if (cfg.schedule.kind == PathScheduleConfig::Kind::kStacking) {
    const PathPlan plan = PlanPath(cfg.schedule, cfg.model.num_layers, cfg.seed, step);
    for (int l = 0; l < cfg.model.num_layers; ++l) model_now.set_active(l, plan.active[l]);
  }
  return model_now;
}

// metrics.csv: one row per step; on resume, rows past the checkpoint are dropped so the file
// reads as one uninterrupted run.
class MetricsCsv {
 public:
  absl::Status Open(const std::string& run_dir, int64_t resume_step) {
    if (run_dir.empty()) return absl::OkStatus();
    path_ = run_dir + "/metrics.csv";
    std::vector<std::string> kept;
    if (resume_step > 0) {
      std::ifstream in(path_);
      std::string line;
      while (std::getline(in, line)) {
        if (kept.empty()) {
          kept.push_back(line);  // header
          continue;
        }
        int64_t step = std::atoll(line.c_str());
        if (step < resume_step) kept.push_back(line);
      }
    }
    out_.open(path_, std::ios::trunc);
    if (!out_) return absl::InternalError(absl::StrCat("cannot write ", path_));
    if (kept.empty()) {
      out_ << "step,stage,path_length,loss,eval_loss,lr,grad_norm,tokens,flops,flops_full,"
              "total_flops,total_flops_full,seconds,forward_s,backward_s,optimizer_s,eval_s\n";
    }
    for (const auto& l : kept) out_ << l << "\n";
    out_.flush();
    return absl::OkStatus();
  }
  void Write(const StepReport& r) {
    if (!out_.is_open()) return;
    out_ << absl::StrFormat(
        "%d,%d,%d,%.6f,%s,%.6g,%.6g,%d,%.6g,%.6g,%.6g,%.6g,%.5f,%.5f,%.5f,%.5f,%.5f\n", r.step,
        r.stage, r.path_length, r.loss,
        r.eval_loss >= 0 ? absl::StrFormat("%.6f", r.eval_loss) : "", r.lr, r.grad_norm, r.tokens,
        r.flops, r.flops_full, r.total_flops, r.total_flops_full, r.seconds, r.forward_seconds,
        r.backward_seconds, r.optimizer_seconds, r.eval_seconds);
    out_.flush();
  }

 private:
  std::string path_;
  std::ofstream out_;
};

}  // namespace

// Weights are copied (Reddi et al. initialise new blocks from the top trained ones); optimizer
// state is a design choice. raptr starts the new blocks with fresh AdamW moments and a zero
// update count rather than copying the sources' moments: the sources' moments estimate their
// gradients in their old position of a shallower model, which says little about the new block's
// first gradients in a new position, and a fresh start with its own bias correction gives the
// first updates the usual AdamW size. It is also what most stacking implementations do (the new
// model's optimizer is created afresh). In practice the destinations have never trained (a
// stacked model only grows), so their moments are zero already; the reset of the update count
// matters under `zero_grad`, where skipped blocks count every step.
absl::Status ApplyStackingCopies(const std::vector<std::pair<int, int>>& copies,
                                 const ParamLayout& layout, DeviceSpan<float> params,
                                 AdamWOptimizer<float>& optimizer) {
  if (copies.empty()) return absl::OkStatus();
  std::vector<int64_t> steps = optimizer.layer_steps();
  const int L = static_cast<int>(steps.size());
  for (const auto& [dst, src] : copies) {
    if (dst < 0 || dst >= L || src < 0 || src >= L) {
      return absl::InvalidArgumentError(
          absl::StrCat("stacking copy ", src, " -> ", dst, ": block out of range [0, ", L, ")"));
    }
    for (const auto& other : copies) {
      if (other.second == dst) {
        return absl::InvalidArgumentError(
            absl::StrCat("stacking copies: block ", dst, " is both a destination and a source"));
      }
    }
  }
  // On the device, through the backend: the buffers need not be host memory.
  Backend<float>& be = *optimizer.backend();
  for (const auto& [dst, src] : copies) {
    const ParamRange d = layout.LayerRange(dst), s = layout.LayerRange(src);
    // Blocks share one shape.
    be.Copy(params.subspan(d.begin, d.size()).device_data(),
            params.subspan(s.begin, s.size()).device_data(), d.size());
    be.Zero(optimizer.m().subspan(d.begin, d.size()).device_data(), d.size());
    be.Zero(optimizer.v().subspan(d.begin, d.size()).device_data(), d.size());
    steps[dst] = 0;
  }
  return optimizer.RestoreStepCounts(optimizer.shared_steps(), steps);
}

AttentionKind ResolvedAttention(const TrainerConfig& config) {
  if (config.attention.has_value()) return *config.attention;
  return config.backend.kind == BackendKind::kCuda ? AttentionKind::kFlash
                                                   : AttentionKind::kMaterialized;
}

absl::Status Train(const TrainerConfig& cfg, const StepCallback& on_step, TrainResult* result,
                   bool keep_params) {
  ASSIGN_OR_RETURN(std::unique_ptr<TrainingSession> session, TrainingSession::Create(cfg));
  if (!cfg.run_dir.empty()) {
    auto latest = LatestCheckpoint(cfg.run_dir);
    if (!latest.ok() && !absl::IsNotFound(latest.status())) return latest.status();
    if (latest.ok() && !cfg.resume) {
      // Training over it would interleave two runs' checkpoints in one directory.
      return absl::FailedPreconditionError(
          absl::StrCat(cfg.run_dir, " already holds a run (", *latest,
                       "): resume it, or train into a fresh run directory"));
    }
    if (latest.ok()) {
      RETURN_IF_ERROR(session->Restore(*latest));
      // Always said, even when quiet: silently continuing an old run would surprise.
      std::fprintf(stderr, "resumed from %s at step %lld\n", latest->c_str(),
                   static_cast<long long>(session->step()));
    }
  }
  if (session->step() >= cfg.steps) {
    std::fprintf(stderr, "run already complete: %lld of %lld steps done\n",
                 static_cast<long long>(session->step()), static_cast<long long>(cfg.steps));
  }
  if (!cfg.run_dir.empty()) std::filesystem::create_directories(cfg.run_dir);
  MetricsCsv csv;
  RETURN_IF_ERROR(csv.Open(cfg.run_dir, session->step()));

  const double t_start = Now();
  StepReport last;
  double last_eval = -1;
  for (int64_t step = session->step(); step < cfg.steps; ++step) {
    // Stacking grows the model at the start of a stage's first step: a pure function of the
    // step, so a run resumed exactly at a transition (from the checkpoint written at the end of
    // the step before) grows it too, and one resumed later finds it grown in the checkpoint.
    StepInput input;
    input.step = step;
    input.copies = StackingCopiesAtStep(cfg.schedule, cfg.model.num_layers, step);
    if (!input.copies.empty() && cfg.log_every > 0) {
      std::string pairs;
      for (const auto& [dst, src] : input.copies) absl::StrAppend(&pairs, " ", src, "->", dst);
      std::fprintf(stderr, "step %lld: stacking grows the model, blocks copied:%s\n",
                   static_cast<long long>(step + 1), pairs.c_str());
    }
    const PathPlan plan = PlanPath(cfg.schedule, cfg.model.num_layers, cfg.seed, step);
    input.stage = plan.stage;
    input.active = ToActiveSet(plan);
    ASSIGN_OR_RETURN(const StepOutcome out, session->RunStep(input, /*reducer=*/nullptr));
    const TrainState& state = session->state();
    StepReport r;
    r.step = step;
    r.stage = plan.stage;
    r.path_length = input.active.NumActive();
    r.loss = out.local_loss;
    r.lr = out.lr;
    r.grad_norm = out.grad_norm;
    r.tokens = out.local_tokens;
    r.flops = out.local_flops;
    r.flops_full = out.local_flops_full;
    r.total_flops = state.flops_spent;
    r.total_flops_full = state.flops_full;
    r.seconds = out.times.total;
    r.forward_seconds = out.times.forward;
    r.backward_seconds = out.times.backward;
    r.optimizer_seconds = out.times.optimizer;
    const bool last_step = state.step == cfg.steps;
    const bool stopping = cfg.stop_after >= 0 && step >= cfg.stop_after;
    if (last_step || (cfg.eval_every > 0 && state.step % cfg.eval_every == 0)) {
      ASSIGN_OR_RETURN(const EvalOutcome eval,
                       session->Evaluate(cfg.eval_batches, EvalLayers(cfg, step)));
      if (eval.scored_targets == 0) {
        return absl::FailedPreconditionError("no scored positions in the eval batches");
      }
      r.eval_loss = eval.loss;
      r.eval_seconds = eval.seconds;
      last_eval = r.eval_loss;
    }
    csv.Write(r);
    if (on_step) on_step(r);
    last = r;
    if (!cfg.run_dir.empty() &&
        (last_step || stopping ||
         (cfg.checkpoint_every > 0 && state.step % cfg.checkpoint_every == 0))) {
      RETURN_IF_ERROR(session->Save(cfg.run_dir).status());
    }
    if (stopping) break;
  }
  if (result != nullptr) {
    const TrainState& state = session->state();
    result->steps_done = state.step;
    result->final_loss = last.loss;
    result->final_eval_loss = last_eval;
    result->total_flops = state.flops_spent;
    result->total_flops_full = state.flops_full;
    result->seconds = Now() - t_start;
    if (keep_params) {
      result->final_params = Download(session->backend(), session->model().params());
    }
  }
  return absl::OkStatus();
}

}  // namespace raptr
