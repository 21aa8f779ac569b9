// Training checkpoint save, discovery and load with an atomic commit protocol (see checkpoint.h).
#include "worker/engine/checkpoint/checkpoint.h"

#include <cstring>
#include <filesystem>
#include <fstream>
#include <map>
#include <sstream>
#include <string_view>
#include <system_error>
#include <utility>
#include <vector>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/status.h"
#include "nlohmann/json.hpp"
#include "worker/engine/checkpoint/hf_names.h"
#include "worker/engine/checkpoint/safetensors.h"

namespace raptr {
namespace {

namespace fs = std::filesystem;
using Json = nlohmann::json;

constexpr char kModelFile[] = "model.safetensors";
constexpr char kStateFile[] = "state.safetensors";
constexpr char kLatestFile[] = "LATEST";
constexpr char kStepPrefix[] = "step_";


absl::Status FsError(const std::string& what, const std::string& path, const std::error_code& ec) {
  return absl::InternalError(absl::StrCat(what, " ", path, ": ", ec.message()));
}

// Parses "step_<digits>" (nothing else: no ".tmp", no path separators) into its step.
bool ParseStepDirName(const std::string& name, int64_t* step) {
  const std::string_view prefix = kStepPrefix;
  if (name.size() <= prefix.size() || name.compare(0, prefix.size(), prefix) != 0) return false;
  const std::string digits = name.substr(prefix.size());
  for (char c : digits) {
    if (c < '0' || c > '9') return false;
  }
  return absl::SimpleAtoi(digits, step);
}

bool IsCompleteCheckpoint(const fs::path& dir) {
  std::error_code ec;
  return fs::is_directory(dir, ec) && fs::is_regular_file(dir / kModelFile, ec) &&
         fs::is_regular_file(dir / kStateFile, ec);
}

// The step directory LATEST names, if it is readable and well-formed.
bool ReadLatest(const fs::path& root, std::string* name) {
  std::ifstream in(root / kLatestFile);
  if (!in) return false;
  std::stringstream ss;
  ss << in.rdbuf();
  *name = std::string(absl::StripAsciiWhitespace(ss.str()));
  int64_t step;
  return ParseStepDirName(*name, &step);
}

std::string DoubleStr(double x) { return absl::StrFormat("%.17g", x); }

std::map<std::string, std::string> CommonMetadata(const ModelConfig& config, int64_t step) {
  return {{"format_version", absl::StrCat(kCheckpointFormatVersion)},
          {"config", ModelConfigToJson(config)},
          {"step", absl::StrCat(step)}};
}

// Compares a stored config to the expected one, naming the first differing field.
absl::Status CheckConfig(const ModelConfig& stored, const ModelConfig& expected,
                         const std::string& source) {
  auto differ = [&](const char* field, const std::string& got, const std::string& want) {
    return absl::FailedPreconditionError(
        absl::StrCat(source, ": stored model.", field, " is ", got, ", expected ", want));
  };
  if (stored.kind != expected.kind) {
    return differ("kind", ModelKindName(stored.kind), ModelKindName(expected.kind));
  }
  const std::pair<const char*, std::pair<int, int>> fields[] = {
      {"num_layers", {stored.num_layers, expected.num_layers}},
      {"d_model", {stored.d_model, expected.d_model}},
      {"num_heads", {stored.num_heads, expected.num_heads}},
      {"d_ff", {stored.d_ff, expected.d_ff}},
      {"vocab_size", {stored.vocab_size, expected.vocab_size}},
      {"max_seq", {stored.max_seq, expected.max_seq}},
  };
  for (const auto& [field, values] : fields) {
    if (values.first != values.second) {
      return differ(field, absl::StrCat(values.first), absl::StrCat(values.second));
    }
  }
  return absl::OkStatus();
}

// Checks the format version and config recorded in a checkpoint file's metadata.
absl::Status CheckFileHeader(const SafetensorsFile& file, const ModelConfig& expected) {
  const auto& meta = file.metadata();
  auto version = meta.find("format_version");
  if (version == meta.end()) {
    return absl::DataLossError(
        absl::StrCat("checkpoint file ", file.path(), ": metadata lacks 'format_version'"));
  }
  if (version->second != absl::StrCat(kCheckpointFormatVersion)) {
    // The value is not echoed: metadata strings are free text (ParseSafetensors' comment).
    return absl::FailedPreconditionError(absl::StrCat("checkpoint file ", file.path(),
                                                      ": format_version is not the supported ",
                                                      kCheckpointFormatVersion));
  }
  auto config = meta.find("config");
  if (config == meta.end()) {
    return absl::DataLossError(
        absl::StrCat("checkpoint file ", file.path(), ": metadata lacks 'config'"));
  }
  absl::StatusOr<ModelConfig> stored = ModelConfigFromJson(config->second);
  if (!stored.ok()) {
    return absl::DataLossError(absl::StrCat(
        "checkpoint file ", file.path(), ": bad 'config' metadata: ", stored.status().message()));
  }
  return CheckConfig(*stored, expected, absl::StrCat("checkpoint file ", file.path()));
}

// Reads the TrainState fields from state.safetensors metadata.
absl::StatusOr<TrainState> ParseTrainState(const SafetensorsFile& file) {
  const auto& meta = file.metadata();
  auto field = [&](const char* key) -> absl::StatusOr<std::string> {
    auto it = meta.find(key);
    if (it == meta.end()) {
      return absl::DataLossError(
          absl::StrCat("checkpoint file ", file.path(), ": metadata lacks '", key, "'"));
    }
    return it->second;
  };
  // The value is not echoed: metadata strings are free text (ParseSafetensors' comment).
  auto malformed = [&](const char* key) {
    return absl::DataLossError(absl::StrCat("checkpoint file ", file.path(), ": metadata '", key,
                                            "' is not a number of its type"));
  };
  TrainState s;
  std::string v;
  ASSIGN_OR_RETURN(v, field("step"));
  if (!absl::SimpleAtoi(v, &s.step) || s.step < 0) return malformed("step");
  ASSIGN_OR_RETURN(v, field("seed"));
  if (!absl::SimpleAtoi(v, &s.seed)) return malformed("seed");
  ASSIGN_OR_RETURN(v, field("tokens_seen"));
  if (!absl::SimpleAtoi(v, &s.tokens_seen)) return malformed("tokens_seen");
  ASSIGN_OR_RETURN(v, field("flops_spent"));
  if (!absl::SimpleAtod(v, &s.flops_spent)) return malformed("flops_spent");
  ASSIGN_OR_RETURN(v, field("flops_full"));
  if (!absl::SimpleAtod(v, &s.flops_full)) return malformed("flops_full");
  ASSIGN_OR_RETURN(v, field("rng_state"));
  if (!absl::SimpleAtoi(v, &s.rng_state)) return malformed("rng_state");
  ASSIGN_OR_RETURN(s.extra_json, field("extra_json"));
  return s;
}

// Finds an F32 [numel] moment tensor.
absl::StatusOr<const SafetensorsFile::Entry*> FindMoment(const SafetensorsFile& file,
                                                         const std::string& name, size_t numel) {
  const SafetensorsFile::Entry* e = file.Find(name);
  if (e == nullptr) {
    return absl::DataLossError(
        absl::StrCat("checkpoint file ", file.path(), ": missing tensor '", name, "'"));
  }
  if (e->dtype != "F32" || e->shape != std::vector<int64_t>{static_cast<int64_t>(numel)}) {
    return absl::FailedPreconditionError(absl::StrCat(
        "checkpoint file ", file.path(), ": tensor '", name, "' is ", e->dtype, " with ",
        e->shape.size() == 1 ? absl::StrCat(e->shape[0]) : std::string("non-1-D"),
        " elements, expected F32 [", numel, "]"));
  }
  return e;
}

absl::Status CheckLayout(const ModelConfig& config, const ParamLayout& layout,
                         const std::string& what) {
  const size_t want = ParamLayout(config).total();
  if (layout.total() != want) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": parameter layout has ", layout.total(),
                                                   " floats but model ", config.DebugString(),
                                                   " needs ", want));
  }
  return absl::OkStatus();
}

