// Finite-difference gradient checks (double precision) of whole tiny GPT and BERT models over
// random active-layer sets and output scales, and the skipped-layer guarantees.
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <string>
#include <vector>

#include "common/random.h"
#include "gtest/gtest.h"
#include "tests/unit/host_view.h"
#include "worker/engine/cpu/cpu_backend.h"
#include "worker/engine/flops.h"
#include "worker/engine/model.h"

namespace raptr {
namespace {

ModelConfig TinyConfig(ModelKind kind) {
  ModelConfig c;
  c.kind = kind;
  c.num_layers = 4;
  c.d_model = 8;
  c.num_heads = 2;
  c.d_ff = 12;
  c.vocab_size = 11;
  c.max_seq = 6;
  return c;
}

// Random weights larger than the GPT-2 init so every path matters numerically.
void RandomizeParams(Model<double>& model, uint64_t seed) {
  CounterRng rng(seed, 0);
  for (const ParamTensor& t : model.layout().tensors()) {
    const bool ln_weight = t.name.find("ln_") != std::string::npos && t.shape.size() == 1 &&
                           t.name.find("weight") != std::string::npos;
    for (size_t i = 0; i < t.numel; ++i) {
      Host(model.params())[t.offset + i] = (ln_weight ? 1.0 : 0.0) + 0.4 * rng.Normal();
    }
  }
}

struct Batch {
  std::vector<int32_t> inputs, targets;
};

Batch RandomBatch(const ModelConfig& cfg, int B, int T, uint64_t seed) {
  CounterRng rng(seed, 1);
  Batch b;
  for (int i = 0; i < B * T; ++i) {
    b.inputs.push_back(static_cast<int32_t>(rng.Below(cfg.vocab_size)));
    int32_t target = static_cast<int32_t>(rng.Below(cfg.vocab_size));
    // BERT scores only the masked positions: leave about half unscored.
    if (cfg.kind == ModelKind::kBert && rng.Uniform() < 0.5) target = -1;
    b.targets.push_back(target);
  }
  if (cfg.kind == ModelKind::kBert) b.targets[0] = 3;  // at least one scored position
  return b;
}

ActiveLayerSet RandomActive(int L, uint64_t seed, bool scaled) {
  CounterRng rng(seed, 2);
  ActiveLayerSet s = ActiveLayerSet::Of(L, {});
  for (int l = 0; l < L; ++l) {
    if (rng.Uniform() < 0.6) s.set_active(l, true);
    if (scaled) s.set_scale(l, static_cast<float>(0.5 + rng.Uniform()));
  }
  if (s.NumActive() == L) s.set_active(static_cast<int>(rng.Below(L)), false);
  return s;
}

void CheckModelGradients(ModelKind kind, bool scaled, uint64_t seed) {
  const ModelConfig cfg = TinyConfig(kind);
  CpuBackend<double> backend;
  Model<double> model(cfg, &backend);
  RandomizeParams(model, seed);
  const int B = 2, T = 5;
  const Batch batch = RandomBatch(cfg, B, T, seed);
  const ActiveLayerSet active = RandomActive(cfg.num_layers, seed, scaled);
  SCOPED_TRACE(ModelKindName(kind) + " active=" + active.DebugString());

  model.ZeroGrads();
  auto loss = model.Forward(batch.inputs.data(), batch.targets.data(), B, T, active, true);
  ASSERT_TRUE(loss.ok()) << loss.status();
  ASSERT_TRUE(model.Backward(1.0 / static_cast<double>(model.last_num_targets())).ok());
  const std::vector<double> analytic(Host(model.grads()),
                                     Host(model.grads()) + model.layout().total());

  // Thousands of tiny forwards: one thread avoids OpenMP barrier costs on a loaded machine.
  const int saved_threads = omp_get_max_threads();
  omp_set_num_threads(1);
  const double h = 1e-6;
  double worst = 0;
  for (const ParamTensor& t : model.layout().tensors()) {
    const bool skipped = t.layer >= 0 && !active.active(t.layer);
    for (size_t i = 0; i < t.numel; ++i) {
      const size_t idx = t.offset + i;
      if (skipped) {
        ASSERT_EQ(analytic[idx], 0.0) << t.name << "[" << i << "] of a skipped layer";
        continue;
      }
      const double saved = Host(model.params())[idx];
      Host(model.params())[idx] = saved + h;
      const double up =
          *model.Forward(batch.inputs.data(), batch.targets.data(), B, T, active, false);
      Host(model.params())[idx] = saved - h;
      const double down =
          *model.Forward(batch.inputs.data(), batch.targets.data(), B, T, active, false);
      Host(model.params())[idx] = saved;
      const double numeric = (up - down) / (2 * h);
      const double err = std::abs(numeric - analytic[idx]) / std::max(1e-3, std::abs(numeric));
      worst = std::max(worst, err);
      ASSERT_LT(err, 1e-5) << t.name << "[" << i << "]: analytic " << analytic[idx] << " numeric "
                           << numeric;
    }
  }
  omp_set_num_threads(saved_threads);
  EXPECT_LT(worst, 1e-5);
}

TEST(ModelGradCheck, GptRandomPathsUnscaled) {
  for (uint64_t seed = 1; seed <= 3; ++seed) CheckModelGradients(ModelKind::kGpt, false, seed);
}
TEST(ModelGradCheck, GptRandomPathsScaled) {
  for (uint64_t seed = 4; seed <= 6; ++seed) CheckModelGradients(ModelKind::kGpt, true, seed);
}
TEST(ModelGradCheck, BertRandomPathsUnscaled) {
  for (uint64_t seed = 7; seed <= 9; ++seed) CheckModelGradients(ModelKind::kBert, false, seed);
}
TEST(ModelGradCheck, BertRandomPathsScaled) {
  for (uint64_t seed = 10; seed <= 12; ++seed) CheckModelGradients(ModelKind::kBert, true, seed);
}

// BERT's head runs on the masked positions only: the executed FLOPs are the model's with
// head_rows = the targets, less than a GPT head's over every position; gradients stay exact
// (the gradchecks above), and evaluation still returns every position's logits.
TEST(ModelSkippedLayers, BertHeadRunsOnTheMaskedPositionsOnly) {
  const ModelConfig cfg = TinyConfig(ModelKind::kBert);
  CpuBackend<double> backend;
  Model<double> model(cfg, &backend);
  RandomizeParams(model, 43);
  const int B = 2, T = 5;
  Batch batch = RandomBatch(cfg, B, T, 43);
  int64_t targets = 0;
  for (int32_t t : batch.targets) targets += t >= 0;
  ASSERT_GT(targets, 0);
  ASSERT_LT(targets, B * T);  // some positions unmasked, so the head's saving shows
  const ActiveLayerSet active = ActiveLayerSet::Of(cfg.num_layers, {0, 2});
  backend.ResetFlops();
  ASSERT_TRUE(model.Forward(batch.inputs.data(), batch.targets.data(), B, T, active, true).ok());
  ASSERT_TRUE(model.Backward(1.0).ok());
  EXPECT_EQ(model.last_head_rows(), targets);
  EXPECT_EQ(backend.flops_executed(), TrainingFlops(cfg, B, T, 2, targets));
  EXPECT_LT(TrainingFlops(cfg, B, T, 2, targets), TrainingFlops(cfg, B, T, 2));
  // Evaluation: the whole (B,T,V) logits, the same loss.
  absl::StatusOr<double> train_loss =
      model.Forward(batch.inputs.data(), batch.targets.data(), B, T, active, true);
  absl::StatusOr<double> eval_loss =
      model.Forward(batch.inputs.data(), batch.targets.data(), B, T, active, false);
  ASSERT_TRUE(train_loss.ok() && eval_loss.ok());
  EXPECT_NEAR(*train_loss, *eval_loss, 1e-12 * std::abs(*eval_loss));
  EXPECT_EQ(model.last_head_rows(), B * T);
  EXPECT_EQ(model.LogitsToHost().size(), static_cast<size_t>(B) * T * cfg.vocab_size);
}

// The gather and scatter use buffers that outlive a step: a second step with
// another mask (the first scores the last position, the second does not) must give exactly a
// fresh model's gradients (a stale row of the first step above the second's last masked position
// would show); a micro-batch without any masked position gives none at all.
TEST(ModelSkippedLayers, BertHeadLeavesNothingOfAnEarlierMask) {
  const ModelConfig cfg = TinyConfig(ModelKind::kBert);
  const int B = 2, T = 5, N = B * T;
  Batch first = RandomBatch(cfg, B, T, 51);
  Batch second = RandomBatch(cfg, B, T, 52);
  first.targets[N - 1] = 4;   // the first step's gradient reaches the last row,
  second.targets[N - 1] = -1;  // the second's must not find it there
  second.targets[0] = -1;
  second.targets[1] = 2;
  const ActiveLayerSet active = ActiveLayerSet::Of(cfg.num_layers, {0, 1});
  CpuBackend<double> backend;
  Model<double> reused(cfg, &backend);
  RandomizeParams(reused, 44);
  ASSERT_TRUE(reused.Forward(first.inputs.data(), first.targets.data(), B, T, active, true).ok());
  ASSERT_TRUE(reused.Backward(1.0).ok());
  reused.ZeroGrads();
  ASSERT_TRUE(reused.Forward(second.inputs.data(), second.targets.data(), B, T, active, true).ok());
  ASSERT_TRUE(reused.Backward(1.0).ok());
  Model<double> fresh(cfg, &backend);
  RandomizeParams(fresh, 44);
  ASSERT_TRUE(fresh.Forward(second.inputs.data(), second.targets.data(), B, T, active, true).ok());
  ASSERT_TRUE(fresh.Backward(1.0).ok());
  const std::vector<double> a = Download<double>(backend, reused.grads());
  const std::vector<double> b = Download<double>(backend, fresh.grads());
  ASSERT_EQ(a.size(), b.size());
  EXPECT_EQ(0, std::memcmp(a.data(), b.data(), a.size() * sizeof(double)));

  std::vector<int32_t> none(N, -1);
  reused.ZeroGrads();
  absl::StatusOr<double> loss = reused.Forward(second.inputs.data(), none.data(), B, T, active, true);
  ASSERT_TRUE(loss.ok());
  EXPECT_EQ(*loss, 0.0);
  EXPECT_EQ(reused.last_head_rows(), 0);
  ASSERT_TRUE(reused.Backward(1.0).ok());
  for (double g : Download<double>(backend, reused.grads())) ASSERT_EQ(g, 0.0);
}

// The head's gather is out of place (GatherRows into a buffer of its own, ScatterRows of its
// input gradient into the final LayerNorm's): on an empty path (encoder, final LayerNorm, head)
// a BERT training Forward + Backward gives bitwise the loss and gradients of the same kernels run
// here by hand over a copy of the masked rows gathered, and scattered back, on the host. Masks:
// the first rows unmasked and the last masked, the last unmasked, every row, and none.
template <typename T>
void CheckBertHeadAgainstAHostGather() {
  ModelConfig cfg = TinyConfig(ModelKind::kBert);
  CpuBackend<T> be;
  Model<T> model(cfg, &be);
  model.InitWeights(61);
  {
    // Larger than the init, so the head's gradient is far from negligible.
    CounterRng rng(62, 0);
    std::vector<T> p = Download<T>(be, model.params());
    for (T& x : p) x += static_cast<T>(0.4 * rng.Normal());
    Upload<T>(be, p.data(), model.params());
  }
  const int B = 2, Tn = 5, N = B * Tn, C = cfg.d_model, V = cfg.vocab_size;
  const ParamLayout& lay = model.layout();
  const ActiveLayerSet empty = ActiveLayerSet::Of(cfg.num_layers, {});
  const T grad_scale = static_cast<T>(0.37);
  for (int variant = 0; variant < 4; ++variant) {
    SCOPED_TRACE("mask variant " + std::to_string(variant));
    Batch batch = RandomBatch(cfg, B, Tn, 63 + variant);
    std::vector<int32_t>& tg = batch.targets;
    if (variant == 0) {
      tg[0] = tg[1] = -1;
      tg[N - 1] = 4;
    } else if (variant == 1) {
      tg[0] = 2;
      tg[N - 1] = -1;
    }
    for (int i = 0; i < N; ++i) {
      if (variant == 2) tg[i] = i % V;
      if (variant == 3) tg[i] = -1;
    }
    std::vector<int32_t> rows, compact;
    for (int i = 0; i < N; ++i) {
      if (tg[i] >= 0) {
        rows.push_back(i);
        compact.push_back(tg[i]);
      }
    }
    const int M = static_cast<int>(rows.size());

    model.ZeroGrads();
    absl::StatusOr<double> loss = model.Forward(batch.inputs.data(), tg.data(), B, Tn, empty, true);
    ASSERT_TRUE(loss.ok()) << loss.status();
    ASSERT_EQ(model.last_head_rows(), M);
    ASSERT_TRUE(model.Backward(grad_scale).ok());
    const std::vector<T> grads = Download<T>(be, model.grads());

    // By hand, in the model's order, in buffers of the same allocator.
    const T* P = model.params().device_data();
    std::vector<void*> owned;
    auto alloc = [&](size_t n) {
      T* p = be.Alloc(std::max<size_t>(n, 1));
      owned.push_back(p);
      return p;
    };
    T* G = alloc(lay.total());
    T* res = alloc(static_cast<size_t>(N) * C);
    T* lnf = alloc(static_cast<size_t>(N) * C);
    T* mean = alloc(N);
    T* rstd = alloc(N);
    T* head_in = alloc(static_cast<size_t>(M) * C);
    T* logits = alloc(static_cast<size_t>(M) * V);
    T* losses = alloc(M);
    T* dhead = alloc(static_cast<size_t>(M) * C);
    T* dln = alloc(static_cast<size_t>(N) * C);
    T* dres = alloc(static_cast<size_t>(N) * C);
    be.EncoderForward(res, batch.inputs.data(), P + lay.wte(), P + lay.wpe(), B, Tn, C);
    be.LayerNormForward(lnf, mean, rstd, res, P + lay.lnf_w(), P + lay.lnf_b(), N, C);
    const std::vector<T> lnf_host = Download<T>(be, DeviceSpan<T>(lnf, static_cast<size_t>(N) * C));
    std::vector<T> head_host(static_cast<size_t>(M) * C);
    for (int i = 0; i < M; ++i) {
      std::copy_n(lnf_host.begin() + static_cast<size_t>(rows[i]) * C, C,
                  head_host.begin() + static_cast<size_t>(i) * C);
    }
    Upload<T>(be, head_host.data(), DeviceSpan<T>(head_in, head_host.size()));
    double total = 0;
    if (M > 0) {
      be.MatmulForward(logits, head_in, P + lay.wte(), nullptr, M, C, V, T(1), false);
      be.CrossEntropyForward(logits, losses, compact.data(), M, V, T(1), true);
      for (T l : Download<T>(be, DeviceSpan<T>(losses, M))) total += static_cast<double>(l);
      be.MatmulBackward(dhead, G + lay.wte(), nullptr, logits, head_in, P + lay.wte(), M, C, V,
                        grad_scale);
    }
    const std::vector<T> dhead_host =
        Download<T>(be, DeviceSpan<T>(dhead, static_cast<size_t>(M) * C));
    std::vector<T> dln_host(static_cast<size_t>(N) * C, T(0));
    for (int i = 0; i < M; ++i) {
      std::copy_n(dhead_host.begin() + static_cast<size_t>(i) * C, C,
                  dln_host.begin() + static_cast<size_t>(rows[i]) * C);
    }
    Upload<T>(be, dln_host.data(), DeviceSpan<T>(dln, dln_host.size()));
    be.LayerNormBackward(dres, G + lay.lnf_w(), G + lay.lnf_b(), dln, res, P + lay.lnf_w(), mean,
                         rstd, N, C);
    be.EncoderBackward(G + lay.wte(), G + lay.wpe(), dres, batch.inputs.data(), B, Tn, C);
    const std::vector<T> expected = Download<T>(be, DeviceSpan<T>(G, lay.total()));
    for (void* p : owned) be.FreeBytes(p);

    const double expected_loss = M > 0 ? total / M : 0.0;
    EXPECT_EQ(0, std::memcmp(&*loss, &expected_loss, sizeof(double)))
        << *loss << " vs " << expected_loss;
    ASSERT_EQ(grads.size(), expected.size());
    EXPECT_EQ(0, std::memcmp(grads.data(), expected.data(), grads.size() * sizeof(T)));
  }
}

TEST(ModelSkippedLayers, BertHeadMatchesAHostGatherBitwiseDouble) {
  CheckBertHeadAgainstAHostGather<double>();
}
TEST(ModelSkippedLayers, BertHeadMatchesAHostGatherBitwiseFloat) {
  CheckBertHeadAgainstAHostGather<float>();
}

TEST(ModelSkippedLayers, ZeroComputeCountedAndMatchesFlopsModel) {
  const ModelConfig cfg = TinyConfig(ModelKind::kGpt);
  CpuBackend<double> backend;
  Model<double> model(cfg, &backend);
  RandomizeParams(model, 42);
  const int B = 2, T = 5;
  const Batch batch = RandomBatch(cfg, B, T, 42);
  for (const auto& layers : std::vector<std::vector<int>>{{}, {0}, {1, 3}, {0, 1, 2, 3}}) {
    const ActiveLayerSet active = ActiveLayerSet::Of(cfg.num_layers, layers);
    backend.ResetFlops();
    ASSERT_TRUE(model.Forward(batch.inputs.data(), batch.targets.data(), B, T, active, true).ok());
    ASSERT_TRUE(model.Backward(1.0).ok());
    const int k = static_cast<int>(layers.size());
    EXPECT_EQ(backend.flops_executed(), TrainingFlops(cfg, B, T, k)) << "path of " << k;
    // Every active block adds exactly one block's worth: a skipped block adds nothing.
    EXPECT_EQ(TrainingFlops(cfg, B, T, k) - TrainingFlops(cfg, B, T, 0),
              3ull * k * BlockForwardFlops(cfg, B, T));
  }
}

TEST(ModelSkippedLayers, SkippedLayerIsIdentity) {
  // The output with block 2 skipped equals the output of the same model with block 2's weights
  // replaced by anything: the block is not evaluated at all.
  const ModelConfig cfg = TinyConfig(ModelKind::kGpt);
  CpuBackend<double> backend;
  Model<double> model(cfg, &backend);
  RandomizeParams(model, 5);
  const Batch batch = RandomBatch(cfg, 2, 5, 5);
  const ActiveLayerSet active = ActiveLayerSet::Of(cfg.num_layers, {0, 1, 3});
  const double before =
      *model.Forward(batch.inputs.data(), batch.targets.data(), 2, 5, active, false);
  const ParamRange r = model.layout().LayerRange(2);
  for (size_t i = r.begin; i < r.end; ++i) Host(model.params())[i] = 1e6;
  const double after =
      *model.Forward(batch.inputs.data(), batch.targets.data(), 2, 5, active, false);
  EXPECT_EQ(before, after);
}

TEST(ModelForward, RejectsBadInput) {
  const ModelConfig cfg = TinyConfig(ModelKind::kGpt);
  CpuBackend<float> backend;
  Model<float> model(cfg, &backend);
  model.InitWeights(1);
  std::vector<int32_t> in(10, 1), tg(10, 1);
  in[3] = 11;  // == vocab
  auto r = model.Forward(in.data(), tg.data(), 2, 5, ActiveLayerSet::Full(4), false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  EXPECT_NE(r.status().message().find("position 3"), std::string::npos) << r.status();
  in[3] = 1;
  r = model.Forward(in.data(), tg.data(), 1, 10, ActiveLayerSet::Full(4), false);  // T > max_seq
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
  r = model.Forward(in.data(), tg.data(), 2, 5, ActiveLayerSet::Full(3), false);
  EXPECT_EQ(r.status().code(), absl::StatusCode::kInvalidArgument);
}

}  // namespace
}  // namespace raptr
