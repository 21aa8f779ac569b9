// Tests for safetensors reading/writing: round trips, atomicity, and rejection of corrupt files.
#include "worker/engine/checkpoint/safetensors.h"

#include <stdlib.h>

#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gtest/gtest.h"

namespace raptr {
namespace {

namespace fs = std::filesystem;

// Whether a status message contains `needle` (plain gtest: the test binary has no gmock).
::testing::AssertionResult MessageHas(const absl::Status& st, const std::string& needle) {
  if (std::string(st.message()).find(needle) != std::string::npos) {
    return ::testing::AssertionSuccess();
  }
  return ::testing::AssertionFailure() << "status \"" << st << "\" lacks \"" << needle << "\"";
}

class SafetensorsTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "safetensors_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }

  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // Writes raw bytes: an 8-byte length (header.size() unless overridden), header, data.
  std::string WriteRaw(const std::string& name, const std::string& header, const std::string& data,
                       std::optional<uint64_t> length_override = std::nullopt) {
    const std::string path = Path(name);
    std::ofstream out(path, std::ios::binary);
    const uint64_t n = length_override.value_or(header.size());
    out.write(reinterpret_cast<const char*>(&n), sizeof(n));
    out << header << data;
    return path;
  }

  static std::string ReadBytes(const std::string& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
  }

  // Expects reading `path` to fail with a message naming the file and containing `needle`.
  static void ExpectError(const std::string& path, const std::string& needle) {
    absl::StatusOr<SafetensorsFile> f = ReadSafetensors(path);
    ASSERT_FALSE(f.ok()) << "expected an error mentioning: " << needle;
    EXPECT_TRUE(MessageHas(f.status(), path));
    EXPECT_TRUE(MessageHas(f.status(), needle));
  }

