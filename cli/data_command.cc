// `raptrctl data prepare`: tokenizes a text corpus into llm.c shards (see data_command.h).
#include "cli/data_command.h"

#include <cstdio>
#include <string>
#include <vector>

#include "absl/strings/str_split.h"
#include "common/flags.h"
#include "worker/engine/data/prepare.h"

namespace raptr::cli {
namespace {

constexpr char kPrepareUsage[] =
    "usage: raptrctl data prepare --input PATH[,PATH...] --out DIR [flags]\n"
    "Trains a BPE tokenizer on the .txt documents under PATH and writes DIR/tokenizer.model,\n"
    "DIR/train.bin, DIR/val.bin (llm.c token shards) and DIR/meta.json.\n\nflags:\n";

}  // namespace

int RunDataPrepare(int argc, char** argv, int first) {
  Flags flags;
  flags.Define("input", "", "text files or directories of .txt files, comma-separated");
  flags.Define("out", "", "output directory (created if missing)");
  flags.Define("vocab-size", "8192", "tokenizer vocabulary size (at most 65535)");
  flags.Define("val-fraction", "0.05", "share of documents held out for validation, in [0, 1)");
  flags.Define("seed", "1", "seed choosing the validation documents");
  flags.Define("help", "false", "print this help");

  auto usage_error = [&](const std::string& msg) {
    std::fprintf(stderr, "raptrctl data prepare: %s\n\n%s%s", msg.c_str(), kPrepareUsage,
                 flags.Usage().c_str());
    return 2;
  };
  if (absl::Status st = flags.Parse(argc, argv, first); !st.ok()) {
    return usage_error(std::string(st.message()));
  }
  if (flags.Get("help") == "true") {
    std::printf("%s%s", kPrepareUsage, flags.Usage().c_str());
    return 0;
  }
  if (!flags.positional().empty()) {
    return usage_error("unexpected argument '" + flags.positional().front() + "'");
  }
  PrepareOptions opts;
  for (const auto& part : absl::StrSplit(flags.Get("input"), ',', absl::SkipEmpty())) {
    opts.inputs.emplace_back(part);
  }
  if (opts.inputs.empty()) return usage_error("--input is required");
  opts.out_dir = flags.Get("out");
  if (opts.out_dir.empty()) return usage_error("--out is required");

  absl::StatusOr<int64_t> vocab = flags.GetInt("vocab-size");
  if (!vocab.ok()) return usage_error(std::string(vocab.status().message()));
  absl::StatusOr<double> val_fraction = flags.GetDouble("val-fraction");
  if (!val_fraction.ok()) return usage_error(std::string(val_fraction.status().message()));
  absl::StatusOr<int64_t> seed = flags.GetInt("seed");
  if (!seed.ok()) return usage_error(std::string(seed.status().message()));
  if (*vocab < 1 || *vocab > 65535) {
    return usage_error("--vocab-size must be in [1, 65535], got " + flags.Get("vocab-size"));
  }
  if (*seed < 0) return usage_error("--seed must be non-negative, got " + flags.Get("seed"));
  opts.vocab_size = static_cast<int>(*vocab);
  opts.val_fraction = *val_fraction;
  opts.seed = static_cast<uint64_t>(*seed);

  if (absl::Status st = PrepareCorpus(opts); !st.ok()) {
    std::fprintf(stderr, "raptrctl data prepare: %s\n", std::string(st.message()).c_str());
    return 1;
  }
  return 0;
}

}  // namespace raptr::cli
