// Tests for HF name mapping and atomic training checkpoints (save, discover, load, failure modes).
#include "worker/engine/checkpoint/checkpoint.h"

#include <signal.h>
#include <stdlib.h>
#include <sys/resource.h>

#include <cmath>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <limits>
#include <random>
#include <sstream>
#include <string>
#include <vector>

#include "gtest/gtest.h"
#include "worker/engine/checkpoint/hf_names.h"
#include "worker/engine/checkpoint/safetensors.h"
#include "worker/engine/param_layout.h"

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

ModelConfig TinyConfig(ModelKind kind) {
  ModelConfig c;
  c.kind = kind;
  c.num_layers = 2;
  c.d_model = 8;
  c.num_heads = 2;
  c.d_ff = 16;
  c.vocab_size = 11;
  c.max_seq = 5;
  return c;
}

// Distinct values with awkward bit patterns mixed in (-0, denormals, extremes).
std::vector<float> Pattern(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::uniform_real_distribution<float> dist(-2.0f, 2.0f);
  std::vector<float> v(n);
  for (size_t i = 0; i < n; ++i) v[i] = dist(rng);
  if (n > 4) {
    v[0] = -0.0f;
    v[1] = std::numeric_limits<float>::denorm_min();
    v[2] = std::numeric_limits<float>::max();
    v[3] = -std::numeric_limits<float>::min();
  }
  return v;
}

bool BitwiseEqual(const std::vector<float>& a, const std::vector<float>& b) {
  return a.size() == b.size() && std::memcmp(a.data(), b.data(), a.size() * sizeof(float)) == 0;
}

std::string ReadText(const std::string& path) {
  std::ifstream in(path);
  std::stringstream ss;
  ss << in.rdbuf();
  return ss.str();
}