  std::string dir_;
};

TEST_F(SafetensorsTest, RoundTripsEveryDtype) {
  const std::vector<std::string> dtypes = {"BOOL", "U8",  "I8",  "F8_E5M2", "F8_E4M3",
                                           "I16",  "U16", "F16", "BF16",    "I32",
                                           "U32",  "F32", "I64", "U64",     "F64"};
  std::vector<std::vector<uint8_t>> storage;
  std::vector<TensorView> views;
  for (size_t i = 0; i < dtypes.size(); ++i) {
    const size_t dsize = SafetensorsDtypeSize(dtypes[i]);
    ASSERT_GT(dsize, 0u) << dtypes[i];
    std::vector<uint8_t> bytes(2 * 3 * dsize);
    for (size_t b = 0; b < bytes.size(); ++b) bytes[b] = static_cast<uint8_t>(i * 31 + b * 7 + 1);
    storage.push_back(std::move(bytes));
  }
  for (size_t i = 0; i < dtypes.size(); ++i) {
    views.push_back({"t." + dtypes[i], dtypes[i], {2, 3}, storage[i].data()});
  }
  const double scalar = -1.25e300;
  const int64_t empty_dummy = 0;
  views.push_back({"scalar", "F64", {}, &scalar});
  views.push_back({"empty", "F32", {0, 4}, &empty_dummy});
  const std::string path = Path("all.safetensors");
  ASSERT_TRUE(WriteSafetensors(path, views, {{"format", "pt"}, {"note", "héllo"}}).ok());

  absl::StatusOr<SafetensorsFile> f = ReadSafetensors(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->size(), views.size());
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_EQ(f->metadata().at("note"), "héllo");
  for (size_t i = 0; i < dtypes.size(); ++i) {
    const SafetensorsFile::Entry* e = f->Find("t." + dtypes[i]);
    ASSERT_NE(e, nullptr) << dtypes[i];
    EXPECT_EQ(e->dtype, dtypes[i]);
    EXPECT_EQ(e->shape, (std::vector<int64_t>{2, 3}));
    EXPECT_EQ(e->numel(), 6);
    ASSERT_EQ(e->nbytes, storage[i].size());
    EXPECT_EQ(std::memcmp(e->data, storage[i].data(), e->nbytes), 0) << dtypes[i];
  }
  const SafetensorsFile::Entry* s = f->Find("scalar");
  ASSERT_NE(s, nullptr);
  EXPECT_TRUE(s->shape.empty());
  double back;
  std::memcpy(&back, s->data, sizeof(back));
  EXPECT_EQ(back, scalar);
  const SafetensorsFile::Entry* e = f->Find("empty");
  ASSERT_NE(e, nullptr);
  EXPECT_EQ(e->nbytes, 0u);
  EXPECT_EQ(f->Find("missing"), nullptr);
  EXPECT_EQ(f->names().size(), views.size());
}

TEST_F(SafetensorsTest, TypedValuesSurvive) {
  const std::vector<float> f32 = {1.5f, -0.0f, 3.4e38f, 1e-45f};
  const std::vector<double> f64 = {3.141592653589793, -2.5e-310};
  const std::vector<int32_t> i32 = {-7, 2147483647};
  const std::vector<int64_t> i64 = {-9223372036854775807LL - 1, 42};
  const std::vector<uint8_t> u8 = {0, 255, 128};
  const std::string path = Path("typed.safetensors");
  ASSERT_TRUE(WriteSafetensors(path,
                               {{"f32", "F32", {2, 2}, f32.data()},
                                {"f64", "F64", {2}, f64.data()},
                                {"i32", "I32", {2}, i32.data()},
                                {"i64", "I64", {1, 2}, i64.data()},
                                {"u8", "U8", {3}, u8.data()}},
                               {})
                  .ok());
  absl::StatusOr<SafetensorsFile> f = ReadSafetensors(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_TRUE(f->metadata().empty());
  auto same = [&](const char* name, const void* want, size_t bytes) {
    const SafetensorsFile::Entry* e = f->Find(name);
    ASSERT_NE(e, nullptr) << name;
    ASSERT_EQ(e->nbytes, bytes) << name;
    EXPECT_EQ(std::memcmp(e->data, want, bytes), 0) << name;
  };
  same("f32", f32.data(), 16);
  same("f64", f64.data(), 16);
  same("i32", i32.data(), 8);
  same("i64", i64.data(), 16);
  same("u8", u8.data(), 3);
}

TEST_F(SafetensorsTest, HeaderIsPaddedToEightBytesAndDataIsContiguous) {
  const std::vector<float> a = {1, 2, 3};
  const std::vector<uint8_t> b = {9};
  const std::vector<double> c = {4};
  const std::string path = Path("pad.safetensors");
  ASSERT_TRUE(
      WriteSafetensors(
          path,
          {{"a", "F32", {3}, a.data()}, {"b", "U8", {1}, b.data()}, {"c", "F64", {1}, c.data()}},
          {{"k", "v"}})
          .ok());
  const std::string bytes = ReadBytes(path);
  uint64_t n;
  std::memcpy(&n, bytes.data(), 8);
  EXPECT_EQ(n % 8, 0u);
  EXPECT_EQ(bytes.size(), 8 + n + 12 + 1 + 8);  // tensors back to back, no holes
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST_F(SafetensorsTest, OverwriteReplacesAtomically) {
  const std::string path = Path("x.safetensors");
  const float one = 1, two = 2;
  ASSERT_TRUE(WriteSafetensors(path, {{"v", "F32", {1}, &one}}, {}).ok());
  ASSERT_TRUE(WriteSafetensors(path, {{"w", "F32", {1}, &two}}, {}).ok());
  absl::StatusOr<SafetensorsFile> f = ReadSafetensors(path);
  ASSERT_TRUE(f.ok()) << f.status();
  EXPECT_EQ(f->Find("v"), nullptr);
  ASSERT_NE(f->Find("w"), nullptr);
  EXPECT_FALSE(fs::exists(path + ".tmp"));
}

TEST_F(SafetensorsTest, WriterRejectsBadTensors) {
  const std::string path = Path("bad.safetensors");
  const float x[4] = {};
  struct Case {
    std::vector<TensorView> tensors;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {{{"a", "F33", {1}, x}}, "unknown dtype"},
      {{{"a", "F32", {1}, x}, {"a", "F32", {1}, x}}, "duplicate"},
      {{{"neg", "F32", {-1}, x}}, "invalid shape"},
      {{{"__metadata__", "F32", {1}, x}}, "reserved"},
      {{{"null", "F32", {2}, nullptr}}, "null"},
      {{{"bad\xff", "F32", {1}, x}}, "UTF-8"},
  };
  for (const Case& c : cases) {
    absl::Status st = WriteSafetensors(path, c.tensors, {});
    ASSERT_FALSE(st.ok()) << c.needle;
    EXPECT_TRUE(MessageHas(st, c.needle));
    EXPECT_TRUE(MessageHas(st, c.tensors.back().name.substr(0, 3)));
    EXPECT_FALSE(fs::exists(path));
  }
  EXPECT_FALSE(WriteSafetensors(Path("no/such/dir/f.safetensors"), {}, {}).ok());
}

TEST_F(SafetensorsTest, MissingFileIsNotFound) {
  absl::StatusOr<SafetensorsFile> f = ReadSafetensors(Path("nope.safetensors"));
  EXPECT_EQ(f.status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(ReadSafetensors(dir_).ok());  // a directory
}

TEST_F(SafetensorsTest, RejectsTruncatedAndOversizedHeaders) {
  {
    const std::string path = Path("short");
    std::ofstream(path, std::ios::binary) << "abc";
    ExpectError(path, "shorter than the 8-byte header length");
  }
  {
    const std::string path = Path("empty");
    std::ofstream(path, std::ios::binary).flush();
    ExpectError(path, "shorter");
  }
  ExpectError(WriteRaw("toolong", "{}", "", 1000), "header length field exceeds the 2 bytes");
  ExpectError(WriteRaw("absurd", "{}", "", uint64_t{1} << 40), "limit");
  ExpectError(WriteRaw("huge", "{}", "", ~uint64_t{1}), "limit");
  ExpectError(WriteRaw("zero", "", ""), "header");
}

TEST_F(SafetensorsTest, RejectsMalformedJson) {
  ExpectError(WriteRaw("badjson", "{\"a\": {\"dtype\": ", ""), "header");
  ExpectError(WriteRaw("trailing", "{} x", ""), "header");
  ExpectError(WriteRaw("array", "[1, 2]", ""), "not a JSON object");
  ExpectError(WriteRaw("deep", std::string(200000, '[') + std::string(200000, ']'), ""),
              "nested deeper");
  ExpectError(
      WriteRaw("deepobj", "{\"a\":" + std::string(100, '[') + std::string(100, ']') + "}", ""),
      "nested deeper");
  ExpectError(WriteRaw("badmeta", R"({"__metadata__": {"k": 1}})", ""), "'k' is not a string");
  ExpectError(WriteRaw("badmeta2", R"({"__metadata__": [1]})", ""), "__metadata__");
}

TEST_F(SafetensorsTest, RejectsBadTensorEntries) {
  const std::string data(16, '\0');
  struct Case {
    const char* name;
    std::string header;
    std::string needle;
  };
  const std::vector<Case> cases = {
      {"notobj", R"({"t": 5})", "not a JSON object"},
      {"nodtype", R"({"t": {"shape": [4], "data_offsets": [0, 16]}})", "missing 'dtype'"},
      {"noshape", R"({"t": {"dtype": "F32", "data_offsets": [0, 16]}})", "missing 'shape'"},
      {"nooffsets", R"({"t": {"dtype": "F32", "shape": [4]}})", "missing 'data_offsets'"},
      {"dtypenum", R"({"t": {"dtype": 4, "shape": [4], "data_offsets": [0, 16]}})",
       "'dtype' is not a string"},
      {"unknowndtype", R"({"t": {"dtype": "F128", "shape": [1], "data_offsets": [0, 16]}})",
       "unknown dtype 'F128'"},
      {"negdim", R"({"t": {"dtype": "F32", "shape": [-4], "data_offsets": [0, 16]}})",
       "negative dimension -4"},
      {"floatdim", R"({"t": {"dtype": "F32", "shape": [4.0], "data_offsets": [0, 16]}})",
       "non-integer"},
      {"shapeobj", R"({"t": {"dtype": "F32", "shape": {}, "data_offsets": [0, 16]}})",
       "'shape' is not an array"},
      {"out_of_range", R"({"t": {"dtype": "F32", "shape": [8], "data_offsets": [0, 32]}})",
       "run past the data buffer"},
      {"begin_gt_end", R"({"t": {"dtype": "F32", "shape": [0], "data_offsets": [8, 4]}})",
       "begin 8 > end 4"},
      {"negoffset", R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [-1, 16]}})",
       "data_offsets"},
      {"threeoffsets", R"({"t": {"dtype": "F32", "shape": [4], "data_offsets": [0, 8, 16]}})",
       "data_offsets"},
      {"size_mismatch", R"({"t": {"dtype": "F32", "shape": [3], "data_offsets": [0, 16]}})",
       "does not match"},
      {"dtype_mismatch", R"({"t": {"dtype": "F64", "shape": [4], "data_offsets": [0, 16]}})",
       "does not match"},
      {"overflow_shape",
       R"({"t": {"dtype": "F64", "shape": [4294967296, 4294967296, 16], "data_offsets": [0, 0]}})",
       "does not match"},
      {"hugedim",
       R"({"t": {"dtype": "U8", "shape": [18446744073709551615], "data_offsets": [0, 1]}})",
       "too large"},
      {"duplicate",
       R"({"t": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
       R"( "t": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})",
       "duplicate tensor name 't'"},
      {"dupkey",
       R"({"t": {"dtype": "F32", "dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})",
       "duplicate key 'dtype'"},
  };
  for (const Case& c : cases) {
    SCOPED_TRACE(c.name);
    const std::string path = WriteRaw(c.name, c.header, data);
    ExpectError(path, c.needle);
    if (std::string(c.name) != "duplicate") ExpectError(path, "tensor 't'");
  }
}

