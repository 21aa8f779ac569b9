// Corpus preparation pipeline (see prepare.h).
#include "worker/engine/data/prepare.h"

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <set>
#include <sstream>
#include <system_error>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "common/file_io.h"
#include "common/status.h"
#include "worker/engine/data/data_loader.h"
#include "worker/engine/data/shard.h"
#include "worker/engine/data/tokenizer.h"

namespace raptr {
namespace {

namespace fs = std::filesystem;

// Passed to PermuteIndex as its "epoch" so the split's permutation is a stream of its own,
// unrelated to the training-order permutations of any epoch.
constexpr uint64_t kSplitDomain = 0x73706C69742D7631ULL;  // "split-v1"

struct Document {
  std::string path;
  bool val = false;
  int64_t bytes = 0;
  int64_t tokens = 0;
};

class Progress {
 public:
  Progress() : start_(std::chrono::steady_clock::now()) {}
  template <typename... Args>
  void Log(const absl::FormatSpec<Args...>& fmt, const Args&... args) {
    const double secs =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    absl::FPrintF(stderr, "[prepare %6.1fs] %s\n", secs, absl::StrFormat(fmt, args...));
  }

 private:
  std::chrono::steady_clock::time_point start_;
};

absl::Status ValidateOptions(const PrepareOptions& opts) {
  if (opts.inputs.empty()) return absl::InvalidArgumentError("prepare: no inputs given");
  if (opts.out_dir.empty()) return absl::InvalidArgumentError("prepare: out_dir is empty");
  if (opts.vocab_size <= 0 || opts.vocab_size > Tokenizer::kMaxVocabSize) {
    return absl::InvalidArgumentError(absl::StrCat("prepare: vocab_size ", opts.vocab_size,
                                                   " is outside [1, ", Tokenizer::kMaxVocabSize,
                                                   "]"));
  }
  if (!(opts.val_fraction >= 0.0 && opts.val_fraction < 1.0)) {
    return absl::InvalidArgumentError(
        absl::StrCat("prepare: val_fraction ", opts.val_fraction, " is outside [0, 1)"));
  }
  return absl::OkStatus();
}

// All documents named by the inputs, sorted by path so the output does not depend on directory
// listing order.
absl::StatusOr<std::vector<Document>> CollectDocuments(const std::vector<std::string>& inputs) {
  std::set<std::string> paths;
  for (const std::string& input : inputs) {
    std::error_code ec;
    const fs::file_status st = fs::status(input, ec);
    if (ec || !fs::exists(st)) {
      return absl::NotFoundError(absl::StrCat("prepare: input ", input, " does not exist"));
    }
    if (fs::is_regular_file(st)) {
      paths.insert(input);
      continue;
    }
    if (!fs::is_directory(st)) {
      return absl::InvalidArgumentError(
          absl::StrCat("prepare: input ", input, " is neither a file nor a directory"));
    }
    fs::recursive_directory_iterator it(input, ec), end;
    for (; !ec && it != end; it.increment(ec)) {
      if (it->is_regular_file(ec) && it->path().extension() == ".txt") {
        paths.insert(it->path().string());
      }
    }
    if (ec) {
      return absl::InternalError(
          absl::StrCat("prepare: cannot list directory ", input, ": ", ec.message()));
    }
  }
  std::vector<Document> docs;
  for (const std::string& path : paths) {
    std::error_code ec;
    const auto size = fs::file_size(path, ec);
    if (ec) {
      return absl::InternalError(absl::StrCat("prepare: cannot stat ", path, ": ", ec.message()));
    }
    docs.push_back(Document{path, false, static_cast<int64_t>(size), 0});
  }
  if (docs.empty()) {
    std::string names;
    for (const std::string& input : inputs)
      absl::StrAppend(&names, names.empty() ? "" : ", ", input);
    return absl::NotFoundError(absl::StrCat("prepare: no .txt documents found in ", names));
  }
  return docs;
}

// Holds out round(val_fraction * n) documents (at least one when the fraction is positive and
// there are two or more documents; never all of them), chosen by a seeded permutation.
int64_t MarkValidation(std::vector<Document>& docs, double val_fraction, uint64_t seed) {
  const int64_t n = static_cast<int64_t>(docs.size());
  int64_t n_val = std::llround(val_fraction * static_cast<double>(n));
  if (val_fraction > 0.0 && n_val == 0 && n >= 2) n_val = 1;
  n_val = std::min(n_val, n - 1);
  for (int64_t i = 0; i < n_val; ++i) {
    docs[PermuteIndex(seed, kSplitDomain, static_cast<uint64_t>(n), static_cast<uint64_t>(i))].val =
        true;
  }
  return n_val;
}

absl::StatusOr<std::string> ReadText(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) return absl::NotFoundError(absl::StrCat("prepare: cannot open ", path));
  std::ostringstream ss;
  ss << in.rdbuf();
  if (in.bad()) return absl::DataLossError(absl::StrCat("prepare: cannot read ", path));
  return std::move(ss).str();
}

std::string JsonString(const std::string& s) {
  std::string out = "\"";
  for (unsigned char c : s) {
    switch (c) {
      case '"':
        out += "\\\"";
        break;
      case '\\':
        out += "\\\\";
        break;
      case '\n':
        out += "\\n";
        break;
      case '\t':
        out += "\\t";
        break;
      case '\r':
        out += "\\r";
        break;
      default:
        if (c < 0x20) {
          out += absl::StrFormat("\\u%04x", c);
        } else {
          out += static_cast<char>(c);
        }
    }
  }
  return out + "\"";
}

std::string MetaJson(const PrepareOptions& opts, const Tokenizer& tok,
                     const std::vector<Document>& docs, int64_t train_tokens, int64_t val_tokens) {
  int64_t n_val = std::count_if(docs.begin(), docs.end(), [](const Document& d) { return d.val; });
  std::string j = "{\n";
  absl::StrAppend(&j, "  \"format\": \"llm.c token shards: 256 x int32 header (magic ", kShardMagic,
                  ", version ", kShardVersion, ", count), uint16 tokens\",\n");
  absl::StrAppend(&j, "  \"tokenizer\": \"tokenizer.model\",\n");
  absl::StrAppend(&j, "  \"vocab_size\": ", tok.vocab_size(), ",\n");
  absl::StrAppend(&j, "  \"mask_id\": ", tok.mask_id(), ",\n");
  absl::StrAppend(&j, "  \"eos_id\": ", tok.eos_id(), ",\n");
  absl::StrAppend(&j, "  \"separator_id\": ", tok.separator_id(), ",\n");
  absl::StrAppend(&j, "  \"unk_id\": ", tok.unk_id(), ",\n");
  absl::StrAppend(&j, "  \"seed\": ", opts.seed, ",\n");
  absl::StrAppend(&j, "  \"val_fraction\": ", opts.val_fraction, ",\n");
  absl::StrAppend(&j, "  \"train\": {\"file\": \"train.bin\", \"tokens\": ", train_tokens,
                  ", \"documents\": ", static_cast<int64_t>(docs.size()) - n_val, "},\n");
  absl::StrAppend(&j, "  \"val\": {\"file\": \"val.bin\", \"tokens\": ", val_tokens,
                  ", \"documents\": ", n_val, "},\n");
  absl::StrAppend(&j, "  \"sources\": [\n");
  for (size_t i = 0; i < docs.size(); ++i) {
    const Document& d = docs[i];
    absl::StrAppend(&j, "    {\"path\": ", JsonString(d.path), ", \"split\": \"",
                    d.val ? "val" : "train", "\", \"bytes\": ", d.bytes, ", \"tokens\": ", d.tokens,
                    "}", i + 1 < docs.size() ? "," : "", "\n");
  }
  absl::StrAppend(&j, "  ]\n}\n");
  return j;
}

}  // namespace