// Writes both files of a checkpoint into `dir`.
absl::Status WriteCheckpointFiles(const std::string& dir, const ModelConfig& config,
                                  const ParamLayout& layout, const float* params,
                                  const float* adam_m, const float* adam_v,
                                  const TrainState& state) {
  {
    const std::vector<OwnedTensor> tensors = ExportHf(config, layout, params);
    std::map<std::string, std::string> meta = CommonMetadata(config, state.step);
    meta["format"] = "pt";  // transformers refuses safetensors files without it
    RETURN_IF_ERROR(
        WriteSafetensors((fs::path(dir) / kModelFile).string(), AsTensorViews(tensors), meta));
  }
  const std::vector<int64_t> shape = {static_cast<int64_t>(layout.total())};
  std::map<std::string, std::string> meta = CommonMetadata(config, state.step);
  meta["seed"] = absl::StrCat(state.seed);
  meta["tokens_seen"] = absl::StrCat(state.tokens_seen);
  meta["flops_spent"] = DoubleStr(state.flops_spent);
  meta["flops_full"] = DoubleStr(state.flops_full);
  meta["rng_state"] = absl::StrCat(state.rng_state);
  meta["extra_json"] = state.extra_json;
  return WriteSafetensors((fs::path(dir) / kStateFile).string(),
                          {{"adam.m", "F32", shape, adam_m}, {"adam.v", "F32", shape, adam_v}},
                          meta);
}

}  // namespace