class TempDirTest : public ::testing::Test {
 protected:
  void SetUp() override {
    std::string tmpl = (fs::path(::testing::TempDir()) / "checkpoint_test_XXXXXX").string();
    ASSERT_NE(::mkdtemp(tmpl.data()), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override { fs::remove_all(dir_); }
  std::string Path(const std::string& name) const { return (fs::path(dir_) / name).string(); }

  // Writes `tensors` to a file and reads it back.
  SafetensorsFile RoundTripFile(const std::vector<OwnedTensor>& tensors, const std::string& name) {
    const std::string path = Path(name);
    EXPECT_TRUE(WriteSafetensors(path, AsTensorViews(tensors), {}).ok());
    absl::StatusOr<SafetensorsFile> f = ReadSafetensors(path);
    EXPECT_TRUE(f.ok()) << f.status();
    return std::move(f).value();
  }

  std::string dir_;
};

// ---------------------------------------------------------------------------------------------
// HF names

class HfNamesTest : public TempDirTest {};

const OwnedTensor& Get(const std::vector<OwnedTensor>& ts, const std::string& name) {
  for (const OwnedTensor& t : ts) {
    if (t.name == name) return t;
  }
  ADD_FAILURE() << "no tensor " << name;
  static const OwnedTensor kEmpty;
  return kEmpty;
}

TEST_F(HfNamesTest, GptRoundTripIsBitwise) {
  const ModelConfig cfg = TinyConfig(ModelKind::kGpt);
  const ParamLayout layout(cfg);
  const std::vector<float> flat = Pattern(layout.total(), 1);
  const std::vector<OwnedTensor> hf = ExportHf(cfg, layout, flat.data());
  EXPECT_EQ(hf.size(), 2u + 12u * cfg.num_layers + 2u);
  size_t total = 0;
  for (const OwnedTensor& t : hf) total += t.data.size();
  EXPECT_EQ(total, layout.total());  // every parameter exactly once: the head is tied

  SafetensorsFile file = RoundTripFile(hf, "gpt.safetensors");
  std::vector<float> back(layout.total(), 0.0f);
  ASSERT_TRUE(ImportHf(cfg, layout, file, back.data()).ok());
  EXPECT_TRUE(BitwiseEqual(flat, back));
}

TEST_F(HfNamesTest, GptMatricesAreTransposed) {
  const ModelConfig cfg = TinyConfig(ModelKind::kGpt);
  const int64_t C = cfg.d_model, F = cfg.d_ff;
  const ParamLayout layout(cfg);
  const std::vector<float> flat = Pattern(layout.total(), 2);
  const std::vector<OwnedTensor> hf = ExportHf(cfg, layout, flat.data());

  const OwnedTensor& c_attn = Get(hf, "h.1.attn.c_attn.weight");
  EXPECT_EQ(c_attn.shape, (std::vector<int64_t>{C, 3 * C}));
  const float* qkv = flat.data() + layout.block(1, kQkvW);  // (3C, C)
  for (int64_t r = 0; r < 3 * C; ++r) {
    for (int64_t c = 0; c < C; ++c) {
      ASSERT_EQ(qkv[r * C + c], c_attn.data[c * 3 * C + r]) << r << "," << c;
    }
  }
  const OwnedTensor& fc = Get(hf, "h.0.mlp.c_fc.weight");
  EXPECT_EQ(fc.shape, (std::vector<int64_t>{C, F}));
  const float* fcw = flat.data() + layout.block(0, kFcW);  // (F, C)
  EXPECT_EQ(fcw[5 * C + 3], fc.data[3 * F + 5]);
  const OwnedTensor& proj = Get(hf, "h.0.mlp.c_proj.weight");
  EXPECT_EQ(proj.shape, (std::vector<int64_t>{F, C}));
  const float* projw = flat.data() + layout.block(0, kFcProjW);  // (C, F)
  EXPECT_EQ(projw[2 * F + 11], proj.data[11 * C + 2]);
  const OwnedTensor& aproj = Get(hf, "h.1.attn.c_proj.weight");
  const float* aprojw = flat.data() + layout.block(1, kAttnProjW);
  EXPECT_EQ(aprojw[1 * C + 6], aproj.data[6 * C + 1]);
  // Vectors and embeddings copy straight through.
  EXPECT_EQ(Get(hf, "h.1.attn.c_attn.bias").data[17], flat[layout.block(1, kQkvB) + 17]);
  EXPECT_EQ(Get(hf, "h.0.ln_2.bias").data[3], flat[layout.block(0, kLn2B) + 3]);
  EXPECT_EQ(Get(hf, "wpe.weight").shape, (std::vector<int64_t>{cfg.max_seq, C}));
  EXPECT_EQ(Get(hf, "wte.weight").data[C + 1], flat[layout.wte() + C + 1]);
  EXPECT_EQ(Get(hf, "ln_f.weight").data[7], flat[layout.lnf_w() + 7]);
}

TEST_F(HfNamesTest, BertRoundTripIsBitwiseAndSplitsQkv) {
  const ModelConfig cfg = TinyConfig(ModelKind::kBert);
  const int64_t C = cfg.d_model, F = cfg.d_ff;
  const ParamLayout layout(cfg);
  const std::vector<float> flat = Pattern(layout.total(), 3);
  const std::vector<OwnedTensor> hf = ExportHf(cfg, layout, flat.data());
  EXPECT_EQ(hf.size(), 2u + 16u * cfg.num_layers + 2u);

  const std::string p = "bert.encoder.layer.1.";
  const float* qkv = flat.data() + layout.block(1, kQkvW);
  const float* qkv_b = flat.data() + layout.block(1, kQkvB);
  const char* parts[3] = {"query", "key", "value"};
  for (int part = 0; part < 3; ++part) {
    const OwnedTensor& w = Get(hf, p + "attention.self." + parts[part] + ".weight");
    const OwnedTensor& b = Get(hf, p + "attention.self." + parts[part] + ".bias");
    EXPECT_EQ(w.shape, (std::vector<int64_t>{C, C}));
    for (int64_t j = 0; j < C; ++j) {
      for (int64_t c = 0; c < C; ++c) {
        ASSERT_EQ(w.data[j * C + c], qkv[(part * C + j) * C + c]) << parts[part] << " row " << j;
      }
      ASSERT_EQ(b.data[j], qkv_b[part * C + j]);
    }
  }
  // Linear layout: no transpose.
  const OwnedTensor& inter = Get(hf, p + "intermediate.dense.weight");
  EXPECT_EQ(inter.shape, (std::vector<int64_t>{F, C}));
  EXPECT_EQ(inter.data[5 * C + 3], flat[layout.block(1, kFcW) + 5 * C + 3]);
  EXPECT_EQ(Get(hf, p + "output.dense.weight").shape, (std::vector<int64_t>{C, F}));
  EXPECT_EQ(Get(hf, p + "attention.output.LayerNorm.weight").data[2],
            flat[layout.block(1, kLn1W) + 2]);
  EXPECT_EQ(Get(hf, p + "output.LayerNorm.bias").data[2], flat[layout.block(1, kLn2B) + 2]);
  EXPECT_EQ(Get(hf, "cls.predictions.transform.LayerNorm.bias").data[4], flat[layout.lnf_b() + 4]);

  SafetensorsFile file = RoundTripFile(hf, "bert.safetensors");
  std::vector<float> back(layout.total(), 0.0f);
  ASSERT_TRUE(ImportHf(cfg, layout, file, back.data()).ok());
  EXPECT_TRUE(BitwiseEqual(flat, back));
}

TEST_F(HfNamesTest, MissingTensorIsNamedAndFlatUntouched) {
  const ModelConfig cfg = TinyConfig(ModelKind::kGpt);
  const ParamLayout layout(cfg);
  const std::vector<float> flat = Pattern(layout.total(), 4);
  std::vector<OwnedTensor> hf = ExportHf(cfg, layout, flat.data());
  std::erase_if(hf, [](const OwnedTensor& t) { return t.name == "h.1.mlp.c_fc.bias"; });
  SafetensorsFile file = RoundTripFile(hf, "missing.safetensors");
  std::vector<float> out(layout.total(), 7.0f);
  absl::Status st = ImportHf(cfg, layout, file, out.data());
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "h.1.mlp.c_fc.bias"));
  EXPECT_TRUE(MessageHas(st, file.path()));
  for (float x : out) ASSERT_EQ(x, 7.0f);
}

