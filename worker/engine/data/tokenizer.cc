// SentencePiece-backed tokenizer training, loading, encoding and decoding (see tokenizer.h).
#include "worker/engine/data/tokenizer.h"

#include <fstream>
#include <sstream>
#include <unordered_map>
#include <utility>

#include "absl/strings/str_cat.h"

// Debian's SentencePiece headers declare `namespace absl { using std::string_view; }`, which
// collides with Abseil's own absl::string_view class (this Abseil build does not alias it to
// std::string_view). Renaming that namespace while including them avoids the clash; their API
// still takes std::string_view, so calls and linked symbols are unchanged.
#define absl raptr_sentencepiece_absl
#include <sentencepiece_processor.h>
#include <sentencepiece_trainer.h>
#undef absl

namespace raptr {
namespace {

// SentencePiece skips sentences longer than its max_sentence_length; long lines (a whole
// address is often one line) are cut into chunks of at most this many bytes instead.
constexpr size_t kMaxChunkBytes = 4096;
// Fixed seed for SentencePiece's sentence sampling, so a re-run trains the same model.
constexpr unsigned int kTrainSeed = 20240520;
// Beyond this many sentences SentencePiece samples (with the seed above) instead of using all.
constexpr int kMaxTrainSentences = 4'000'000;

absl::Status FromSpm(const sentencepiece::util::Status& st, const std::string& context) {
  if (st.ok()) return absl::OkStatus();
  return absl::Status(static_cast<absl::StatusCode>(st.code()),
                      absl::StrCat(context, ": ", st.error_message()));
}

absl::StatusOr<std::string> ReadFile(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("cannot open text file ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("cannot read text file ", path));
  return std::move(ss).str();
}

// Feeds the training files to SentencePiece as sentences: one per line, long lines cut at the
// last space before kMaxChunkBytes (or at a UTF-8 character boundary when there is none).
class ChunkIterator : public sentencepiece::SentenceIterator {
 public:
  explicit ChunkIterator(const std::vector<std::string>& files) : files_(files) { Next(); }

  bool done() const override { return done_; }
  const std::string& value() const override { return value_; }
  sentencepiece::util::Status status() const override { return status_; }

  void Next() override {
    while (true) {
      if (pos_ < text_.size()) {
        if (NextChunk()) return;
        continue;
      }
      if (file_index_ >= files_.size()) {
        done_ = true;
        return;
      }
      const std::string& path = files_[file_index_++];
      absl::StatusOr<std::string> text = ReadFile(path);
      if (!text.ok()) {
        status_ = sentencepiece::util::Status(sentencepiece::util::StatusCode::kNotFound,
                                              std::string(text.status().message()));
        done_ = true;
        return;
      }
      text_ = std::move(*text);
      pos_ = 0;
    }
  }

 private:
  // Sets value_ to the next non-empty chunk of text_ at pos_; false if only blank lines remained.
  bool NextChunk() {
    while (pos_ < text_.size()) {
      size_t eol = text_.find('\n', pos_);
      if (eol == std::string::npos) eol = text_.size();
      size_t end = eol;
      if (end - pos_ > kMaxChunkBytes) {
        end = pos_ + kMaxChunkBytes;
        size_t space = text_.rfind(' ', end);
        if (space != std::string::npos && space > pos_) {
          end = space;
        } else {
          // No space: back up to the start of a UTF-8 character (not a continuation byte).
          while (end > pos_ + 1 && (static_cast<unsigned char>(text_[end]) & 0xC0) == 0x80) --end;
        }
      }
      std::string chunk = text_.substr(pos_, end - pos_);
      // Cut at a space: the next chunk starts after it. At a newline: after the newline.
      pos_ = end < text_.size() && (text_[end] == '\n' || text_[end] == ' ') ? end + 1 : end;
      if (!chunk.empty() && chunk.back() == '\r') chunk.pop_back();
      if (!chunk.empty()) {
        value_ = std::move(chunk);
        return true;
      }
    }
    return false;
  }

  const std::vector<std::string>& files_;
  size_t file_index_ = 0;
  std::string text_;
  size_t pos_ = 0;
  std::string value_;
  bool done_ = false;
  sentencepiece::util::Status status_;
};

}  // namespace

Tokenizer::Tokenizer() : sp_(std::make_unique<sentencepiece::SentencePieceProcessor>()) {}
Tokenizer::Tokenizer(Tokenizer&&) noexcept = default;
Tokenizer& Tokenizer::operator=(Tokenizer&&) noexcept = default;
Tokenizer::~Tokenizer() = default;

absl::Status Tokenizer::Train(const std::vector<std::string>& text_files,
                              const std::string& model_prefix, int vocab_size) {
  if (text_files.empty()) {
    return absl::InvalidArgumentError("tokenizer training needs at least one text file");
  }
  if (vocab_size <= 0 || vocab_size > kMaxVocabSize) {
    return absl::InvalidArgumentError(absl::StrCat("vocab_size ", vocab_size,
                                                   " is out of range: expected 1..", kMaxVocabSize,
                                                   " so token ids fit uint16 shards"));
  }
  // Fail on an unreadable file before SentencePiece's long setup, with the path in the message.
  for (const std::string& path : text_files) {
    std::ifstream in(path, std::ios::binary);
    if (!in) return absl::NotFoundError(absl::StrCat("cannot open text file ", path));
  }
  const std::unordered_map<std::string, std::string> args = {
      {"model_prefix", model_prefix},
      {"model_type", "bpe"},
      {"vocab_size", absl::StrCat(vocab_size)},
      // Identity normalization and kept whitespace: decoding returns the input text exactly
      // (NFKC and whitespace folding would not round-trip).
      {"normalization_rule_name", "identity"},
      {"remove_extra_whitespaces", "false"},
      // Characters outside the learned alphabet become their UTF-8 bytes instead of <unk>.
      {"byte_fallback", "true"},
      {"character_coverage", "0.9995"},
      {"unk_id", "0"},
      {"bos_id", "1"},
      {"eos_id", "2"},
      {"pad_id", "-1"},
      {"control_symbols", std::string(kMaskPiece)},
      {"max_sentence_length", absl::StrCat(2 * kMaxChunkBytes)},
      {"input_sentence_size", absl::StrCat(kMaxTrainSentences)},
      {"shuffle_input_sentence", "true"},
      // One thread: no dependence on how work is split across threads.
      {"num_threads", "1"},
      // Keep SentencePiece's per-iteration INFO chatter out of our progress output.
      {"minloglevel", "1"},
  };
  sentencepiece::SetRandomGeneratorSeed(kTrainSeed);
  ChunkIterator it(text_files);
  return FromSpm(sentencepiece::SentencePieceTrainer::Train(args, &it),
                 absl::StrCat("training tokenizer ", model_prefix, ".model"));
}

absl::StatusOr<Tokenizer> Tokenizer::Load(const std::string& model_path) {
  Tokenizer tok;
  absl::Status st =
      FromSpm(tok.sp_->Load(model_path), absl::StrCat("loading tokenizer ", model_path));
  if (!st.ok()) return st;
  tok.vocab_size_ = tok.sp_->GetPieceSize();
  if (tok.vocab_size_ > kMaxVocabSize) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer ", model_path, " has ",
                                                   tok.vocab_size_, " pieces: expected at most ",
                                                   kMaxVocabSize, " so ids fit uint16 shards"));
  }
  tok.unk_id_ = tok.sp_->unk_id();
  tok.eos_id_ = tok.sp_->eos_id();
  if (tok.eos_id_ < 0) {
    return absl::InvalidArgumentError(
        absl::StrCat("tokenizer ", model_path, " has no eos piece (the document separator)"));
  }
  tok.mask_id_ = tok.sp_->PieceToId(kMaskPiece);
  // PieceToId answers unk for an absent piece. Train makes [MASK] a control piece; a
  // user-defined one (from another trainer) works for masking too, so either is accepted.
  if (tok.mask_id_ == tok.unk_id_) {
    return absl::InvalidArgumentError(absl::StrCat("tokenizer ", model_path, " has no ",
                                                   std::string(kMaskPiece),
                                                   " piece (needed for masked LM)"));
  }
  return tok;
}

std::vector<uint16_t> Tokenizer::Encode(std::string_view text) const {
  std::vector<int> ids;
  // SentencePiece fails here only for an unloaded model, which Load rules out.
  sentencepiece::util::Status st = sp_->Encode(text, &ids);
  (void)st;
  return std::vector<uint16_t>(ids.begin(), ids.end());
}

std::string Tokenizer::Decode(const std::vector<uint16_t>& ids) const {
  std::vector<int> in;
  in.reserve(ids.size());
  for (uint16_t id : ids) in.push_back(id < vocab_size_ ? id : unk_id_);
  std::string out;
  sentencepiece::util::Status st = sp_->Decode(in, &out);
  (void)st;
  return out;
}

}  // namespace raptr
