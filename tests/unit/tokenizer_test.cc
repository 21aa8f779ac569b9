// Tests for the SentencePiece tokenizer: round trips, special ids, determinism and errors.
#include "worker/engine/data/tokenizer.h"

#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"
#include "worker/engine/data/prepare.h"
#include "worker/engine/data/shard.h"

namespace raptr {
namespace {

namespace fs = std::filesystem;

constexpr int kVocab = 400;

std::string ReadAll(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  std::ostringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

// A few kilobytes of varied English made from a fixed word list, with one long line (longer than
// the trainer's chunk size) so the line-splitting path is exercised too.
std::string CorpusText(int variant) {
  static const char* kWords[] = {
      "the",     "union",   "state",    "congress", "people", "nation", "of",      "and",
      "to",      "in",      "we",       "must",     "our",    "great",  "economy", "peace",
      "freedom", "america", "citizens", "progress", "work",   "jobs",   "future",  "world",
      "strong",  "year",    "govern",   "ment",     "tax",    "trade",  "1776",    "2024!"};
  constexpr int kNumWords = sizeof(kWords) / sizeof(kWords[0]);
  std::string text;
  uint64_t x = 12345 + static_cast<uint64_t>(variant);
  for (int line = 0; line < 60; ++line) {
    const int words = line == 7 ? 1200 : 40;
    for (int w = 0; w < words; ++w) {
      x = x * 6364136223846793005ULL + 1442695040888963407ULL;
      text += kWords[(x >> 33) % kNumWords];
      text += (w % 9 == 8) ? ". " : " ";
    }
    text += "\n";
  }
  return text;
}

class TokenizerTest : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ =
        new fs::path(fs::path(::testing::TempDir()) / absl::StrCat("tokenizer_test_", ::getpid()));
    fs::remove_all(*dir_);
    fs::create_directories(*dir_);
    for (int i = 0; i < 3; ++i) {
      const std::string path = (*dir_ / absl::StrCat("doc", i, ".txt")).string();
      std::ofstream(path) << CorpusText(i);
      files_->push_back(path);
    }
    train_status_ = new absl::Status(Tokenizer::Train(*files_, Prefix("a"), kVocab));
  }
  static void TearDownTestSuite() {
    fs::remove_all(*dir_);
    delete dir_;
    delete train_status_;
  }
  static std::string Prefix(const std::string& name) { return (*dir_ / name).string(); }

  static Tokenizer LoadOrFail(const std::string& prefix) {
    absl::StatusOr<Tokenizer> tok = Tokenizer::Load(prefix + ".model");
    EXPECT_TRUE(tok.ok()) << tok.status();
    return std::move(tok).value();
  }

