// Corpus preparation: text documents -> tokenizer model + llm.c train/val token shards.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace raptr {

struct PrepareOptions {
  // Text files, or directories searched recursively for *.txt; each file is one document.
  std::vector<std::string> inputs;
  std::string out_dir;  // created if missing
  int vocab_size = 8192;
  double val_fraction = 0.05;  // share of documents held out, in [0, 1)
  uint64_t seed = 1;           // picks which documents are held out
};

// Writes into out_dir:
//   tokenizer.model/.vocab  SentencePiece BPE trained on the training documents only, so the
//                           validation split stays unseen;
//   train.bin, val.bin      llm.c shards: every document as <separator> + its tokens, documents
//                           in file-path order;
//   meta.json               vocab size, special ids, token and document counts, source files.
// The output is a pure function of the documents' paths and contents and of the options.
// Progress lines go to stderr.
absl::Status PrepareCorpus(const PrepareOptions& opts);

}  // namespace raptr