TEST_F(HfNamesTest, WrongShapeOrDtypeIsNamed) {
  const ModelConfig cfg = TinyConfig(ModelKind::kGpt);
  const ParamLayout layout(cfg);
  const std::vector<float> flat = Pattern(layout.total(), 5);
  std::vector<float> out(layout.total());
  {
    // Our own (3C, C) layout instead of HF's (C, 3C): a classic mistake.
    std::vector<OwnedTensor> hf = ExportHf(cfg, layout, flat.data());
    for (OwnedTensor& t : hf) {
      if (t.name == "h.0.attn.c_attn.weight") t.shape = {24, 8};
    }
    absl::Status st = ImportHf(cfg, layout, RoundTripFile(hf, "shape.safetensors"), out.data());
    ASSERT_FALSE(st.ok());
    EXPECT_TRUE(MessageHas(st, "h.0.attn.c_attn.weight"));
    EXPECT_TRUE(MessageHas(st, "[24, 8], expected [8, 24]"));
  }
  {
    const std::vector<OwnedTensor> hf = ExportHf(cfg, layout, flat.data());
    std::vector<TensorView> views = AsTensorViews(hf);
    std::vector<double> wide(hf[1].data.begin(), hf[1].data.end());
    views[1].dtype = "F64";
    views[1].data = wide.data();
    const std::string path = Path("dtype.safetensors");
    ASSERT_TRUE(WriteSafetensors(path, views, {}).ok());
    absl::StatusOr<SafetensorsFile> file = ReadSafetensors(path);
    ASSERT_TRUE(file.ok());
    absl::Status st = ImportHf(cfg, layout, *file, out.data());
    ASSERT_FALSE(st.ok());
    EXPECT_TRUE(MessageHas(st, "'wpe.weight' has dtype F64, expected F32"));
  }
}