TEST_F(SafetensorsTest, RejectsOverlappingTensors) {
  const std::string data(16, '\0');
  ExpectError(WriteRaw("overlap",
                       R"({"a": {"dtype": "F32", "shape": [3], "data_offsets": [0, 12]},)"
                       R"( "b": {"dtype": "F32", "shape": [2], "data_offsets": [8, 16]}})",
                       data),
              "overlaps");
  ExpectError(WriteRaw("same",
                       R"({"a": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]},)"
                       R"( "b": {"dtype": "I32", "shape": [2], "data_offsets": [0, 8]}})",
                       data),
              "overlaps");
  // Empty tensors occupy no bytes, so sharing an offset with them is fine.
  absl::StatusOr<SafetensorsFile> ok =
      ReadSafetensors(WriteRaw("emptyok",
                               R"({"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]},)"
                               R"( "b": {"dtype": "F32", "shape": [0], "data_offsets": [4, 4]}})",
                               data));
  EXPECT_TRUE(ok.ok()) << ok.status();
}

// Every truncation and many random corruptions of a valid file must yield a value, never a crash.
TEST_F(SafetensorsTest, SurvivesTruncationAndRandomCorruption) {
  std::vector<float> a(10);
  std::vector<int64_t> b(3, 7);
  for (size_t i = 0; i < a.size(); ++i) a[i] = static_cast<float>(i);
  const std::string good = Path("good.safetensors");
  ASSERT_TRUE(WriteSafetensors(good, {{"a", "F32", {2, 5}, a.data()}, {"b", "I64", {3}, b.data()}},
                               {{"format", "pt"}})
                  .ok());
  const std::string bytes = ReadBytes(good);
  // In memory, through the same validation ReadSafetensors runs, so thousands of mutants are cheap.
  auto parse = [](const std::string& content) {
    std::vector<uint64_t> storage((content.size() + 7) / 8);
    if (!content.empty()) std::memcpy(storage.data(), content.data(), content.size());
    return ParseSafetensors("mutant", std::move(storage), content.size());
  };
  auto try_read = [&](const std::string& content) {
    absl::StatusOr<SafetensorsFile> f = parse(content);
    if (f.ok()) {
      // Whatever parsed must be internally consistent.
      for (const std::string& n : f->names()) {
        const SafetensorsFile::Entry* e = f->Find(n);
        ASSERT_NE(e, nullptr);
        EXPECT_EQ(static_cast<size_t>(e->numel()) * SafetensorsDtypeSize(e->dtype), e->nbytes);
      }
    }
  };
  ASSERT_TRUE(parse(bytes).ok());
  for (size_t len = 0; len < bytes.size(); ++len) {
    try_read(bytes.substr(0, len));
    EXPECT_FALSE(parse(bytes.substr(0, len)).ok()) << "truncated to " << len;
  }
  std::mt19937 rng(1234);
  for (int iter = 0; iter < 20000; ++iter) {
    std::string m = bytes;
    const int flips = 1 + static_cast<int>(rng() % 4);
    for (int k = 0; k < flips; ++k) {
      m[rng() % m.size()] = static_cast<char>(rng() & 0xff);
    }
    try_read(m);
  }
}

}  // namespace
}  // namespace raptr
