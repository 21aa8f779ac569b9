// `raptrctl export` (see export_command.h).
#include "cli/export_command.h"

#include <sys/stat.h>

#include <cerrno>
#include <cstring>
#include <fstream>
#include <sstream>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_io.h"
#include "common/status.h"
#include "worker/engine/checkpoint/safetensors.h"
#include "worker/engine/checkpoint/checkpoint.h"
#include "worker/engine/config.h"

namespace raptr::cli {
namespace {

bool Exists(const std::string& path) {
  struct stat st;
  return ::stat(path.c_str(), &st) == 0;
}

absl::Status CopyFile(const std::string& from, const std::string& to) {
  std::ifstream in(from, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot read ", from, ": ", std::strerror(errno)));
  std::ofstream out(to, std::ios::binary | std::ios::trunc);
  if (!out) return absl::InternalError(absl::StrCat("cannot write ", to, ": ", std::strerror(errno)));
  out << in.rdbuf();
  out.flush();
  if (!out) return absl::InternalError(absl::StrCat("writing ", to, " failed"));
  return absl::OkStatus();
}

// GPT2Config for our GPT: pre-LN blocks, learned positions, GELU (tanh approximation: HF's
// "gelu_new"), LayerNorm eps 1e-5, the head tied to wte, no dropout (raptr trains without it).
std::string Gpt2Config(const ModelConfig& c) {
  return absl::StrFormat(
      "{\n"
      "  \"architectures\": [\"GPT2LMHeadModel\"],\n"
      "  \"model_type\": \"gpt2\",\n"
      "  \"vocab_size\": %d,\n"
      "  \"n_positions\": %d,\n"
      "  \"n_ctx\": %d,\n"
      "  \"n_embd\": %d,\n"
      "  \"n_layer\": %d,\n"
      "  \"n_head\": %d,\n"
      "  \"n_inner\": %d,\n"
      "  \"activation_function\": \"gelu_new\",\n"
      "  \"layer_norm_epsilon\": 1e-05,\n"
      "  \"tie_word_embeddings\": true,\n"
      "  \"scale_attn_weights\": true,\n"
      "  \"scale_attn_by_inverse_layer_idx\": false,\n"
      "  \"reorder_and_upcast_attn\": false,\n"
      "  \"resid_pdrop\": 0.0,\n"
      "  \"embd_pdrop\": 0.0,\n"
      "  \"attn_pdrop\": 0.0,\n"
      "  \"torch_dtype\": \"float32\"\n"
      "}\n",
      c.vocab_size, c.max_seq, c.max_seq, c.d_model, c.num_layers, c.num_heads, c.d_ff);
}

}  // namespace

absl::Status ExportHf(const std::string& checkpoint_dir, const std::string& out_dir,
                      const std::string& tokenizer) {
  const std::string weights = checkpoint_dir + "/model.safetensors";
  ASSIGN_OR_RETURN(SafetensorsFile file, ReadSafetensors(weights));
  auto config_json = file.metadata().find("config");
  if (config_json == file.metadata().end()) {
    return absl::InvalidArgumentError(
        absl::StrCat(weights, " has no \"config\" metadata: not a raptr checkpoint"));
  }
  ASSIGN_OR_RETURN(ModelConfig config, ModelConfigFromJson(config_json->second));
  if (config.kind == ModelKind::kBert) {
    return absl::FailedPreconditionError(
        "--format hf: this is a BERT checkpoint; raptr's BERT is pre-LN (LayerNorm before each "
        "sublayer) while transformers' BertForMaskedLM is post-LN, so no Hugging Face config "
        "computes this model. Its model.safetensors uses BertForMaskedLM tensor names (the "
        "LayerNorms under the nearest HF LayerNorm's name) for inspection, not for inference");
  }
  for (const char* name : {"/config.json", "/model.safetensors"}) {
    if (Exists(out_dir + name)) {
      return absl::AlreadyExistsError(absl::StrCat(out_dir, name, " exists: not overwritten"));
    }
  }
  if (::mkdir(out_dir.c_str(), 0755) != 0 && errno != EEXIST) {
    return absl::InternalError(absl::StrCat("cannot create ", out_dir, ": ", std::strerror(errno)));
  }
  // The checkpoint's file already is HF GPT-2's layout (names, Conv1D transposes, no lm_head:
  // transformers ties it to wte); its metadata (format "pt", raptr's config, step) is harmless.
  RETURN_IF_ERROR(CopyFile(weights, out_dir + "/model.safetensors"));
  RETURN_IF_ERROR(WriteFileAtomically(out_dir + "/config.json", Gpt2Config(config)));
  if (!tokenizer.empty() && Exists(tokenizer)) {
    RETURN_IF_ERROR(CopyFile(tokenizer, out_dir + "/tokenizer.model"));
  }
  return absl::OkStatus();
}

}  // namespace raptr::cli