TEST_F(HfNamesTest, ExtraTensorsAreRejectedUnlessHarmless) {
  const ModelConfig cfg = TinyConfig(ModelKind::kGpt);
  const ParamLayout layout(cfg);
  const std::vector<float> flat = Pattern(layout.total(), 6);
  std::vector<float> out(layout.total());
  const std::vector<OwnedTensor> base = ExportHf(cfg, layout, flat.data());
  const OwnedTensor& wte = Get(base, "wte.weight");

  std::vector<OwnedTensor> harmless = base;
  harmless.push_back({"h.0.attn.bias", {1, 1, 5, 5}, std::vector<float>(25, 1.0f)});
  harmless.push_back({"h.1.attn.masked_bias", {}, {-1e4f}});
  harmless.push_back({"lm_head.weight", wte.shape, wte.data});
  ASSERT_TRUE(ImportHf(cfg, layout, RoundTripFile(harmless, "ok.safetensors"), out.data()).ok());
  EXPECT_TRUE(BitwiseEqual(flat, out));

  std::vector<OwnedTensor> extra = base;
  extra.push_back({"h.2.ln_1.weight", {8}, std::vector<float>(8)});  // a third layer
  absl::Status st = ImportHf(cfg, layout, RoundTripFile(extra, "extra.safetensors"), out.data());
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "unexpected tensor 'h.2.ln_1.weight'"));

  std::vector<OwnedTensor> untied = base;
  untied.push_back({"lm_head.weight", wte.shape, wte.data});
  untied.back().data[3] += 1.0f;
  st = ImportHf(cfg, layout, RoundTripFile(untied, "untied.safetensors"), out.data());
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "lm_head.weight"));

  // GPT2LMHeadModel.save_pretrained layout: everything under "transformer.".
  std::vector<OwnedTensor> prefixed = base;
  for (OwnedTensor& t : prefixed) t.name = "transformer." + t.name;
  prefixed.push_back({"transformer.h.0.attn.bias", {1}, {1.0f}});
  std::vector<float> out2(layout.total());
  ASSERT_TRUE(
      ImportHf(cfg, layout, RoundTripFile(prefixed, "prefixed.safetensors"), out2.data()).ok());
  EXPECT_TRUE(BitwiseEqual(flat, out2));
}

TEST_F(HfNamesTest, BertHarmlessExtras) {
  const ModelConfig cfg = TinyConfig(ModelKind::kBert);
  const ParamLayout layout(cfg);
  const std::vector<float> flat = Pattern(layout.total(), 7);
  std::vector<float> out(layout.total());
  std::vector<OwnedTensor> hf = ExportHf(cfg, layout, flat.data());
  const OwnedTensor wte = Get(hf, "bert.embeddings.word_embeddings.weight");
  hf.push_back({"cls.predictions.decoder.weight", wte.shape, wte.data});
  hf.push_back({"cls.predictions.bias", {cfg.vocab_size}, std::vector<float>(cfg.vocab_size)});
  ASSERT_TRUE(ImportHf(cfg, layout, RoundTripFile(hf, "ok.safetensors"), out.data()).ok());
  EXPECT_TRUE(BitwiseEqual(flat, out));
  hf.back().data[0] = 0.5f;
  absl::Status st = ImportHf(cfg, layout, RoundTripFile(hf, "bias.safetensors"), out.data());
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "cls.predictions.bias"));
}

TEST_F(HfNamesTest, GptFileDoesNotLoadAsBert) {
  const ModelConfig gpt = TinyConfig(ModelKind::kGpt);
  const ModelConfig bert = TinyConfig(ModelKind::kBert);
  const ParamLayout layout(gpt);
  const std::vector<float> flat = Pattern(layout.total(), 8);
  SafetensorsFile file = RoundTripFile(ExportHf(gpt, layout, flat.data()), "gpt.safetensors");
  std::vector<float> out(layout.total());
  absl::Status st = ImportHf(bert, layout, file, out.data());
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "bert.embeddings.word_embeddings.weight"));
  // A layout for a different model is refused too.
  ModelConfig bigger = gpt;
  bigger.d_ff = 32;
  EXPECT_FALSE(ImportHf(bigger, layout, file, out.data()).ok());
}

// ---------------------------------------------------------------------------------------------
// Checkpoints

struct Buffers {
  std::vector<float> params, m, v;
};

Buffers MakeBuffers(const ParamLayout& layout, uint32_t seed) {
  Buffers b{Pattern(layout.total(), seed), Pattern(layout.total(), seed + 100),
            Pattern(layout.total(), seed + 200)};
  for (float& x : b.v) x = std::fabs(x);
  b.m[5] = std::numeric_limits<float>::quiet_NaN();  // raw bits must survive, NaN included
  return b;
}

