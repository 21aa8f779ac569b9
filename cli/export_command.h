// `raptrctl export`: a checkpoint as files another framework loads.
#pragma once

#include <string>

#include "absl/status/status.h"

namespace raptr::cli {

// Writes OUT/config.json and OUT/model.safetensors that Hugging Face transformers'
// GPT2LMHeadModel loads unchanged (from_pretrained(OUT)), from a raptr checkpoint directory
// (step_N/, holding model.safetensors under HF GPT-2 names; worker/engine/checkpoint). When
// `tokenizer` names a readable tokenizer.model, it is copied beside them. BERT checkpoints are
// refused: raptr's BERT is pre-LN and transformers' BertForMaskedLM post-LN, so no HF config
// computes it (the checkpoint's own model.safetensors carries BertForMaskedLM names for
// inspection). OUT is created; existing files there are an error, never overwritten.
absl::Status ExportHf(const std::string& checkpoint_dir, const std::string& out_dir,
                      const std::string& tokenizer);

}  // namespace raptr::cli