std::string CheckpointDirName(int64_t step) { return absl::StrFormat("%s%08d", kStepPrefix, step); }

std::string ModelConfigToJson(const ModelConfig& c) {
  Json j = {{"kind", ModelKindName(c.kind)},
            {"num_layers", c.num_layers},
            {"d_model", c.d_model},
            {"num_heads", c.num_heads},
            {"d_ff", c.d_ff},
            {"vocab_size", c.vocab_size},
            {"max_seq", c.max_seq}};
  return j.dump();
}

std::string CheckpointsRoot(const std::string& run_dir) {
  return (fs::path(run_dir) / "checkpoints").string();
}

std::string CheckpointPath(const std::string& run_dir, int64_t step) {
  return (fs::path(CheckpointsRoot(run_dir)) / CheckpointDirName(step)).string();
}

absl::StatusOr<ModelConfig> ModelConfigFromJson(const std::string& text) {
  const Json j = Json::parse(text, nullptr, /*allow_exceptions=*/false);
  if (j.is_discarded() || !j.is_object()) {
    // Not echoed: the text may come from a file (a checkpoint's metadata).
    return absl::InvalidArgumentError("model config is not a JSON object");
  }
  ModelConfig c;
  std::pair<const char*, int*> ints[] = {
      {"num_layers", &c.num_layers}, {"d_model", &c.d_model},
      {"num_heads", &c.num_heads},   {"d_ff", &c.d_ff},
      {"vocab_size", &c.vocab_size}, {"max_seq", &c.max_seq},
  };
  for (const auto& [key, value] : j.items()) {
    bool known = key == "kind";
    for (const auto& [name, dst] : ints) known |= key == name;
    if (!known) {
      return absl::InvalidArgumentError(absl::StrCat("model config: unknown field '", key, "'"));
    }
  }
  auto kind = j.find("kind");
  if (kind == j.end() || !kind->is_string() ||
      (*kind != ModelKindName(ModelKind::kGpt) && *kind != ModelKindName(ModelKind::kBert))) {
    return absl::InvalidArgumentError("model config: 'kind' must be \"gpt\" or \"bert\"");
  }
  c.kind = *kind == ModelKindName(ModelKind::kGpt) ? ModelKind::kGpt : ModelKind::kBert;
  for (const auto& [name, dst] : ints) {
    auto it = j.find(name);
    if (it == j.end() || !it->is_number_integer() || it->get<int64_t>() < INT32_MIN ||
        it->get<int64_t>() > INT32_MAX) {
      return absl::InvalidArgumentError(
          absl::StrCat("model config: '", name, "' missing or not a 32-bit integer"));
    }
    *dst = static_cast<int>(it->get<int64_t>());
  }
  return c;
}