TrainState MakeState(int64_t step) {
  TrainState s;
  s.step = step;
  s.seed = 0xFEEDFACECAFEBEEFull;
  s.tokens_seen = 123456789012LL + step;
  s.flops_spent = 1.0 / 3.0 * 1e18 + step;
  s.flops_full = 0.1 + 0.2;
  s.rng_state = 0xFFFFFFFFFFFFFFFFull;
  s.extra_json = R"({"data": {"shard": 3, "pos": [1, 2]}, "note": "ünïcode"})";
  return s;
}

class CheckpointTest : public TempDirTest {
 protected:
  CheckpointTest() : cfg_(TinyConfig(ModelKind::kGpt)), layout_(cfg_) {}

  absl::Status Save(const Buffers& b, int64_t step) {
    return SaveCheckpoint(run_dir(), cfg_, layout_, b.params.data(), b.m.data(), b.v.data(),
                          MakeState(step));
  }
  std::string run_dir() const { return Path("run"); }
  std::string ckpt_root() const { return Path("run/checkpoints"); }

  void ExpectLoadsBitwise(const std::string& ckpt_dir, const Buffers& want, int64_t step) {
    Buffers got{std::vector<float>(layout_.total()), std::vector<float>(layout_.total()),
                std::vector<float>(layout_.total())};
    TrainState state;
    absl::Status st = LoadCheckpoint(ckpt_dir, cfg_, layout_, got.params.data(), got.m.data(),
                                     got.v.data(), &state);
    ASSERT_TRUE(st.ok()) << st;
    EXPECT_TRUE(BitwiseEqual(want.params, got.params));
    EXPECT_TRUE(BitwiseEqual(want.m, got.m));
    EXPECT_TRUE(BitwiseEqual(want.v, got.v));
    const TrainState s = MakeState(step);
    EXPECT_EQ(state.step, s.step);
    EXPECT_EQ(state.seed, s.seed);
    EXPECT_EQ(state.tokens_seen, s.tokens_seen);
    EXPECT_EQ(std::memcmp(&state.flops_spent, &s.flops_spent, sizeof(double)), 0);
    EXPECT_EQ(std::memcmp(&state.flops_full, &s.flops_full, sizeof(double)), 0);
    EXPECT_EQ(state.rng_state, s.rng_state);
    EXPECT_EQ(state.extra_json, s.extra_json);
  }

  ModelConfig cfg_;
  ParamLayout layout_;
};

TEST_F(CheckpointTest, SaveLoadIsBitwise) {
  const Buffers b = MakeBuffers(layout_, 10);
  ASSERT_TRUE(Save(b, 42).ok());
  absl::StatusOr<std::string> latest = LatestCheckpoint(run_dir());
  ASSERT_TRUE(latest.ok()) << latest.status();
  EXPECT_EQ(*latest, ckpt_root() + "/step_00000042");
  EXPECT_EQ(ReadText(ckpt_root() + "/LATEST"), "step_00000042\n");
  EXPECT_FALSE(fs::exists(ckpt_root() + "/step_00000042.tmp"));
  ExpectLoadsBitwise(*latest, b, 42);

  // model.safetensors is a plain HF file: LoadWeights reads it, and it carries format=pt.
  const std::string model = *latest + "/model.safetensors";
  absl::StatusOr<SafetensorsFile> f = ReadSafetensors(model);
  ASSERT_TRUE(f.ok());
  EXPECT_EQ(f->metadata().at("format"), "pt");
  EXPECT_NE(f->Find("h.1.attn.c_attn.weight"), nullptr);
  std::vector<float> params(layout_.total());
  ASSERT_TRUE(LoadWeights(model, cfg_, layout_, params.data()).ok());
  EXPECT_TRUE(BitwiseEqual(b.params, params));

  // Moments and state are optional outputs.
  std::vector<float> p2(layout_.total());
  EXPECT_TRUE(LoadCheckpoint(*latest, cfg_, layout_, p2.data(), nullptr, nullptr, nullptr).ok());
  EXPECT_TRUE(BitwiseEqual(b.params, p2));
}

