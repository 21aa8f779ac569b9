// Tokenizer: a SentencePiece BPE model with a [MASK] control piece and byte fallback.
#pragma once

#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace sentencepiece {
class SentencePieceProcessor;
}  // namespace sentencepiece

namespace raptr {

class Tokenizer {
 public:
  // The control piece that masked-LM training substitutes for selected tokens. Being a control
  // symbol, text never encodes to it (a literal "[MASK]" in a document stays ordinary text).
  static constexpr std::string_view kMaskPiece = "[MASK]";
  // Token shards hold uint16 ids, so a vocabulary may have at most this many pieces.
  static constexpr int kMaxVocabSize = 65535;

  // Trains a BPE model on the UTF-8 text files (each a document; lines are sentences, long lines
  // are cut at spaces) and writes `model_prefix`.model and `model_prefix`.vocab. The result is a
  // pure function of the files' contents, their order and `vocab_size`: training is single
  // threaded with a fixed sampling seed. Identity normalization plus byte fallback make every
  // valid UTF-8 string round-trip through Encode/Decode.
  static absl::Status Train(const std::vector<std::string>& text_files,
                            const std::string& model_prefix, int vocab_size);

  // Loads a model written by Train (or any SentencePiece model that has a [MASK] piece, an eos
  // piece and at most kMaxVocabSize pieces).
  static absl::StatusOr<Tokenizer> Load(const std::string& model_path);

  Tokenizer(Tokenizer&&) noexcept;
  Tokenizer& operator=(Tokenizer&&) noexcept;
  ~Tokenizer();

  std::vector<uint16_t> Encode(std::string_view text) const;
  // Ids outside [0, vocab_size()) decode as the unknown piece; control ids decode to nothing.
  std::string Decode(const std::vector<uint16_t>& ids) const;

  int vocab_size() const { return vocab_size_; }
  int mask_id() const { return mask_id_; }
  int eos_id() const { return eos_id_; }
  int unk_id() const { return unk_id_; }
  // The one token placed before every document when documents are concatenated into a stream
  // (llm.c's <|endoftext|> convention). It is SentencePiece's eos piece.
  int separator_id() const { return eos_id_; }

 private:
  Tokenizer();

  std::unique_ptr<sentencepiece::SentencePieceProcessor> sp_;
  int vocab_size_ = 0;
  int mask_id_ = -1;
  int eos_id_ = -1;
  int unk_id_ = -1;
};

}  // namespace raptr
