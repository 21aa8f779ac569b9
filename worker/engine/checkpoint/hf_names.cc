// Flat layout <-> Hugging Face tensor names for GPT-2 and BERT (see hf_names.h).
#include "worker/engine/checkpoint/hf_names.h"

#include <cstring>
#include <set>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_join.h"
#include "common/status.h"

namespace raptr {
namespace {

// One HF tensor: a contiguous run of the flat buffer, or the transpose of one of our matrices.
struct HfSpec {
  std::string name;
  std::vector<int64_t> shape;  // as HF stores it
  size_t offset = 0;           // of the first element in the flat buffer
  // HF holds ours^T: our matrix is (shape[1], shape[0]) at `offset`.
  bool transpose = false;

  size_t numel() const {
    size_t n = 1;
    for (int64_t d : shape) n *= static_cast<size_t>(d);
    return n;
  }
};

std::vector<HfSpec> GptSpecs(const ModelConfig& cfg, const ParamLayout& layout) {
  const int64_t C = cfg.d_model, F = cfg.d_ff, V = cfg.vocab_size, P = cfg.max_seq;
  std::vector<HfSpec> s;
  s.push_back({"wte.weight", {V, C}, layout.wte(), false});
  s.push_back({"wpe.weight", {P, C}, layout.wpe(), false});
  for (int l = 0; l < cfg.num_layers; ++l) {
    const std::string p = absl::StrCat("h.", l, ".");
    auto at = [&](BlockTensor t) { return layout.block(l, t); };
    s.push_back({p + "ln_1.weight", {C}, at(kLn1W), false});
    s.push_back({p + "ln_1.bias", {C}, at(kLn1B), false});
    s.push_back({p + "attn.c_attn.weight", {C, 3 * C}, at(kQkvW), true});
    s.push_back({p + "attn.c_attn.bias", {3 * C}, at(kQkvB), false});
    s.push_back({p + "attn.c_proj.weight", {C, C}, at(kAttnProjW), true});
    s.push_back({p + "attn.c_proj.bias", {C}, at(kAttnProjB), false});
    s.push_back({p + "ln_2.weight", {C}, at(kLn2W), false});
    s.push_back({p + "ln_2.bias", {C}, at(kLn2B), false});
    s.push_back({p + "mlp.c_fc.weight", {C, F}, at(kFcW), true});
    s.push_back({p + "mlp.c_fc.bias", {F}, at(kFcB), false});
    s.push_back({p + "mlp.c_proj.weight", {F, C}, at(kFcProjW), true});
    s.push_back({p + "mlp.c_proj.bias", {C}, at(kFcProjB), false});
  }
  s.push_back({"ln_f.weight", {C}, layout.lnf_w(), false});
  s.push_back({"ln_f.bias", {C}, layout.lnf_b(), false});
  return s;
}

std::vector<HfSpec> BertSpecs(const ModelConfig& cfg, const ParamLayout& layout) {
  const int64_t C = cfg.d_model, F = cfg.d_ff, V = cfg.vocab_size, P = cfg.max_seq;
  const size_t CC = static_cast<size_t>(C * C), Cs = static_cast<size_t>(C);
  std::vector<HfSpec> s;
  s.push_back({"bert.embeddings.word_embeddings.weight", {V, C}, layout.wte(), false});
  s.push_back({"bert.embeddings.position_embeddings.weight", {P, C}, layout.wpe(), false});
  for (int l = 0; l < cfg.num_layers; ++l) {
    const std::string p = absl::StrCat("bert.encoder.layer.", l, ".");
    auto at = [&](BlockTensor t) { return layout.block(l, t); };
    const char* qkv[3] = {"query", "key", "value"};
    for (size_t i = 0; i < 3; ++i) {
      const std::string q = absl::StrCat(p, "attention.self.", qkv[i]);
      s.push_back({q + ".weight", {C, C}, at(kQkvW) + i * CC, false});
      s.push_back({q + ".bias", {C}, at(kQkvB) + i * Cs, false});
    }
    s.push_back({p + "attention.output.dense.weight", {C, C}, at(kAttnProjW), false});
    s.push_back({p + "attention.output.dense.bias", {C}, at(kAttnProjB), false});
    s.push_back({p + "attention.output.LayerNorm.weight", {C}, at(kLn1W), false});
    s.push_back({p + "attention.output.LayerNorm.bias", {C}, at(kLn1B), false});
    s.push_back({p + "intermediate.dense.weight", {F, C}, at(kFcW), false});
    s.push_back({p + "intermediate.dense.bias", {F}, at(kFcB), false});
    s.push_back({p + "output.dense.weight", {C, F}, at(kFcProjW), false});
    s.push_back({p + "output.dense.bias", {C}, at(kFcProjB), false});
    s.push_back({p + "output.LayerNorm.weight", {C}, at(kLn2W), false});
    s.push_back({p + "output.LayerNorm.bias", {C}, at(kLn2B), false});
  }
  s.push_back({"cls.predictions.transform.LayerNorm.weight", {C}, layout.lnf_w(), false});
  s.push_back({"cls.predictions.transform.LayerNorm.bias", {C}, layout.lnf_b(), false});
  return s;
}

std::vector<HfSpec> Specs(const ModelConfig& cfg, const ParamLayout& layout) {
  return cfg.kind == ModelKind::kGpt ? GptSpecs(cfg, layout) : BertSpecs(cfg, layout);
}

std::string ShapeStr(const std::vector<int64_t>& shape) {
  return absl::StrCat("[", absl::StrJoin(shape, ", "), "]");
}

// Copies an F32 entry's bytes into `out` (memcpy: entries need not be 4-byte aligned).
void CopyOut(const SafetensorsFile::Entry& e, float* out) {
  if (e.nbytes > 0) std::memcpy(out, e.data, e.nbytes);
}

bool AllZero(const SafetensorsFile::Entry& e) {
  for (size_t i = 0; i < e.nbytes; i += sizeof(float)) {
    float x;
    std::memcpy(&x, e.data + i, sizeof(x));
    if (x != 0.0f) return false;
  }
  return true;
}

// Checks one tensor the file may carry beyond ours; OK if harmless, else says why not.
absl::Status CheckExtra(const ModelConfig& cfg, const SafetensorsFile& file,
                        const SafetensorsFile::Entry& e, const SafetensorsFile::Entry& embedding,
                        const std::set<std::string>& buffers) {
  if (buffers.count(e.name)) return absl::OkStatus();  // constant buffers, not parameters
  const bool gpt = cfg.kind == ModelKind::kGpt;
  const std::string head = gpt ? "lm_head.weight" : "cls.predictions.decoder.weight";
  if (e.name == head) {
    if (e.dtype == "F32" && e.shape == embedding.shape && e.nbytes == embedding.nbytes &&
        std::memcmp(e.data, embedding.data, e.nbytes) == 0) {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(
        absl::StrCat("HF import from ", file.path(), ": output head '", e.name,
                     "' differs from the token embedding '", embedding.name,
                     "'; raptr ties them and cannot load an untied head"));
  }
  if (!gpt && (e.name == "cls.predictions.bias" || e.name == "cls.predictions.decoder.bias")) {
    if (e.dtype == "F32" && e.shape == std::vector<int64_t>{cfg.vocab_size} && AllZero(e)) {
      return absl::OkStatus();
    }
    return absl::InvalidArgumentError(absl::StrCat(
        "HF import from ", file.path(), ": tensor '", e.name, "' is not an all-zero F32 [",
        cfg.vocab_size, "]; raptr's MLM head has no output bias"));
  }
  return absl::InvalidArgumentError(
      absl::StrCat("HF import from ", file.path(), ": unexpected tensor '", e.name, "' ", e.dtype,
                   " ", ShapeStr(e.shape), ", not part of a raptr ", cfg.DebugString(), " model"));
}

}  // namespace

std::vector<OwnedTensor> ExportHf(const ModelConfig& config, const ParamLayout& layout,
                                  const float* flat) {
  std::vector<OwnedTensor> out;
  for (const HfSpec& s : Specs(config, layout)) {
    OwnedTensor t;
    t.name = s.name;
    t.shape = s.shape;
    t.data.resize(s.numel());
    const float* src = flat + s.offset;
    if (s.transpose) {
      // HF (K, R) from our (R, K): out[k][r] = src[r][k].
      const size_t K = static_cast<size_t>(s.shape[0]), R = static_cast<size_t>(s.shape[1]);
      for (size_t r = 0; r < R; ++r) {
        for (size_t k = 0; k < K; ++k) t.data[k * R + r] = src[r * K + k];
      }
    } else {
      std::memcpy(t.data.data(), src, t.data.size() * sizeof(float));
    }
    out.push_back(std::move(t));
  }
  return out;
}

std::vector<TensorView> AsTensorViews(const std::vector<OwnedTensor>& tensors) {
  std::vector<TensorView> views;
  views.reserve(tensors.size());
  for (const OwnedTensor& t : tensors) views.push_back({t.name, "F32", t.shape, t.data.data()});
  return views;
}

absl::Status ImportHf(const ModelConfig& config, const ParamLayout& layout,
                      const SafetensorsFile& file, float* flat) {
  const std::string where = absl::StrCat("HF import from ", file.path(), ": ");
  if (ParamLayout(config).total() != layout.total()) {
    return absl::InvalidArgumentError(absl::StrCat(where, "parameter layout of ", layout.total(),
                                                   " floats does not belong to model ",
                                                   config.DebugString()));
  }
  const bool gpt = config.kind == ModelKind::kGpt;
  // GPT2LMHeadModel.save_pretrained nests the body under "transformer."; the hub file does not.
  std::string prefix;
  if (gpt && file.Find("wte.weight") == nullptr && file.Find("transformer.wte.weight") != nullptr) {
    prefix = "transformer.";
  }

  const std::vector<HfSpec> specs = Specs(config, layout);
  std::vector<const SafetensorsFile::Entry*> entries;
  std::set<std::string> expected;
  for (const HfSpec& s : specs) {
    const std::string name = prefix + s.name;
    const SafetensorsFile::Entry* e = file.Find(name);
    if (e == nullptr) {
      return absl::NotFoundError(absl::StrCat(where, "missing tensor '", name, "' (expected F32 ",
                                              ShapeStr(s.shape), ")"));
    }
    if (e->dtype != "F32") {
      return absl::InvalidArgumentError(
          absl::StrCat(where, "tensor '", name, "' has dtype ", e->dtype, ", expected F32"));
    }
    if (e->shape != s.shape) {
      return absl::InvalidArgumentError(absl::StrCat(where, "tensor '", name, "' has shape ",
                                                     ShapeStr(e->shape), ", expected ",
                                                     ShapeStr(s.shape)));
    }
    entries.push_back(e);
    expected.insert(name);
  }

  std::set<std::string> buffers;
  if (gpt) {
    for (int l = 0; l < config.num_layers; ++l) {
      buffers.insert(absl::StrCat(prefix, "h.", l, ".attn.bias"));
      buffers.insert(absl::StrCat(prefix, "h.", l, ".attn.masked_bias"));
    }
  } else {
    buffers.insert("bert.embeddings.position_ids");
  }
  for (const std::string& name : file.names()) {
    if (expected.count(name)) continue;
    RETURN_IF_ERROR(CheckExtra(config, file, *file.Find(name), *entries[0], buffers));
  }

  for (size_t i = 0; i < specs.size(); ++i) {
    const HfSpec& s = specs[i];
    const SafetensorsFile::Entry& e = *entries[i];
    float* dst = flat + s.offset;
    if (!s.transpose) {
      CopyOut(e, dst);
      continue;
    }
    // Our (R, K) from HF (K, R): dst[r][k] = hf[k][r]. Read row by row to stay memcpy-safe.
    const size_t K = static_cast<size_t>(s.shape[0]), R = static_cast<size_t>(s.shape[1]);
    std::vector<float> row(R);
    for (size_t k = 0; k < K; ++k) {
      std::memcpy(row.data(), e.data + k * R * sizeof(float), R * sizeof(float));
      for (size_t r = 0; r < R; ++r) dst[r * K + k] = row[r];
    }
  }
  return absl::OkStatus();
}

}  // namespace raptr