TEST_F(CheckpointTest, BertSaveLoad) {
  cfg_ = TinyConfig(ModelKind::kBert);
  layout_ = ParamLayout(cfg_);
  const Buffers b = MakeBuffers(layout_, 11);
  ASSERT_TRUE(Save(b, 7).ok());
  ExpectLoadsBitwise(*LatestCheckpoint(run_dir()), b, 7);
}

TEST_F(CheckpointTest, LatestPicksNewest) {
  EXPECT_EQ(LatestCheckpoint(run_dir()).status().code(), absl::StatusCode::kNotFound);
  const Buffers b1 = MakeBuffers(layout_, 20), b2 = MakeBuffers(layout_, 21);
  ASSERT_TRUE(Save(b1, 100).ok());
  ASSERT_TRUE(Save(b2, 200).ok());
  EXPECT_EQ(*LatestCheckpoint(run_dir()), ckpt_root() + "/step_00000200");
  ExpectLoadsBitwise(*LatestCheckpoint(run_dir()), b2, 200);
  ExpectLoadsBitwise(ckpt_root() + "/step_00000100", b1, 100);

  // Without LATEST (lost, or never written after a crash), the largest complete step wins.
  fs::remove(ckpt_root() + "/LATEST");
  EXPECT_EQ(*LatestCheckpoint(run_dir()), ckpt_root() + "/step_00000200");
  // A dangling LATEST falls back the same way.
  std::ofstream(ckpt_root() + "/LATEST") << "step_00000999\n";
  EXPECT_EQ(*LatestCheckpoint(run_dir()), ckpt_root() + "/step_00000200");
  // Garbage in LATEST cannot escape the checkpoints directory.
  std::ofstream(ckpt_root() + "/LATEST") << "../../etc\n";
  EXPECT_EQ(*LatestCheckpoint(run_dir()), ckpt_root() + "/step_00000200");
  // Steps past 8 digits still order numerically.
  const Buffers b3 = MakeBuffers(layout_, 22);
  ASSERT_TRUE(Save(b3, 123456789).ok());
  fs::remove(ckpt_root() + "/LATEST");
  EXPECT_EQ(*LatestCheckpoint(run_dir()), ckpt_root() + "/step_123456789");
}

TEST_F(CheckpointTest, LeftoverTmpAndIncompleteDirsAreIgnored) {
  const Buffers b = MakeBuffers(layout_, 30);
  ASSERT_TRUE(Save(b, 5).ok());
  // A crash mid-save leaves a .tmp directory, maybe with partial files.
  fs::create_directories(ckpt_root() + "/step_00000009.tmp");
  std::ofstream(ckpt_root() + "/step_00000009.tmp/model.safetensors") << "partial";
  std::ofstream(ckpt_root() + "/step_00000009.tmp/state.safetensors") << "partial";
  // An incomplete final directory (not written by us, but be robust) and unrelated entries.
  fs::create_directories(ckpt_root() + "/step_00000010");
  std::ofstream(ckpt_root() + "/step_00000010/model.safetensors") << "x";
  fs::create_directories(ckpt_root() + "/step_x");
  std::ofstream(ckpt_root() + "/LATEST.tmp") << "step_00000009.tmp";

  EXPECT_EQ(*LatestCheckpoint(run_dir()), ckpt_root() + "/step_00000005");
  fs::remove(ckpt_root() + "/LATEST");
  EXPECT_EQ(*LatestCheckpoint(run_dir()), ckpt_root() + "/step_00000005");

  // The next save of that step clears the debris.
  const Buffers b9 = MakeBuffers(layout_, 31);
  ASSERT_TRUE(Save(b9, 9).ok());
  EXPECT_FALSE(fs::exists(ckpt_root() + "/step_00000009.tmp"));
  EXPECT_EQ(*LatestCheckpoint(run_dir()), ckpt_root() + "/step_00000009");
  ExpectLoadsBitwise(ckpt_root() + "/step_00000009", b9, 9);
}