absl::Status PrepareCorpus(const PrepareOptions& opts) {
  RETURN_IF_ERROR(ValidateOptions(opts));
  Progress progress;
  ASSIGN_OR_RETURN(std::vector<Document> docs, CollectDocuments(opts.inputs));
  const int64_t n_val = MarkValidation(docs, opts.val_fraction, opts.seed);
  int64_t total_bytes = 0;
  std::vector<std::string> train_files;
  for (const Document& d : docs) {
    total_bytes += d.bytes;
    if (!d.val) train_files.push_back(d.path);
  }
  progress.Log("%d documents (%.1f MB): %d train, %d val (seed %d)", docs.size(), total_bytes / 1e6,
               train_files.size(), n_val, opts.seed);

  std::error_code ec;
  fs::create_directories(opts.out_dir, ec);
  if (ec) {
    return absl::InternalError(
        absl::StrCat("prepare: cannot create ", opts.out_dir, ": ", ec.message()));
  }
  const std::string prefix = (fs::path(opts.out_dir) / "tokenizer").string();
  progress.Log("training BPE tokenizer, vocab %d, on the %d train documents", opts.vocab_size,
               train_files.size());
  RETURN_IF_ERROR(Tokenizer::Train(train_files, prefix, opts.vocab_size));
  ASSIGN_OR_RETURN(Tokenizer tok, Tokenizer::Load(prefix + ".model"));
  progress.Log("wrote %s.model (%d pieces, mask id %d, separator id %d)", prefix, tok.vocab_size(),
               tok.mask_id(), tok.separator_id());

  std::vector<uint16_t> train, val;
  const size_t report_every = std::max<size_t>(1, docs.size() / 10);
  for (size_t i = 0; i < docs.size(); ++i) {
    Document& d = docs[i];
    ASSIGN_OR_RETURN(std::string text, ReadText(d.path));
    const std::vector<uint16_t> ids = tok.Encode(text);
    d.tokens = static_cast<int64_t>(ids.size());
    std::vector<uint16_t>& out = d.val ? val : train;
    out.push_back(static_cast<uint16_t>(tok.separator_id()));
    out.insert(out.end(), ids.begin(), ids.end());
    if ((i + 1) % report_every == 0 || i + 1 == docs.size()) {
      progress.Log("encoded %d/%d documents: %d train + %d val tokens", i + 1, docs.size(),
                   train.size(), val.size());
    }
  }

  const std::string train_path = (fs::path(opts.out_dir) / "train.bin").string();
  const std::string val_path = (fs::path(opts.out_dir) / "val.bin").string();
  RETURN_IF_ERROR(WriteShard(train_path, train));
  RETURN_IF_ERROR(WriteShard(val_path, val));
  RETURN_IF_ERROR(WriteFileAtomically((fs::path(opts.out_dir) / "meta.json").string(),
                                      MetaJson(opts, tok, docs, static_cast<int64_t>(train.size()),
                                               static_cast<int64_t>(val.size()))));
  progress.Log("wrote %s (%d tokens), %s (%d tokens), meta.json; %.2f bytes/token", train_path,
               train.size(), val_path, val.size(),
               static_cast<double>(total_bytes) /
                   static_cast<double>(std::max<size_t>(1, train.size() + val.size())));
  return absl::OkStatus();
}

}  // namespace raptr