  static fs::path* dir_;
  static std::vector<std::string>* files_;
  static absl::Status* train_status_;
};

fs::path* TokenizerTest::dir_ = nullptr;
std::vector<std::string>* TokenizerTest::files_ = new std::vector<std::string>();
absl::Status* TokenizerTest::train_status_ = nullptr;

TEST_F(TokenizerTest, TrainsAndLoads) {
  ASSERT_TRUE(train_status_->ok()) << *train_status_;
  Tokenizer tok = LoadOrFail(Prefix("a"));
  EXPECT_EQ(tok.vocab_size(), kVocab);
}

TEST_F(TokenizerTest, SpecialIds) {
  ASSERT_TRUE(train_status_->ok()) << *train_status_;
  Tokenizer tok = LoadOrFail(Prefix("a"));
  EXPECT_GE(tok.mask_id(), 0);
  EXPECT_LT(tok.mask_id(), tok.vocab_size());
  EXPECT_GE(tok.eos_id(), 0);
  EXPECT_LT(tok.eos_id(), tok.vocab_size());
  EXPECT_NE(tok.mask_id(), tok.eos_id());
  EXPECT_NE(tok.mask_id(), tok.unk_id());
  EXPECT_EQ(tok.separator_id(), tok.eos_id());
  // Text spelling the mask piece is ordinary text: it never produces the mask or eos id.
  for (uint16_t id : tok.Encode("a [MASK] b </s>")) {
    EXPECT_NE(id, tok.mask_id());
    EXPECT_NE(id, tok.eos_id());
  }
  // Control ids decode to nothing.
  EXPECT_EQ(tok.Decode({static_cast<uint16_t>(tok.mask_id())}), "");
}

TEST_F(TokenizerTest, RoundTrip) {
  ASSERT_TRUE(train_status_->ok()) << *train_status_;
  Tokenizer tok = LoadOrFail(Prefix("a"));
  const std::vector<std::string> texts = {
      "the state of the union is strong",
      "Fellow-Citizens of the Senate: we must work.",
      "  leading and trailing spaces  ",
      "tabs\tand\nnew lines\r\nand   runs of spaces",
      "non-ASCII: naïve café, Größe, “quotes” — 日本語, Ελληνικά, emoji 🙂",
      "ZZZ qqq unseen WORDS 0123456789 ~!@#$%^&*()",
      "",
  };
  for (const std::string& text : texts) {
    std::vector<uint16_t> ids = tok.Encode(text);
    for (uint16_t id : ids) {
      EXPECT_LT(id, tok.vocab_size());
      EXPECT_NE(id, tok.unk_id()) << "byte fallback should avoid <unk> in: " << text;
    }
    EXPECT_EQ(tok.Decode(ids), text);
  }
  // Common words compress below one token per byte.
  const std::string common = "the state of the union and the people of the nation";
  EXPECT_LT(tok.Encode(common).size(), common.size() / 2);
}

TEST_F(TokenizerTest, DeterministicTraining) {
  ASSERT_TRUE(train_status_->ok()) << *train_status_;
  ASSERT_TRUE(Tokenizer::Train(*files_, Prefix("b"), kVocab).ok());
  EXPECT_EQ(ReadAll(Prefix("a") + ".vocab"), ReadAll(Prefix("b") + ".vocab"));
  Tokenizer a = LoadOrFail(Prefix("a"));
  Tokenizer b = LoadOrFail(Prefix("b"));
  const std::string text = CorpusText(99) + " and some café text";
  EXPECT_EQ(a.Encode(text), b.Encode(text));
}

TEST_F(TokenizerTest, OutOfRangeIdsDecodeWithoutCrashing) {
  ASSERT_TRUE(train_status_->ok()) << *train_status_;
  Tokenizer tok = LoadOrFail(Prefix("a"));
  std::vector<uint16_t> ids = tok.Encode("the union");
  ids.push_back(65000);
  EXPECT_NE(tok.Decode(ids).find("the union"), std::string::npos);
}

TEST_F(TokenizerTest, MoveKeepsModel) {
  ASSERT_TRUE(train_status_->ok()) << *train_status_;
  Tokenizer a = LoadOrFail(Prefix("a"));
  const std::vector<uint16_t> ids = a.Encode("the great nation");
  Tokenizer b = std::move(a);
  EXPECT_EQ(b.Encode("the great nation"), ids);
}

TEST_F(TokenizerTest, LoadMissingModelNamesPath) {
  const std::string path = Prefix("missing") + ".model";
  absl::StatusOr<Tokenizer> tok = Tokenizer::Load(path);
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find(path), std::string::npos) << tok.status();
}

TEST_F(TokenizerTest, LoadGarbageFails) {
  const std::string path = Prefix("garbage") + ".model";
  std::ofstream(path) << "this is not a model";
  absl::StatusOr<Tokenizer> tok = Tokenizer::Load(path);
  ASSERT_FALSE(tok.ok());
  EXPECT_NE(tok.status().message().find(path), std::string::npos) << tok.status();
}

TEST_F(TokenizerTest, TrainRejectsBadArguments) {
  absl::Status st = Tokenizer::Train({Prefix("nope.txt")}, Prefix("c"), kVocab);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("nope.txt"), std::string::npos) << st;

  st = Tokenizer::Train(*files_, Prefix("c"), 70000);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("70000"), std::string::npos) << st;

  EXPECT_FALSE(Tokenizer::Train({}, Prefix("c"), kVocab).ok());
}

TEST_F(TokenizerTest, InvalidUtf8DoesNotCrash) {
  ASSERT_TRUE(train_status_->ok()) << *train_status_;
  Tokenizer tok = LoadOrFail(Prefix("a"));
  const std::string bad = "ok \xff\xfe \xc3 end";
  const std::vector<uint16_t> ids = tok.Encode(bad);
  EXPECT_FALSE(ids.empty());
  EXPECT_NE(tok.Decode(ids).find("end"), std::string::npos);
}