TEST_F(CheckpointTest, ResavingSteps) {
  const Buffers b = MakeBuffers(layout_, 40), b2 = MakeBuffers(layout_, 41);
  ASSERT_TRUE(Save(b, 3).ok());
  // The committed latest is never overwritten.
  absl::Status st = Save(b2, 3);
  EXPECT_EQ(st.code(), absl::StatusCode::kAlreadyExists) << st;
  ExpectLoadsBitwise(ckpt_root() + "/step_00000003", b, 3);
  // An uncommitted directory (crash between rename and LATEST) is replaced.
  ASSERT_TRUE(Save(b, 8).ok());
  std::ofstream(ckpt_root() + "/LATEST") << "step_00000003\n";
  ASSERT_TRUE(Save(b2, 8).ok());
  ExpectLoadsBitwise(*LatestCheckpoint(run_dir()), b2, 8);
  EXPECT_EQ(*LatestCheckpoint(run_dir()), ckpt_root() + "/step_00000008");
}

TEST_F(CheckpointTest, ConfigMismatchIsRejected) {
  const Buffers b = MakeBuffers(layout_, 50);
  ASSERT_TRUE(Save(b, 1).ok());
  const std::string dir = *LatestCheckpoint(run_dir());
  std::vector<float> out(layout_.total(), 3.0f);

  ModelConfig other = cfg_;
  other.num_heads = 4;  // same layout size, different model
  const ParamLayout other_layout(other);
  absl::Status st = LoadCheckpoint(dir, other, other_layout, out.data(), nullptr, nullptr, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "num_heads is 2, expected 4"));
  for (float x : out) ASSERT_EQ(x, 3.0f);

  other = cfg_;
  other.kind = ModelKind::kBert;
  st = LoadCheckpoint(dir, other, ParamLayout(other), out.data(), nullptr, nullptr, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "kind is gpt, expected bert"));

  other = cfg_;
  other.d_ff = 32;
  const ParamLayout big(other);
  std::vector<float> big_out(big.total());
  st = LoadCheckpoint(dir, other, big, big_out.data(), nullptr, nullptr, nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "d_ff"));
  st = LoadWeights(dir + "/model.safetensors", other, big, big_out.data());
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "d_ff is 16, expected 32"));

  // A layout that does not belong to the config.
  st = LoadCheckpoint(dir, cfg_, big, big_out.data(), nullptr, nullptr, nullptr);
  EXPECT_FALSE(st.ok());
}

TEST_F(CheckpointTest, CorruptStateFileIsRejected) {
  const Buffers b = MakeBuffers(layout_, 60);
  ASSERT_TRUE(Save(b, 2).ok());
  const std::string dir = *LatestCheckpoint(run_dir());
  // Moments of the wrong length.
  const std::vector<float> short_m(10);
  ASSERT_TRUE(WriteSafetensors(dir + "/state.safetensors",
                               {{"adam.m", "F32", {10}, short_m.data()},
                                {"adam.v", "F32", {10}, short_m.data()}},
                               {{"format_version", "1"},
                                {"config", ModelConfigToJson(cfg_)},
                                {"step", "2"},
                                {"seed", "1"},
                                {"tokens_seen", "1"},
                                {"flops_spent", "1"},
                                {"flops_full", "1"},
                                {"rng_state", "0"},
                                {"extra_json", ""}})
                  .ok());
  std::vector<float> out(layout_.total(), 3.0f);
  absl::Status st = LoadCheckpoint(dir, cfg_, layout_, out.data(), out.data(), out.data(), nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "adam.m"));
  for (float x : out) ASSERT_EQ(x, 3.0f);
  // Garbage bytes.
  std::ofstream(dir + "/state.safetensors", std::ios::trunc) << "garbage!garbage!";
  st = LoadCheckpoint(dir, cfg_, layout_, out.data(), out.data(), out.data(), nullptr);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "state.safetensors"));
}