absl::Status SaveCheckpoint(const std::string& run_dir, const ModelConfig& config,
                            const ParamLayout& layout, const float* params, const float* adam_m,
                            const float* adam_v, const TrainState& state) {
  const std::string what = absl::StrCat("save checkpoint step ", state.step, " in ", run_dir);
  if (absl::Status valid = config.Validate(); !valid.ok()) {
    return absl::Status(valid.code(), absl::StrCat(what, ": ", valid.message()));
  }
  RETURN_IF_ERROR(CheckLayout(config, layout, what));
  if (params == nullptr || adam_m == nullptr || adam_v == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": null parameter or moment buffer"));
  }
  if (state.step < 0) return absl::InvalidArgumentError(absl::StrCat(what, ": negative step"));

  const fs::path root = CheckpointsRoot(run_dir);
  std::error_code ec;
  if (!fs::is_directory(root, ec)) {
    // Remember which ancestors are new: each one's entry in its parent must be made durable.
    std::vector<fs::path> created;
    for (fs::path p = root; !p.empty() && !fs::exists(p, ec); p = p.parent_path()) {
      created.push_back(p);
      if (p == p.parent_path()) break;
    }
    fs::create_directories(root, ec);
    if (ec) return FsError("cannot create checkpoint directory", root.string(), ec);
    for (const fs::path& p : created) {
      const fs::path parent = p.has_parent_path() ? p.parent_path() : fs::path(".");
      RETURN_IF_ERROR(SyncDirectory(parent.string()));
    }
  }
  const std::string name = CheckpointDirName(state.step);
  const fs::path final_dir = root / name;
  const fs::path tmp_dir = root / (name + ".tmp");

  const bool final_exists = fs::exists(fs::symlink_status(final_dir, ec));
  if (final_exists) {
    absl::StatusOr<std::string> latest = LatestCheckpoint(run_dir);
    if (latest.ok() && fs::path(*latest) == final_dir) {
      return absl::AlreadyExistsError(
          absl::StrCat(what, ": ", final_dir.string(), " is already the committed latest"));
    }
  }
  fs::remove_all(tmp_dir, ec);  // debris of an interrupted save
  if (ec) return FsError("cannot remove stale", tmp_dir.string(), ec);
  fs::create_directory(tmp_dir, ec);
  if (ec) return FsError("cannot create", tmp_dir.string(), ec);

  absl::Status st =
      WriteCheckpointFiles(tmp_dir.string(), config, layout, params, adam_m, adam_v, state);
  if (st.ok() && final_exists) {
    // Not the committed latest (a crash preceded LATEST's update, or the run resumed from an
    // older step), so nothing relies on it; removed only once its replacement is complete.
    fs::remove_all(final_dir, ec);
    if (ec) st = FsError("cannot remove superseded checkpoint", final_dir.string(), ec);
  }
  if (st.ok()) {
    fs::rename(tmp_dir, final_dir, ec);
    if (ec) {
      st = FsError(absl::StrCat("cannot rename ", tmp_dir.string(), " to"), final_dir.string(), ec);
    }
  }
  if (!st.ok()) {
    std::error_code ignored;
    fs::remove_all(tmp_dir, ignored);
    return st;
  }
  RETURN_IF_ERROR(SyncDirectory(root.string()));
  return WriteFileAtomically((root / kLatestFile).string(), name + "\n");
}

