// raptr-worker train: trains a model in this one process on prepared token shards, configured by
// flags or by a job spec (--spec job.yaml). The service (coordinator + workers) runs the same
// Trainer per rank.
#include <algorithm>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "absl/strings/str_split.h"
#include "absl/strings/strip.h"
#include "common/flags.h"
#include "common/job_spec.h"
#include "common/status.h"
#include "worker/commands.h"
#include "worker/engine/trainer.h"
#include "worker/job_config.h"
#include "worker/model_flags.h"

namespace raptr {
namespace {

struct DataMeta {
  int vocab_size = 0;
  int mask_id = -1;
};

absl::StatusOr<DataMeta> ReadMeta(const std::string& data_dir) {
  const std::string path = data_dir + "/meta.json";
  std::ifstream in(path);
  if (!in) {
    return absl::NotFoundError(absl::StrCat(
        path, " not found: prepare the data first (raptrctl data prepare --out ", data_dir, ")"));
  }
  std::stringstream ss;
  ss << in.rdbuf();
  nlohmann::json j = nlohmann::json::parse(ss.str(), nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.contains("vocab_size") || !j["vocab_size"].is_number_integer()) {
    return absl::InvalidArgumentError(absl::StrCat(path, ": not a raptr data meta.json"));
  }
  DataMeta m;
  m.vocab_size = j["vocab_size"].get<int>();
  if (j.contains("mask_id") && j["mask_id"].is_number_integer())
    m.mask_id = j["mask_id"].get<int>();
  return m;
}

absl::Status ParseFixedLayers(const std::string& text, int L, std::vector<int>* out) {
  out->clear();
  if (text == "none" || text.empty()) return absl::OkStatus();
  for (absl::string_view item : absl::StrSplit(text, ',')) {
    int l = 0;
    if (item == "first") {
      l = 0;
    } else if (item == "last") {
      l = L - 1;
    } else if (!absl::SimpleAtoi(item, &l)) {
      return absl::InvalidArgumentError(absl::StrCat("--fixed-layers: bad layer '", item, "'"));
    }
    out->push_back(l);
  }
  return absl::OkStatus();
}

// The flags that may accompany --spec: how this process runs the job, not what the job is.
constexpr const char* kSpecCompatibleFlags[] = {"spec", "run-dir", "log-every", "stop-after",
                                                "resume"};

// When the train shard's directory has a `raptrctl data prepare` meta.json, the spec's
// model.vocab_size (and BERT's data.mask_id) must match the tokenizer that wrote the shards.
absl::Status CheckSpecAgainstMeta(const TrainerConfig& cfg) {
  const std::string& shard = cfg.train_shards.front();
  const size_t slash = shard.find_last_of('/');
  const std::string dir = slash == std::string::npos ? "." : shard.substr(0, slash);
  if (!std::ifstream(dir + "/meta.json")) return absl::OkStatus();
  ASSIGN_OR_RETURN(DataMeta meta, ReadMeta(dir));
  if (meta.vocab_size != cfg.model.vocab_size) {
    return absl::InvalidArgumentError(
        absl::StrCat("model.vocab_size (", cfg.model.vocab_size, ") does not match ", dir,
                     "/meta.json vocab_size (", meta.vocab_size, ")"));
  }
  if (cfg.model.kind == ModelKind::kBert && meta.mask_id >= 0 && meta.mask_id != cfg.mask_id) {
    return absl::InvalidArgumentError(absl::StrCat("data.mask_id (", cfg.mask_id,
                                                   ") does not match ", dir, "/meta.json mask_id (",
                                                   meta.mask_id, ")"));
  }
  return absl::OkStatus();
}

// --spec: the job spec is the source of truth; only kSpecCompatibleFlags may be given with it.
absl::StatusOr<TrainerConfig> ConfigFromSpec(const Flags& flags,
                                             const std::vector<std::string>& defined) {
  std::vector<std::string> conflicting;
  for (const std::string& name : defined) {
    if (!flags.IsSet(name)) continue;
    if (std::find(std::begin(kSpecCompatibleFlags), std::end(kSpecCompatibleFlags), name) ==
        std::end(kSpecCompatibleFlags)) {
      conflicting.push_back("--" + name);
    }
  }
  if (!conflicting.empty()) {
    return absl::InvalidArgumentError(absl::StrCat(
        absl::StrJoin(conflicting, ", "),
        " cannot be combined with --spec (the spec is the source of truth; only --run-dir, "
        "--log-every, --stop-after and --resume may be): edit the spec instead"));
  }
  const std::string path = flags.Get("spec");
  std::ifstream in(path);
  if (path.empty() || !in)
    return absl::NotFoundError(absl::StrCat("--spec: cannot read '", path, "'"));
  std::stringstream text;
  text << in.rdbuf();
  absl::StatusOr<v1::JobSpec> spec = ParseJobSpecYaml(text.str());
  if (!spec.ok()) {
    return absl::Status(spec.status().code(), absl::StrCat(path, ": ", spec.status().message()));
  }
  absl::StatusOr<TrainerConfig> cfg = TrainerConfigFromJobSpec(*spec);
  if (!cfg.ok()) {
    return absl::Status(cfg.status().code(), absl::StrCat(path, ": ", cfg.status().message()));
  }
  RETURN_IF_ERROR(CheckSpecAgainstMeta(*cfg));
  cfg->run_dir = flags.Get("run-dir");
  ASSIGN_OR_RETURN(cfg->resume, flags.GetBool("resume"));
  ASSIGN_OR_RETURN(cfg->stop_after, flags.GetInt("stop-after"));
  ASSIGN_OR_RETURN(int64_t log_every, flags.GetInt("log-every"));
  cfg->log_every = static_cast<int>(log_every);
  const v1::ResourceSpec& r = spec->resources();
  std::fprintf(
      stderr,
      "raptr train: spec %s (job '%s'): %s; schedule %s; B=%d T=%d x%d micro, %lld "
      "steps, seed %llu; optimizer lr %g min_lr_ratio %g warmup %lld decay %s "
      "betas %g,%g eps %g wd %g clip %g; eval every %lld x%d, checkpoint every %lld; "
      "train %s, val %s\n"
      "raptr train: resources (%d..%d workers, priority %d) are the coordinator's: this "
      "local run is one process with the whole global batch\n",
      path.c_str(), spec->name().c_str(), cfg->model.DebugString().c_str(),
      DescribePathSchedule(cfg->schedule).c_str(), cfg->batch, cfg->seq, cfg->micro_batches,
      static_cast<long long>(cfg->steps), static_cast<unsigned long long>(cfg->seed),
      cfg->optimizer.lr, cfg->optimizer.min_lr_ratio,
      static_cast<long long>(cfg->optimizer.warmup_steps),
      absl::AsciiStrToLower(
          absl::StripPrefix(v1::LrDecay_Name(spec->optimizer().decay()), "LR_DECAY_"))
          .c_str(),
      cfg->optimizer.beta1, cfg->optimizer.beta2, cfg->optimizer.eps, cfg->optimizer.weight_decay,
      cfg->optimizer.grad_clip, static_cast<long long>(cfg->eval_every), cfg->eval_batches,
      static_cast<long long>(cfg->checkpoint_every), absl::StrJoin(cfg->train_shards, ",").c_str(),
      absl::StrJoin(cfg->val_shards, ",").c_str(), r.min_workers(), r.max_workers(), r.priority());
  return cfg;
}

absl::Status RunTrainer(const TrainerConfig& cfg, const std::string& schedule);

absl::Status LocalTrain(int argc, char** argv) {
  Flags flags;
  ModelConfig d;
  d.num_layers = 12;
  d.d_model = 128;
  d.num_heads = 4;
  d.d_ff = 0;
  d.vocab_size = 0;
  d.max_seq = 0;
  DefineModelFlags(flags, d);
  flags.Define("data", "data/sotu-8k", "prepared data dir (train.bin, val.bin, meta.json)");
  flags.Define("run-dir", "", "checkpoints and metrics.csv go here (empty: none)");
  flags.Define("batch", "8", "sequences per micro-batch (B)");
  flags.Define("seq", "64", "tokens per sequence (T)");
  flags.Define("micro-batches", "1", "gradient accumulation micro-batches per step");
  flags.Define("steps", "500", "optimizer steps");
  // Sizes: a zero or negative count is refused at parse time, naming the flag.
  for (const char* size : {"batch", "seq", "micro-batches", "steps"}) flags.Range(size, 1, 1e9);
  flags.Define("seed", "1", "data order, paths and init");
  flags.Define("lr", "1e-3", "peak learning rate");
  flags.Define("min-lr-ratio", "0.1", "final lr as a fraction of the peak");
  flags.Define("warmup", "-1", "linear lr warmup steps (-1: 10% of the steps, at most 100)");
  flags.Define("decay", "cosine", "lr decay: cosine, linear or constant");
  flags.Define("weight-decay", "0.1", "AdamW decoupled weight decay (matrices, embeddings)");
  flags.Define("beta2", "0.95", "AdamW beta2");
  flags.Define("grad-clip", "1.0", "global gradient-norm clip (0: off)");
  flags.Define("schedule", "raptr", "raptr, full, pld, layerdrop or stacking");
  flags.Define("stages", "",
               "RaPTr stages path_length:steps,... (default: L/2,2L/3,5L/6,L equal); stacking: "
               "depth:steps,... (default: L/2,3L/4,L equal)");
  flags.Define("pld-theta-bar", "0.5", "pld: the keep probability theta(t) decays to this");
  flags.Define("pld-gamma", "0.001", "pld: decay rate of theta(t) per step");
  flags.Define("pld-mean-keep", "",
               "pld: instead of --pld-gamma, the gamma whose mean share of active blocks over "
               "the run is this (0.75: the default RaPTr schedule's FLOPs)");
  flags.Define("pld-indexing", "paper",
               "pld: paper (keep and scale 1-(l+1)(1-theta)/L) or deepspeed (DeepSpeed's code: "
               "keep 1-l(1-theta)/L, theta of the step before)");
  flags.Define("keep-prob", "0.75", "layerdrop: constant keep probability of every block");
  flags.Define("layerdrop-scale", "false",
               "layerdrop: scale kept blocks by 1/keep-prob (default off, as in job specs)");
  flags.Define("fixed-layers", "first,last",
               "always-on layers: list of indices/first/last, or none (layerdrop: default none)");
  flags.Define("sampling", "bernoulli", "bernoulli or exact");
  flags.Define("scaling", "none", "none or inverse_keep_prob");
  flags.Define("skipped", "zero_grad",
               "optimizer on skipped layers: zero_grad, frozen, zero_grad_no_decay or "
               "moments_only");
  flags.Define("full-warmup", "0", "full-model steps before the first RaPTr stage");
  flags.Define("eval-every", "100", "evaluate the full model every N steps (0: at the end)");
  flags.Define("eval-batches", "8", "validation batches per evaluation");
  flags.Define("checkpoint-every", "0", "checkpoint every N steps (0: at the end)");
  flags.Define("resume", "true", "continue from run-dir's latest checkpoint if any");
  flags.Define("stop-after", "-1", "stop after this 0-based step, with a checkpoint (-1: run all)");
  flags.Define("log-every", "10", "progress line every N steps (0: quiet)");
  flags.Define("spec", "",
               "job spec YAML (examples/*.yaml): the source of truth for the job; only --run-dir, "
               "--log-every, --stop-after and --resume may be combined with it");
  flags.Define("help", "false", "print this help");
  RETURN_IF_ERROR(flags.Parse(argc, argv, 2));
  if (flags.Get("help") == "true") {
    std::printf("usage: raptr-worker train [flags]\n%s", flags.Usage().c_str());
    std::exit(0);
  }
  if (flags.IsSet("spec")) {
    // Every flag defined above and by DefineModelFlags (Usage lists them all), to refuse the
    // ones --spec overrides.
    std::vector<std::string> defined;
    for (absl::string_view line : absl::StrSplit(flags.Usage(), '\n')) {
      line = absl::StripLeadingAsciiWhitespace(line);
      if (!absl::ConsumePrefix(&line, "--")) continue;
      defined.emplace_back(line.substr(0, line.find_first_of(" =\t")));
    }
    ASSIGN_OR_RETURN(TrainerConfig cfg, ConfigFromSpec(flags, defined));
    return RunTrainer(cfg, PathScheduleKindName(cfg.schedule.kind));
  }

  TrainerConfig cfg;
  ASSIGN_OR_RETURN(cfg.model, ModelConfigFromFlags(flags));
  const std::string data = flags.Get("data");
  ASSIGN_OR_RETURN(DataMeta meta, ReadMeta(data));
  if (cfg.model.vocab_size == 0) cfg.model.vocab_size = meta.vocab_size;
  cfg.mask_id = meta.mask_id;
  cfg.train_shards = {data + "/train.bin"};
  cfg.val_shards = {data + "/val.bin"};
  cfg.run_dir = flags.Get("run-dir");
  ASSIGN_OR_RETURN(int batch, flags.GetInt32("batch"));
  ASSIGN_OR_RETURN(int seq, flags.GetInt32("seq"));
  ASSIGN_OR_RETURN(int micro, flags.GetInt32("micro-batches"));
  ASSIGN_OR_RETURN(cfg.steps, flags.GetInt("steps"));
  ASSIGN_OR_RETURN(int64_t seed, flags.GetInt("seed"));
  cfg.batch = static_cast<int>(batch);
  cfg.seq = static_cast<int>(seq);
  cfg.micro_batches = static_cast<int>(micro);
  cfg.seed = static_cast<uint64_t>(seed);
  if (cfg.model.max_seq == 0) cfg.model.max_seq = cfg.seq;
  ASSIGN_OR_RETURN(cfg.eval_every, flags.GetInt("eval-every"));
  ASSIGN_OR_RETURN(int eval_batches, flags.GetInt32("eval-batches"));
  cfg.eval_batches = static_cast<int>(eval_batches);
  ASSIGN_OR_RETURN(cfg.checkpoint_every, flags.GetInt("checkpoint-every"));
  ASSIGN_OR_RETURN(cfg.resume, flags.GetBool("resume"));
  ASSIGN_OR_RETURN(cfg.stop_after, flags.GetInt("stop-after"));
  ASSIGN_OR_RETURN(int64_t log_every, flags.GetInt("log-every"));
  cfg.log_every = static_cast<int>(log_every);

  OptimizerConfig& o = cfg.optimizer;
  ASSIGN_OR_RETURN(o.lr, flags.GetDouble("lr"));
  ASSIGN_OR_RETURN(o.min_lr_ratio, flags.GetDouble("min-lr-ratio"));
  ASSIGN_OR_RETURN(o.warmup_steps, flags.GetInt("warmup"));
  if (o.warmup_steps == -1) o.warmup_steps = std::min<int64_t>(100, cfg.steps / 10);
  ASSIGN_OR_RETURN(o.weight_decay, flags.GetDouble("weight-decay"));
  ASSIGN_OR_RETURN(o.beta2, flags.GetDouble("beta2"));
  ASSIGN_OR_RETURN(o.grad_clip, flags.GetDouble("grad-clip"));
  RETURN_IF_ERROR(ParseLrDecay(flags.Get("decay"), &o.decay));
  RETURN_IF_ERROR(ParseSkippedLayerPolicy(flags.Get("skipped"), &o.skipped));
  o.total_steps = cfg.steps;

  const int L = cfg.model.num_layers;
  PathScheduleConfig& s = cfg.schedule;
  ASSIGN_OR_RETURN(s.full_warmup_steps, flags.GetInt("full-warmup"));
  const std::string schedule = flags.Get("schedule");
  // A baseline's flag given with another schedule would be silently ignored: refuse it.
  for (const auto& [flag, owner] : {std::pair<const char*, const char*>{"pld-theta-bar", "pld"},
                                    {"pld-gamma", "pld"},
                                    {"pld-mean-keep", "pld"},
                                    {"pld-indexing", "pld"},
                                    {"keep-prob", "layerdrop"},
                                    {"layerdrop-scale", "layerdrop"}}) {
    if (flags.IsSet(flag) && schedule != owner) {
      return absl::InvalidArgumentError(
          absl::StrCat("--", flag, " applies to --schedule ", owner, ", not ", schedule));
    }
  }
  if (schedule == "full") {
    s.kind = PathScheduleConfig::Kind::kFull;
  } else if (schedule == "raptr") {
    const int64_t warm = s.full_warmup_steps;
    s = DefaultRaptrSchedule(L, cfg.steps - warm);
    s.full_warmup_steps = warm;
    if (flags.Get("stages").empty() && cfg.steps - warm < 4) {
      return absl::InvalidArgumentError(absl::StrCat(
          "the default RaPTr schedule has 4 equal stages: it needs at least 4 steps after the "
          "full warmup (--steps ",
          cfg.steps, ", --full-warmup ", warm, "); or give --stages"));
    }
    if (!flags.Get("stages").empty()) RETURN_IF_ERROR(ParseStages(flags.Get("stages"), &s.stages));
    RETURN_IF_ERROR(ParseFixedLayers(flags.Get("fixed-layers"), L, &s.fixed_layers));
    // "first,last" of a one-block model is one layer.
    std::sort(s.fixed_layers.begin(), s.fixed_layers.end());
    s.fixed_layers.erase(std::unique(s.fixed_layers.begin(), s.fixed_layers.end()),
                         s.fixed_layers.end());
    if (!s.stages.empty() && s.stages.back().path_length < L) {
      std::fprintf(stderr,
                   "warning: the last stage trains paths of %d of %d blocks: the full "
                   "model is never trained\n",
                   s.stages.back().path_length, L);
    }
    const std::string sampling = flags.Get("sampling");
    if (sampling == "bernoulli") {
      s.sampling = PathSampling::kBernoulli;
    } else if (sampling == "exact") {
      s.sampling = PathSampling::kExact;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--sampling '", sampling, "' is not bernoulli or exact"));
    }
    const std::string scaling = flags.Get("scaling");
    if (scaling == "none") {
      s.scaling = PathScaling::kNone;
    } else if (scaling == "inverse_keep_prob") {
      s.scaling = PathScaling::kInverseKeepProb;
    } else {
      return absl::InvalidArgumentError(
          absl::StrCat("--scaling '", scaling, "' is not none or inverse_keep_prob"));
    }
  } else if (schedule == "pld" || schedule == "layerdrop" || schedule == "stacking") {
    RETURN_IF_ERROR(ParsePathScheduleKind(schedule, &s.kind));
    // Flags of the other schedules would be silently ignored: refuse them instead.
    for (const char* f : {"fixed-layers", "sampling", "scaling"}) {
      if (flags.IsSet(f) && !(schedule == "layerdrop" && std::string(f) == "fixed-layers")) {
        return absl::InvalidArgumentError(
            absl::StrCat("--", f, " applies to --schedule raptr, not ", schedule));
      }
    }
    ASSIGN_OR_RETURN(s.pld_theta_bar, flags.GetDouble("pld-theta-bar"));
    ASSIGN_OR_RETURN(s.pld_gamma, flags.GetDouble("pld-gamma"));
    ASSIGN_OR_RETURN(s.keep_prob, flags.GetDouble("keep-prob"));
    ASSIGN_OR_RETURN(s.layerdrop_scale, flags.GetBool("layerdrop-scale"));
    if (s.kind == PathScheduleConfig::Kind::kLayerDrop && flags.IsSet("fixed-layers")) {
      RETURN_IF_ERROR(ParseFixedLayers(flags.Get("fixed-layers"), L, &s.fixed_layers));
      std::sort(s.fixed_layers.begin(), s.fixed_layers.end());
      s.fixed_layers.erase(std::unique(s.fixed_layers.begin(), s.fixed_layers.end()),
                           s.fixed_layers.end());
    }
    const std::string indexing = flags.Get("pld-indexing");
    if (indexing != "paper" && indexing != "deepspeed") {
      return absl::InvalidArgumentError(
          absl::StrCat("--pld-indexing '", indexing, "' is not paper or deepspeed"));
    }
    s.pld_indexing = indexing == "deepspeed" ? PldIndexing::kDeepSpeed : PldIndexing::kPaper;
    if (flags.IsSet("pld-mean-keep")) {
      if (flags.IsSet("pld-gamma")) {
        return absl::InvalidArgumentError("give --pld-gamma or --pld-mean-keep, not both");
      }
      ASSIGN_OR_RETURN(const double mean_keep, flags.GetDouble("pld-mean-keep"));
      ASSIGN_OR_RETURN(s.pld_gamma, PldGammaForMeanKeep(s, L, cfg.steps, mean_keep));
    }
    if (s.kind == PathScheduleConfig::Kind::kStacking) {
      if (flags.Get("stages").empty()) {
        if (cfg.steps < 3) {
          return absl::InvalidArgumentError(absl::StrCat(
              "the default stacking schedule has 3 equal stages: it needs at least 3 steps "
              "(--steps ",
              cfg.steps, "); or give --stages"));
        }
        s.stages = DefaultStackingSchedule(L, cfg.steps).stages;
      } else {
        RETURN_IF_ERROR(ParseStages(flags.Get("stages"), &s.stages));
      }
      if (s.stages.back().path_length < L) {
        std::fprintf(stderr,
                     "warning: the last stacking stage trains %d of %d blocks: the blocks above "
                     "are never trained\n",
                     s.stages.back().path_length, L);
      }
    } else if (!flags.Get("stages").empty()) {
      return absl::InvalidArgumentError(
          absl::StrCat("--stages applies to --schedule raptr or stacking, not ", schedule));
    }
  } else {
    return absl::InvalidArgumentError(
        absl::StrCat("--schedule '", schedule, "' is not raptr, full, pld, layerdrop or stacking"));
  }

  std::fprintf(stderr, "raptr train: %s, %s schedule, B=%d T=%d x%d micro, %lld steps, data %s\n",
               cfg.model.DebugString().c_str(), schedule.c_str(), cfg.batch, cfg.seq,
               cfg.micro_batches, static_cast<long long>(cfg.steps), data.c_str());
  return RunTrainer(cfg, schedule);
}

// Trains `cfg`, with progress lines on stderr and a JSON summary on stdout.
absl::Status RunTrainer(const TrainerConfig& cfg, const std::string& schedule) {
  const int L = cfg.model.num_layers;
  const int log = cfg.log_every;
  auto on_step = [&](const StepReport& r) {
    const bool eval = r.eval_loss >= 0;
    if (log <= 0 || !((r.step + 1) % log == 0 || eval || r.step == 0)) return;
    std::fprintf(stderr,
                 "step %5lld/%lld  stage %2d  path %2d/%d  loss %.4f%s  lr %.2e  |g| %.3f  "
                 "%.0f tok/s  FLOPs %.3g (%.1f%% of full)\n",
                 static_cast<long long>(r.step + 1), static_cast<long long>(cfg.steps), r.stage + 1,
                 r.path_length, L, r.loss,
                 eval ? absl::StrFormat("  eval %.4f", r.eval_loss).c_str() : "", r.lr, r.grad_norm,
                 r.tokens / r.seconds, r.total_flops, 100.0 * r.total_flops / r.total_flops_full);
  };
  TrainResult result;
  RETURN_IF_ERROR(Train(cfg, on_step, &result));
  std::printf(
      "{\"schedule\":\"%s\",\"steps\":%lld,\"final_loss\":%.6f,\"eval_loss\":%.6f,"
      "\"flops\":%.6g,\"flops_full\":%.6g,\"flops_ratio\":%.4f,\"seconds\":%.2f}\n",
      schedule.c_str(), static_cast<long long>(result.steps_done), result.final_loss,
      result.final_eval_loss, result.total_flops, result.total_flops_full,
      result.total_flops / result.total_flops_full, result.seconds);
  return absl::OkStatus();
}

}  // namespace

int RunLocalTrain(int argc, char** argv) {
  absl::Status s = LocalTrain(argc, argv);
  if (!s.ok()) {
    std::fprintf(stderr, "raptr-worker train: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace raptr