TEST_F(CheckpointTest, FailedSaveLeavesPreviousCheckpointIntact) {
  const Buffers b1 = MakeBuffers(layout_, 70), b2 = MakeBuffers(layout_, 71);
  ASSERT_TRUE(Save(b1, 1).ok());
  const std::string latest_before = ReadText(ckpt_root() + "/LATEST");

  // Writes fail part-way (as on a full disk): a file size limit works even as root.
  struct rlimit old_limit;
  ASSERT_EQ(::getrlimit(RLIMIT_FSIZE, &old_limit), 0);
  struct rlimit small = old_limit;
  small.rlim_cur = 2048;  // model.safetensors is ~5.5 KB
  auto old_handler = ::signal(SIGXFSZ, SIG_IGN);
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  absl::Status st = Save(b2, 2);
  ::setrlimit(RLIMIT_FSIZE, &old_limit);
  ::signal(SIGXFSZ, old_handler);
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "step_00000002.tmp"));

  EXPECT_EQ(ReadText(ckpt_root() + "/LATEST"), latest_before);
  EXPECT_FALSE(fs::exists(ckpt_root() + "/step_00000002"));
  EXPECT_FALSE(fs::exists(ckpt_root() + "/step_00000002.tmp"));
  EXPECT_EQ(*LatestCheckpoint(run_dir()), ckpt_root() + "/step_00000001");
  ExpectLoadsBitwise(ckpt_root() + "/step_00000001", b1, 1);

  // Invalid arguments fail before touching the disk.
  ModelConfig bad = cfg_;
  bad.num_heads = 3;
  EXPECT_FALSE(SaveCheckpoint(run_dir(), bad, layout_, b2.params.data(), b2.m.data(), b2.v.data(),
                              MakeState(2))
                   .ok());
  ModelConfig other = cfg_;
  other.d_ff = 32;
  st = SaveCheckpoint(run_dir(), other, layout_, b2.params.data(), b2.m.data(), b2.v.data(),
                      MakeState(2));
  EXPECT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, "layout"));
  TrainState bad_extra = MakeState(2);
  bad_extra.extra_json = "\xff\xfe";
  EXPECT_FALSE(SaveCheckpoint(run_dir(), cfg_, layout_, b2.params.data(), b2.m.data(), b2.v.data(),
                              bad_extra)
                   .ok());
  EXPECT_EQ(ReadText(ckpt_root() + "/LATEST"), latest_before);
  EXPECT_FALSE(fs::exists(ckpt_root() + "/step_00000002"));
  EXPECT_FALSE(fs::exists(ckpt_root() + "/step_00000002.tmp"));
  ExpectLoadsBitwise(*LatestCheckpoint(run_dir()), b1, 1);
}

TEST_F(CheckpointTest, BogusRunDirFails) {
  const Buffers b = MakeBuffers(layout_, 80);
  std::ofstream(Path("file")) << "not a directory";
  absl::Status st = SaveCheckpoint(Path("file"), cfg_, layout_, b.params.data(), b.m.data(),
                                   b.v.data(), MakeState(1));
  ASSERT_FALSE(st.ok());
  EXPECT_TRUE(MessageHas(st, Path("file")));
  EXPECT_EQ(ReadText(Path("file")), "not a directory");
  EXPECT_EQ(LatestCheckpoint(Path("file")).status().code(), absl::StatusCode::kNotFound);
  EXPECT_FALSE(LoadCheckpoint(Path("nothing"), cfg_, layout_, std::vector<float>(1).data(), nullptr,
                              nullptr, nullptr)
                   .ok());
}

TEST(ModelConfigJsonTest, RoundTripsAndRejectsJunk) {
  ModelConfig c = TinyConfig(ModelKind::kBert);
  absl::StatusOr<ModelConfig> back = ModelConfigFromJson(ModelConfigToJson(c));
  ASSERT_TRUE(back.ok()) << back.status();
  EXPECT_EQ(back->kind, ModelKind::kBert);
  EXPECT_EQ(back->d_ff, 16);
  EXPECT_EQ(back->max_seq, 5);
  EXPECT_FALSE(ModelConfigFromJson("{").ok());
  EXPECT_FALSE(ModelConfigFromJson("[]").ok());
  EXPECT_FALSE(ModelConfigFromJson(R"({"kind": "rnn"})").ok());
  std::string extra = ModelConfigToJson(c);
  extra.insert(1, R"("dropout": 0.1, )");
  EXPECT_FALSE(ModelConfigFromJson(extra).ok());
  EXPECT_EQ(CheckpointDirName(7), "step_00000007");
}

}  // namespace
}  // namespace raptr