absl::StatusOr<std::string> LatestCheckpoint(const std::string& run_dir) {
  const fs::path root = CheckpointsRoot(run_dir);
  std::string name;
  if (ReadLatest(root, &name) && IsCompleteCheckpoint(root / name)) return (root / name).string();

  std::error_code ec;
  fs::directory_iterator it(root, ec);
  if (ec) {
    return absl::NotFoundError(
        absl::StrCat("no checkpoint in ", root.string(), ": ", ec.message()));
  }
  int64_t best_step = -1;
  std::string best;
  for (; it != fs::directory_iterator(); it.increment(ec)) {
    const std::string entry = it->path().filename().string();
    int64_t step;
    if (ParseStepDirName(entry, &step) && step > best_step && IsCompleteCheckpoint(it->path())) {
      best_step = step;
      best = it->path().string();
    }
  }
  if (ec) return FsError("cannot list", root.string(), ec);
  if (best.empty()) return absl::NotFoundError(absl::StrCat("no checkpoint in ", root.string()));
  return best;
}

absl::Status LoadCheckpoint(const std::string& ckpt_dir, const ModelConfig& expected,
                            const ParamLayout& layout, float* params, float* adam_m, float* adam_v,
                            TrainState* state) {
  RETURN_IF_ERROR(CheckLayout(expected, layout, absl::StrCat("load checkpoint ", ckpt_dir)));
  if (params == nullptr) {
    return absl::InvalidArgumentError(
        absl::StrCat("load checkpoint ", ckpt_dir, ": null parameter buffer"));
  }
  ASSIGN_OR_RETURN(SafetensorsFile state_file,
                   ReadSafetensors((fs::path(ckpt_dir) / kStateFile).string()));
  RETURN_IF_ERROR(CheckFileHeader(state_file, expected));
  ASSIGN_OR_RETURN(TrainState loaded, ParseTrainState(state_file));
  ASSIGN_OR_RETURN(const SafetensorsFile::Entry* m,
                   FindMoment(state_file, "adam.m", layout.total()));
  ASSIGN_OR_RETURN(const SafetensorsFile::Entry* v,
                   FindMoment(state_file, "adam.v", layout.total()));

  ASSIGN_OR_RETURN(SafetensorsFile model_file,
                   ReadSafetensors((fs::path(ckpt_dir) / kModelFile).string()));
  RETURN_IF_ERROR(CheckFileHeader(model_file, expected));
  auto model_step = model_file.metadata().find("step");
  if (model_step == model_file.metadata().end() ||
      model_step->second != absl::StrCat(loaded.step)) {
    return absl::DataLossError(absl::StrCat("checkpoint ", ckpt_dir, ": ", kModelFile, " and ",
                                            kStateFile, " record different steps"));
  }
  // ImportHf validates every tensor before writing, so an error here leaves all outputs as-is.
  RETURN_IF_ERROR(ImportHf(expected, layout, model_file, params));
  if (adam_m != nullptr) std::memcpy(adam_m, m->data, m->nbytes);
  if (adam_v != nullptr) std::memcpy(adam_v, v->data, v->nbytes);
  if (state != nullptr) *state = std::move(loaded);
  return absl::OkStatus();
}

absl::Status LoadWeights(const std::string& safetensors_path, const ModelConfig& config,
                         const ParamLayout& layout, float* params) {
  RETURN_IF_ERROR(CheckLayout(config, layout, absl::StrCat("load weights ", safetensors_path)));
  ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensors(safetensors_path));
  // Only files raptr wrote carry format_version; HF hub files have just {"format": "pt"}.
  if (file.metadata().count("format_version")) RETURN_IF_ERROR(CheckFileHeader(file, config));
  return ImportHf(config, layout, file, params);
}

}  // namespace raptr