// PrepareCorpus end to end on a small corpus: shards hold every document once behind a
// separator, decode back to the sources, and a second run is byte-identical.
TEST_F(TokenizerTest, PrepareCorpusWritesShardsAndMeta) {
  const fs::path corpus = *dir_ / "corpus";
  fs::create_directories(corpus / "nested");
  std::vector<std::string> texts;
  for (int i = 0; i < 8; ++i) {
    // absl::StrCat, not operator+: GCC 12 at -O3 warns falsely (-Wrestrict) on "lit" + string.
    texts.push_back(absl::StrCat(CorpusText(10 + i), "doc ", i, " ends, café.\n"));
    const fs::path file = (i % 2 ? corpus / "nested" : corpus) / absl::StrCat("d", i, ".txt");
    std::ofstream(file) << texts.back();
  }
  std::ofstream(corpus / "ignored.md") << "not a .txt file";

  PrepareOptions opts;
  opts.inputs = {corpus.string()};
  opts.out_dir = (*dir_ / "prep1").string();
  opts.vocab_size = kVocab;
  opts.val_fraction = 0.25;
  opts.seed = 3;
  absl::Status st = PrepareCorpus(opts);
  ASSERT_TRUE(st.ok()) << st;

  Tokenizer tok = LoadOrFail(opts.out_dir + "/tokenizer");
  absl::StatusOr<std::vector<uint16_t>> train = ReadShard(opts.out_dir + "/train.bin");
  absl::StatusOr<std::vector<uint16_t>> val = ReadShard(opts.out_dir + "/val.bin");
  ASSERT_TRUE(train.ok()) << train.status();
  ASSERT_TRUE(val.ok()) << val.status();
  // Split each stream at separators; every source document appears exactly once.
  std::vector<std::string> decoded;
  for (const std::vector<uint16_t>* stream : {&*train, &*val}) {
    ASSERT_FALSE(stream->empty());
    ASSERT_EQ((*stream)[0], tok.separator_id());
    std::vector<uint16_t> doc;
    for (size_t i = 1; i <= stream->size(); ++i) {
      if (i == stream->size() || (*stream)[i] == tok.separator_id()) {
        decoded.push_back(tok.Decode(doc));
        doc.clear();
      } else {
        doc.push_back((*stream)[i]);
      }
    }
  }
  ASSERT_EQ(decoded.size(), texts.size());
  std::vector<std::string> want = texts, got = decoded;
  std::sort(want.begin(), want.end());
  std::sort(got.begin(), got.end());
  EXPECT_EQ(got, want);
  // round(0.25 * 8) = 2 documents held out.
  EXPECT_EQ(std::count(val->begin(), val->end(), tok.separator_id()), 2);
  const std::string meta = ReadAll(opts.out_dir + "/meta.json");
  EXPECT_NE(meta.find("\"vocab_size\": 400"), std::string::npos) << meta;
  EXPECT_NE(meta.find(absl::StrCat("\"tokens\": ", val->size())), std::string::npos) << meta;
  EXPECT_EQ(meta.find("ignored.md"), std::string::npos) << meta;

  PrepareOptions again = opts;
  again.out_dir = (*dir_ / "prep2").string();
  ASSERT_TRUE(PrepareCorpus(again).ok());
  for (const char* name : {"/train.bin", "/val.bin", "/tokenizer.vocab", "/meta.json"}) {
    EXPECT_EQ(ReadAll(opts.out_dir + name), ReadAll(again.out_dir + name)) << name;
  }
}

TEST_F(TokenizerTest, PrepareCorpusRejectsBadOptions) {
  PrepareOptions opts;
  opts.out_dir = (*dir_ / "prep_bad").string();
  opts.vocab_size = kVocab;
  opts.inputs = {(*dir_ / "no_such_dir").string()};
  absl::Status st = PrepareCorpus(opts);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("no_such_dir"), std::string::npos) << st;

  const fs::path empty = *dir_ / "empty_dir";
  fs::create_directories(empty);
  opts.inputs = {empty.string()};
  st = PrepareCorpus(opts);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("empty_dir"), std::string::npos) << st;

  opts.inputs = *files_;
  opts.val_fraction = 1.0;
  st = PrepareCorpus(opts);
  ASSERT_FALSE(st.ok());
  EXPECT_NE(st.message().find("val_fraction"), std::string::npos) << st;
}

}  // namespace
}  // namespace raptr
