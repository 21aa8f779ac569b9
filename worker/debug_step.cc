// raptr-worker debug-step: one forward/backward from safetensors weights on a given batch and
// active-layer set; writes the loss, logits and every gradient (HF names) for comparison with
// other implementations (tests/parity/run_parity.py does this against PyTorch).
#include <algorithm>
#include <cmath>
#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_split.h"
#include "common/flags.h"
#include "common/status.h"
#include "worker/commands.h"
#include "worker/engine/checkpoint/checkpoint.h"
#include "worker/engine/checkpoint/hf_names.h"
#include "worker/engine/checkpoint/safetensors.h"
#include "worker/engine/cpu/cpu_backend.h"
#include "worker/engine/data/mlm.h"
#include "worker/engine/data/shard.h"
#include "worker/engine/model.h"
#include "worker/model_flags.h"

namespace raptr {
namespace {

// Reads an I32 tensor of shape (B,T) from a batch file.
absl::Status ReadBatchTensor(const SafetensorsFile& file, const std::string& name,
                             std::vector<int32_t>* out, int* B, int* T) {
  const SafetensorsFile::Entry* e = file.Find(name);
  if (e == nullptr) {
    return absl::InvalidArgumentError(absl::StrCat(file.path(), ": no tensor '", name, "'"));
  }
  if (e->dtype != "I32" || e->shape.size() != 2) {
    return absl::InvalidArgumentError(
        absl::StrCat(file.path(), ": tensor '", name, "' must be I32 of shape (B,T)"));
  }
  *B = static_cast<int>(e->shape[0]);
  *T = static_cast<int>(e->shape[1]);
  out->resize(static_cast<size_t>(*B) * *T);
  std::memcpy(out->data(), e->data, out->size() * sizeof(int32_t));
  return absl::OkStatus();
}

absl::Status DebugStep(int argc, char** argv) {
  Flags flags;
  ModelConfig defaults;
  defaults.num_layers = 4;
  defaults.d_model = 64;
  defaults.num_heads = 4;
  defaults.d_ff = 0;
  defaults.vocab_size = 0;
  defaults.max_seq = 0;
  DefineModelFlags(flags, defaults);
  flags.Define("weights", "", "safetensors file with HF-named weights (required)");
  flags.Define("batch", "", "safetensors file with I32 tensors inputs (B,T) and targets (B,T)");
  flags.Define("tokens", "", "or: an llm.c token shard; its first B*T+1 tokens form the batch");
  flags.Define("B", "1", "sequences, with --tokens");
  flags.Define("T", "0", "tokens per sequence, with --tokens (0: max-seq)");
  flags.Define("mask-id", "-1", "with --tokens and --model bert: the [MASK] id for MLM masking");
  flags.Define("seed", "1", "MLM masking seed, with --tokens and --model bert");
  flags.Define("active", "all", "active layers: 'all' or a comma list such as 0,2,3");
  flags.Define("scales", "", "comma list of output scales, one per active layer (default 1)");
  flags.Define("out", "", "output safetensors file (required)");
  flags.Define("help", "false", "print this help");
  RETURN_IF_ERROR(flags.Parse(argc, argv, 2));
  if (flags.Get("help") == "true") {
    std::printf("usage: raptr-worker debug-step [flags]\n%s", flags.Usage().c_str());
    std::exit(0);
  }
  if (flags.Get("weights").empty() || flags.Get("out").empty()) {
    return absl::InvalidArgumentError("--weights and --out are required");
  }
  ASSIGN_OR_RETURN(ModelConfig cfg, ModelConfigFromFlags(flags));
  ASSIGN_OR_RETURN(SafetensorsFile weights, ReadSafetensors(flags.Get("weights")));

  std::vector<int32_t> inputs, targets;
  int B = 0, T = 0;
  bool mask_tokens = false;  // --tokens with BERT: MLM-mask once the vocabulary is known
  if (!flags.Get("batch").empty()) {
    ASSIGN_OR_RETURN(SafetensorsFile batch, ReadSafetensors(flags.Get("batch")));
    int B2 = 0, T2 = 0;
    RETURN_IF_ERROR(ReadBatchTensor(batch, "inputs", &inputs, &B, &T));
    RETURN_IF_ERROR(ReadBatchTensor(batch, "targets", &targets, &B2, &T2));
    if (B != B2 || T != T2) {
      return absl::InvalidArgumentError(
          absl::StrCat(flags.Get("batch"), ": inputs and targets differ in shape"));
    }
  } else if (!flags.Get("tokens").empty()) {
    ASSIGN_OR_RETURN(std::vector<uint16_t> tokens, ReadShard(flags.Get("tokens")));
    ASSIGN_OR_RETURN(int64_t b, flags.GetInt("B"));
    ASSIGN_OR_RETURN(int64_t t, flags.GetInt("T"));
    B = static_cast<int>(b);
    T = static_cast<int>(t == 0 ? cfg.max_seq : t);
    const size_t need = static_cast<size_t>(B) * T + 1;
    if (B <= 0 || T <= 0 || tokens.size() < need) {
      return absl::InvalidArgumentError(
          absl::StrCat(flags.Get("tokens"), " holds ", tokens.size(), " tokens, need ", need));
    }
    for (size_t i = 0; i + 1 < need; ++i) {
      inputs.push_back(tokens[i]);
      targets.push_back(tokens[i + 1]);
    }
    mask_tokens = cfg.kind == ModelKind::kBert;
  } else {
    return absl::InvalidArgumentError("give the batch with --batch or --tokens");
  }
  // Shapes left at 0 come from the weights.
  if (cfg.vocab_size == 0 || cfg.max_seq == 0) {
    const char* wte =
        cfg.kind == ModelKind::kGpt ? "wte.weight" : "bert.embeddings.word_embeddings.weight";
    const char* wpe =
        cfg.kind == ModelKind::kGpt ? "wpe.weight" : "bert.embeddings.position_embeddings.weight";
    const auto* e = weights.Find(wte);
    const auto* p = weights.Find(wpe);
    if (e == nullptr || p == nullptr || e->shape.size() != 2 || p->shape.size() != 2) {
      return absl::InvalidArgumentError(
          absl::StrCat(flags.Get("weights"), ": no embedding tensors ", wte, " / ", wpe));
    }
    if (cfg.vocab_size == 0) cfg.vocab_size = static_cast<int>(e->shape[0]);
    if (cfg.max_seq == 0) cfg.max_seq = static_cast<int>(p->shape[0]);
  }
  RETURN_IF_ERROR(cfg.Validate());
  if (mask_tokens) {
    ASSIGN_OR_RETURN(int64_t mask_id, flags.GetInt("mask-id"));
    ASSIGN_OR_RETURN(int64_t seed, flags.GetInt("seed"));
    const MlmOptions mlm{cfg.vocab_size, static_cast<int>(mask_id), 0.15};
    RETURN_IF_ERROR(ValidateMlmOptions(mlm));
    ApplyMlmMask(mlm, static_cast<uint64_t>(seed), 0, 0, B, T, inputs.data(), targets.data());
  }

  ActiveLayerSet active;
  RETURN_IF_ERROR(ActiveLayerSet::Parse(flags.Get("active"), cfg.num_layers, &active));
  if (!flags.Get("scales").empty()) {
    const std::vector<int> layers = active.ActiveLayers();
    std::vector<std::string> items = absl::StrSplit(flags.Get("scales"), ',');
    if (items.size() != layers.size()) {
      return absl::InvalidArgumentError(absl::StrCat("--scales has ", items.size(), " values for ",
                                                     layers.size(), " active layers"));
    }
    for (size_t i = 0; i < items.size(); ++i) {
      float s = 0;
      if (!absl::SimpleAtof(items[i], &s) || !(s > 0)) {
        return absl::InvalidArgumentError(absl::StrCat("--scales: bad scale '", items[i], "'"));
      }
      active.set_scale(layers[i], s);
    }
  }

  CpuBackend<float> backend;
  Model<float> model(cfg, &backend);
  // The weights reach the model through the backend, as they would on a device.
  std::vector<float> host_params(model.layout().total());
  RETURN_IF_ERROR(ImportHf(cfg, model.layout(), weights, host_params.data()));
  Upload<float>(backend, host_params.data(), model.params());
  // Logits first (forward only keeps them), then the training pass for the gradients.
  ASSIGN_OR_RETURN(double loss, model.Forward(inputs.data(), targets.data(), B, T, active, false));
  const std::vector<float> logits = model.LogitsToHost();
  model.ZeroGrads();
  ASSIGN_OR_RETURN(double loss2, model.Forward(inputs.data(), targets.data(), B, T, active, true));
  if (model.last_num_targets() == 0) {
    return absl::InvalidArgumentError("the batch has no scored position (every target is -1)");
  }
  RETURN_IF_ERROR(model.Backward(1.0f / static_cast<float>(model.last_num_targets())));
  // The training pass once more, with the gradients of the first kept: the same bits.
  std::vector<float> first_grads = Download<float>(backend, model.grads());
  model.ZeroGrads();
  ASSIGN_OR_RETURN(double loss3, model.Forward(inputs.data(), targets.data(), B, T, active, true));
  RETURN_IF_ERROR(model.Backward(1.0f / static_cast<float>(model.last_num_targets())));
  if (loss3 != loss2 || Download<float>(backend, model.grads()) != first_grads) {
    return absl::InternalError("training is not deterministic: two passes gave different results");
  }
  // The same pass twice gives the same bits. BERT's training pass runs its head on the masked
  // rows only (Model::Forward), a smaller product whose float rounding may differ from the
  // evaluation pass's in the last bits: held to a few float roundings instead.
  const double tolerance =
      cfg.kind == ModelKind::kBert ? 1e-5 * std::max(1.0, std::abs(loss)) : 0.0;
  if (!(std::abs(loss - loss2) <= tolerance)) {
    return absl::InternalError(absl::StrCat(
        "forward is not deterministic: two passes gave different losses (", loss, ", ", loss2, ")"));
  }

  std::vector<OwnedTensor> grads =
      ExportHf(cfg, model.layout(), Download<float>(backend, model.grads()).data());
  for (auto& g : grads) g.name = "grad." + g.name;
  const float loss_f = static_cast<float>(loss);
  std::vector<TensorView> views = AsTensorViews(grads);
  views.push_back(TensorView{"loss", "F32", {1}, &loss_f});
  views.push_back(TensorView{"logits", "F32", {B, T, cfg.vocab_size}, logits.data()});
  RETURN_IF_ERROR(WriteSafetensors(
      flags.Get("out"), views, {{"active", active.DebugString()}, {"config", cfg.DebugString()}}));
  std::fprintf(stderr, "debug-step: loss %.6f over %lld targets, active %s -> %s\n", loss,
               static_cast<long long>(model.last_num_targets()), active.DebugString().c_str(),
               flags.Get("out").c_str());
  return absl::OkStatus();
}

}  // namespace

int RunDebugStep(int argc, char** argv) {
  absl::Status s = DebugStep(argc, argv);
  if (!s.ok()) {
    std::fprintf(stderr, "raptr-worker debug-step: %s\n", std::string(s.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace raptr
