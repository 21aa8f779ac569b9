// Kernel-level checks of the CPU backend: finite-difference gradient checks (double precision) of
// every op with a backward, the accumulate / overwrite contracts of backend.h, float-vs-double
// agreement (which catches the float-only fast exp/tanh of cpu/fast_math.h), the fast exp/tanh
// themselves, AdamW against a hand-written reference, SumSquares, the row gather and scatter
// against plain loops, and bitwise determinism.
//
// Gradient method: random inputs, a random projection R of the op's output, L = sum(out * R).
// The analytic gradient is the backward with dout = R; the numeric one is a central difference
// with h = 1e-6 on every input element. Measured worst errors are recorded as test properties
// (see --gtest_output=xml).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <numbers>
#include <string>
#include <utility>
#include <vector>

#include "common/random.h"
#include "gtest/gtest.h"
#include "worker/engine/cpu/cpu_backend.h"
#include "worker/engine/cpu/fast_math.h"

namespace raptr {
namespace {

using Vec = std::vector<double>;

constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();
constexpr double kH = 1e-6;
// Relative tolerance of the gradient checks, denominator max(|numeric|, 1e-3). Holds with a wide
// margin: the numeric difference is projected on R only after taking the element-wise output
// difference (below), so its rounding noise is ~1e-16 / h per touched output.
constexpr double kGradTol = 1e-6;

void Report(const std::string& key, double value) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g", value);
  ::testing::Test::RecordProperty(key, buf);
}

Vec RandomNormal(size_t n, uint64_t seed, double scale = 1.0, double offset = 0.0) {
  CounterRng rng(seed, 0);
  Vec v(n);
  for (double& x : v) x = offset + scale * rng.Normal();
  return v;
}

// The same values at float precision, so float and double backends see identical inputs.
Vec RoundToFloat(Vec v) {
  for (double& x : v) x = static_cast<float>(x);
  return v;
}

template <typename T>
std::vector<T> Cast(const Vec& v) {
  return std::vector<T>(v.begin(), v.end());
}

template <typename T>
Vec ToVec(const std::vector<T>& v) {
  return Vec(v.begin(), v.end());
}

Vec Sub(const Vec& a, const Vec& b) {
  Vec d(a.size());
  for (size_t i = 0; i < a.size(); ++i) d[i] = a[i] - b[i];
  return d;
}

bool BitwiseEqual(const void* a, const void* b, size_t bytes) {
  return std::memcmp(a, b, bytes) == 0;
}

// Sets the OpenMP thread count of the calling thread for a scope. The finite-difference loops run
// thousands of tiny kernel calls, each an OpenMP parallel region; on a busy, oversubscribed
// machine each region's barrier can wait a whole scheduler slice for a descheduled worker
// (measured: 9 s instead of 5 ms for the gradient checks on 2 loaded cores). The analytic
// backward passes still run with the default thread count.
class ScopedOmpThreads {
 public:
  explicit ScopedOmpThreads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ScopedOmpThreads() { omp_set_num_threads(saved_); }
  ScopedOmpThreads(const ScopedOmpThreads&) = delete;
  ScopedOmpThreads& operator=(const ScopedOmpThreads&) = delete;

 private:
  int saved_;
};

// For L(x) = sum(forward() * R), where forward() reads x: checks `analytic` (dL/dx) against
// central differences on every element of x. The two perturbed outputs are subtracted element by
// element before the projection, so outputs that x[i] does not reach contribute exactly zero.
// Returns the worst relative error.
double CheckGradient(const std::string& what, Vec& x, const Vec& analytic, const Vec& R,
                     const std::function<Vec()>& forward) {
  EXPECT_EQ(x.size(), analytic.size()) << what;
  ScopedOmpThreads single_thread(1);
  double worst = 0;
  int failures = 0;
  for (size_t i = 0; i < x.size(); ++i) {
    const double saved = x[i];
    x[i] = saved + kH;
    const Vec up = forward();
    x[i] = saved - kH;
    const Vec down = forward();
    x[i] = saved;
    EXPECT_EQ(up.size(), R.size());
    double diff = 0;
    for (size_t j = 0; j < up.size(); ++j) diff += (up[j] - down[j]) * R[j];
    const double numeric = diff / (2 * kH);
    const double err = std::abs(analytic[i] - numeric) / std::max(1e-3, std::abs(numeric));
    worst = std::max(worst, err);
    if (!(err < kGradTol) && ++failures <= 5) {
      ADD_FAILURE() << what << "[" << i << "]: analytic " << analytic[i] << " numeric " << numeric
                    << " rel err " << err;
    }
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << x.size() << " elements off";
  Report("worst_rel_err_" + what, worst);
  return worst;
}

// ---------------------------------------------------------------------------------------------
// Gradient checks, double precision.

TEST(OpsGradCheck, Encoder) {
  CpuBackend<double> be;
  const int B = 2, T = 5, C = 8, V = 7;
  std::vector<int32_t> tokens(B * T);
  CounterRng rng(1, 7);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng.Below(V));
  tokens[3] = tokens[0];  // repeated tokens: their dwte rows collide
  tokens[8] = tokens[0];
  Vec wte = RandomNormal(V * C, 11), wpe = RandomNormal(T * C, 12);
  const Vec R = RandomNormal(B * T * C, 13);
  auto forward = [&] {
    Vec out(B * T * C, kNaN);
    be.EncoderForward(out.data(), tokens.data(), wte.data(), wpe.data(), B, T, C);
    return out;
  };
  const Vec out = forward();
  for (int bt = 0; bt < B * T; ++bt) {
    for (int c = 0; c < C; ++c) {
      ASSERT_EQ(out[bt * C + c], wte[tokens[bt] * C + c] + wpe[(bt % T) * C + c]) << bt << "," << c;
    }
  }
  // The backward accumulates: start from non-zero gradients.
  const Vec dwte0 = RandomNormal(V * C, 14), dwpe0 = RandomNormal(T * C, 15);
  Vec dwte = dwte0, dwpe = dwpe0;
  be.EncoderBackward(dwte.data(), dwpe.data(), R.data(), tokens.data(), B, T, C);
  CheckGradient("encoder_wte", wte, Sub(dwte, dwte0), R, forward);
  CheckGradient("encoder_wpe", wpe, Sub(dwpe, dwpe0), R, forward);
}

TEST(OpsGradCheck, LayerNorm) {
  CpuBackend<double> be;
  const int N = 6, C = 8;
  Vec inp = RandomNormal(N * C, 21, 1.5, 0.5);
  Vec w = RandomNormal(C, 22, 0.3, 1.0), b = RandomNormal(C, 23, 0.3);
  const Vec R = RandomNormal(N * C, 24);
  Vec mean(N), rstd(N);
  auto forward = [&] {
    Vec out(N * C, kNaN);
    be.LayerNormForward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N, C);
    return out;
  };
  const Vec out = forward();
  for (int i = 0; i < N; ++i) {
    double m = 0, var = 0;
    for (int c = 0; c < C; ++c) m += inp[i * C + c] / C;
    for (int c = 0; c < C; ++c) var += (inp[i * C + c] - m) * (inp[i * C + c] - m) / C;
    const double s = 1.0 / std::sqrt(var + 1e-5);
    EXPECT_NEAR(mean[i], m, 1e-14);
    EXPECT_NEAR(rstd[i], s, 1e-13 * s);
    for (int c = 0; c < C; ++c) {
      EXPECT_NEAR(out[i * C + c], (inp[i * C + c] - m) * s * w[c] + b[c], 1e-13) << i << "," << c;
    }
  }
  // All three gradients accumulate (backend.h): start from non-zero values.
  const Vec dinp0 = RandomNormal(N * C, 25), dw0 = RandomNormal(C, 26), db0 = RandomNormal(C, 27);
  Vec dinp = dinp0, dw = dw0, db = db0;
  be.LayerNormBackward(dinp.data(), dw.data(), db.data(), R.data(), inp.data(), w.data(),
                       mean.data(), rstd.data(), N, C);
  CheckGradient("layernorm_inp", inp, Sub(dinp, dinp0), R, forward);
  CheckGradient("layernorm_w", w, Sub(dw, dw0), R, forward);
  CheckGradient("layernorm_b", b, Sub(db, db0), R, forward);
}

void CheckMatmul(bool with_bias, double alpha, uint64_t seed) {
  SCOPED_TRACE(testing::Message() << "bias=" << with_bias << " alpha=" << alpha);
  const std::string tag = std::string(with_bias ? "bias" : "nobias") + "_alpha" +
                          std::to_string(static_cast<int>(std::lround(alpha * 10)));
  CpuBackend<double> be;
  const int N = 6, C = 5, OC = 7;
  Vec inp = RandomNormal(N * C, seed), w = RandomNormal(OC * C, seed + 1);
  Vec bias = RandomNormal(OC, seed + 2);
  const Vec R = RandomNormal(N * OC, seed + 3);
  const double* bias_ptr = with_bias ? bias.data() : nullptr;
  auto forward = [&] {
    Vec out(N * OC, kNaN);  // accumulate=false must not read out
    be.MatmulForward(out.data(), inp.data(), w.data(), with_bias ? bias.data() : nullptr, N, C, OC,
                     alpha, false);
    return out;
  };
  const Vec out = forward();
  Vec ref(N * OC);
  for (int i = 0; i < N; ++i) {
    for (int o = 0; o < OC; ++o) {
      double s = with_bias ? bias[o] : 0.0;
      for (int c = 0; c < C; ++c) s += inp[i * C + c] * w[o * C + c];
      ref[i * OC + o] = alpha * s;
      EXPECT_NEAR(out[i * OC + o], ref[i * OC + o], 1e-13) << i << "," << o;
    }
  }
  // accumulate=true adds onto the existing out.
  const Vec out0 = RandomNormal(N * OC, seed + 4);
  Vec acc = out0;
  be.MatmulForward(acc.data(), inp.data(), w.data(), bias_ptr, N, C, OC, alpha, true);
  for (int k = 0; k < N * OC; ++k) EXPECT_NEAR(acc[k], out0[k] + ref[k], 1e-13) << k;

  // Backward: dinp is overwritten (start it at NaN), dw and dbias accumulate.
  const Vec dw0 = RandomNormal(OC * C, seed + 5), dbias0 = RandomNormal(OC, seed + 6);
  Vec dinp(N * C, kNaN), dw = dw0, dbias = dbias0;
  be.MatmulBackward(dinp.data(), dw.data(), with_bias ? dbias.data() : nullptr, R.data(),
                    inp.data(), w.data(), N, C, OC, alpha);
  CheckGradient("matmul_" + tag + "_inp", inp, dinp, R, forward);
  CheckGradient("matmul_" + tag + "_w", w, Sub(dw, dw0), R, forward);
  if (with_bias) {
    CheckGradient("matmul_" + tag + "_bias", bias, Sub(dbias, dbias0), R, forward);
  } else {
    EXPECT_EQ(dbias, dbias0);
  }
  // dinp may be null: dw (and dbias) come out the same.
  Vec dw2 = dw0, dbias2 = dbias0;
  be.MatmulBackward(nullptr, dw2.data(), with_bias ? dbias2.data() : nullptr, R.data(), inp.data(),
                    w.data(), N, C, OC, alpha);
  EXPECT_EQ(dw2, dw);
  EXPECT_EQ(dbias2, dbias);
}

TEST(OpsGradCheck, MatmulWithBias) {
  CheckMatmul(true, 1.0, 31);
  CheckMatmul(true, -0.7, 41);
  CheckMatmul(true, 2.5, 51);
}

TEST(OpsGradCheck, MatmulWithoutBias) {
  CheckMatmul(false, 1.0, 61);
  CheckMatmul(false, -0.7, 71);
  CheckMatmul(false, 2.5, 81);
}

// Plain attention in double: out (B,T,C) and probabilities (B,NH,T,T) from qkv (B,T,3C).
void ReferenceAttention(const Vec& qkv, int B, int T, int C, int NH, bool causal, Vec* out,
                        Vec* att) {
  const int hs = C / NH;
  out->assign(static_cast<size_t>(B) * T * C, 0.0);
  att->assign(static_cast<size_t>(B) * NH * T * T, 0.0);
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      for (int i = 0; i < T; ++i) {
        const int valid = causal ? i + 1 : T;
        std::vector<double> s(valid);
        double mx = -1e300;
        for (int j = 0; j < valid; ++j) {
          double dot = 0;
          for (int d = 0; d < hs; ++d) {
            dot +=
                qkv[(b * T + i) * 3 * C + h * hs + d] * qkv[(b * T + j) * 3 * C + C + h * hs + d];
          }
          s[j] = dot / std::sqrt(static_cast<double>(hs));
          mx = std::max(mx, s[j]);
        }
        double sum = 0;
        for (int j = 0; j < valid; ++j) sum += (s[j] = std::exp(s[j] - mx));
        for (int j = 0; j < valid; ++j) {
          const double p = s[j] / sum;
          (*att)[((b * NH + h) * T + i) * T + j] = p;
          for (int d = 0; d < hs; ++d) {
            (*out)[(b * T + i) * C + h * hs + d] +=
                p * qkv[(b * T + j) * 3 * C + 2 * C + h * hs + d];
          }
        }
      }
    }
  }
}

void CheckAttention(bool causal, uint64_t seed) {
  SCOPED_TRACE(causal ? "causal" : "bidirectional");
  CpuBackend<double> be;
  const int B = 2, T = 5, C = 8, NH = 2;
  Vec qkv = RandomNormal(B * T * 3 * C, seed);
  const Vec R = RandomNormal(B * T * C, seed + 1);
  Vec att(B * NH * T * T, kNaN);
  auto forward = [&] {
    Vec out(B * T * C, kNaN);
    be.AttentionForward(out.data(), att.data(), qkv.data(), B, T, C, NH, causal);
    return out;
  };
  const Vec out = forward();
  Vec ref_out, ref_att;
  ReferenceAttention(qkv, B, T, C, NH, causal, &ref_out, &ref_att);
  for (size_t k = 0; k < out.size(); ++k) EXPECT_NEAR(out[k], ref_out[k], 1e-13) << k;
  for (size_t k = 0; k < att.size(); ++k) EXPECT_NEAR(att[k], ref_att[k], 1e-14) << k;
  for (int r = 0; r < B * NH * T; ++r) {
    double sum = 0;
    for (int j = 0; j < T; ++j) {
      sum += att[r * T + j];
      if (causal && j > r % T) {
        EXPECT_EQ(att[r * T + j], 0.0) << "row " << r << " col " << j;
      }
    }
    EXPECT_NEAR(sum, 1.0, 1e-14) << "row " << r;
  }
  // dqkv is overwritten and datt is scratch: start both at NaN.
  Vec dqkv(qkv.size(), kNaN), datt(att.size(), kNaN);
  be.AttentionBackward(dqkv.data(), datt.data(), R.data(), qkv.data(), att.data(), B, T, C, NH);
  CheckGradient(std::string("attention_") + (causal ? "causal" : "bidir") + "_qkv", qkv, dqkv, R,
                forward);
}

TEST(OpsGradCheck, AttentionCausal) { CheckAttention(true, 91); }
TEST(OpsGradCheck, AttentionBidirectional) { CheckAttention(false, 101); }

TEST(OpsGradCheck, Gelu) {
  CpuBackend<double> be;
  const size_t n = 64;
  Vec inp = RandomNormal(n, 111, 2.0);
  inp[0] = 0.0;
  inp[1] = -5.0;
  inp[2] = 5.0;
  const Vec R = RandomNormal(n, 112);
  auto forward = [&] {
    Vec out(n, kNaN);
    be.GeluForward(out.data(), inp.data(), n);
    return out;
  };
  const Vec out = forward();
  for (size_t i = 0; i < n; ++i) {
    const double x = inp[i];
    const double ref =
        0.5 * x * (1 + std::tanh(std::sqrt(2 / std::numbers::pi) * (x + 0.044715 * x * x * x)));
    EXPECT_NEAR(out[i], ref, 1e-15 * (1 + std::abs(ref))) << "x=" << x;
  }
  Vec dinp(n, kNaN);
  be.GeluBackward(dinp.data(), inp.data(), R.data(), n);
  CheckGradient("gelu_inp", inp, dinp, R, forward);
  // In place (dinp == dout) gives the same result.
  Vec inplace = R;
  be.GeluBackward(inplace.data(), inp.data(), inplace.data(), n);
  EXPECT_TRUE(BitwiseEqual(inplace.data(), dinp.data(), n * sizeof(double)));
}

TEST(OpsGradCheck, CrossEntropy) {
  CpuBackend<double> be;
  const int N = 6, V = 7;
  Vec logits = RandomNormal(N * V, 121, 2.0);
  std::vector<int32_t> targets(N);
  CounterRng rng(122, 0);
  for (int32_t& t : targets) t = static_cast<int32_t>(rng.Below(V));
  targets[1] = -1;  // ignored rows
  targets[4] = -1;
  const double grad_scale = 0.37;

  // Loss-only pass: logits must come back untouched.
  auto forward = [&] {
    Vec copy = logits, losses(N, kNaN);
    be.CrossEntropyForward(copy.data(), losses.data(), targets.data(), N, V, grad_scale, false);
    EXPECT_TRUE(BitwiseEqual(copy.data(), logits.data(), copy.size() * sizeof(double)));
    return losses;
  };
  const Vec losses = forward();
  for (int i = 0; i < N; ++i) {
    if (targets[i] < 0) {
      EXPECT_EQ(losses[i], 0.0) << "ignored row " << i;
      continue;
    }
    double mx = -1e300, sum = 0;
    for (int j = 0; j < V; ++j) mx = std::max(mx, logits[i * V + j]);
    for (int j = 0; j < V; ++j) sum += std::exp(logits[i * V + j] - mx);
    EXPECT_NEAR(losses[i], std::log(sum) + mx - logits[i * V + targets[i]], 1e-14) << i;
  }

  // With grad: logits become d(grad_scale * sum(losses))/dlogits. The kernel takes no dout, so
  // the projection is the constant grad_scale per row.
  Vec grad = logits, losses_g(N, kNaN);
  be.CrossEntropyForward(grad.data(), losses_g.data(), targets.data(), N, V, grad_scale, true);
  for (int i = 0; i < N; ++i) EXPECT_NEAR(losses_g[i], losses[i], 1e-15) << i;
  for (int i = 0; i < N; ++i) {
    if (targets[i] >= 0) continue;
    EXPECT_EQ(losses_g[i], 0.0) << "ignored row " << i;
    for (int j = 0; j < V; ++j) EXPECT_EQ(grad[i * V + j], 0.0) << "ignored row " << i << "," << j;
  }
  CheckGradient("cross_entropy_logits", logits, grad, Vec(N, grad_scale), forward);

  // grad_scale scales the gradient linearly.
  Vec grad1 = logits, losses1(N);
  be.CrossEntropyForward(grad1.data(), losses1.data(), targets.data(), N, V, 1.0, true);
  for (int k = 0; k < N * V; ++k) EXPECT_NEAR(grad[k], grad_scale * grad1[k], 1e-16) << k;

  // Large logits stay finite (max subtraction).
  Vec big = {1000.0, 999.0, -1000.0}, big_loss(1);
  const int32_t big_target = 1;
  be.CrossEntropyForward(big.data(), big_loss.data(), &big_target, 1, 3, 1.0, true);
  EXPECT_NEAR(big_loss[0], 1.0 + std::log1p(std::exp(-1.0)), 1e-13);
  EXPECT_NEAR(big[0] + big[1] + big[2], 0.0, 1e-15);
}

// ---------------------------------------------------------------------------------------------
// Float vs double on identical (float-representable) inputs. Every kernel is run once per type;
// the error of an element is |f - d| / max(|d|, floor * max|d| over the tensor), floor = 1e-2 by
// default: relative, except for elements that are small next to the tensor's own scale, where
// float's unavoidable cancellation (a dot product summing to ~0) would dominate. A fast exp or
// tanh off by more than ~1e-5 relative shows up directly in att, losses, grad and gelu out.

constexpr double kAgreeTol = 1e-4;

struct Named {
  std::string name;
  Vec values;
};
using Outputs = std::vector<Named>;

double MaxRelDiff(const Vec& f, const Vec& d, double floor_frac) {
  double scale = 0;
  for (double x : d) scale = std::max(scale, std::abs(x));
  const double floor = std::max(floor_frac * scale, 1e-30);
  double worst = 0;
  for (size_t i = 0; i < d.size(); ++i) {
    worst = std::max(worst, std::abs(f[i] - d[i]) / std::max(std::abs(d[i]), floor));
  }
  return worst;
}

// floor_fracs: per output name, a floor other than 1e-2 (each with its reason at the call).
void ExpectAgree(const std::string& op, const Outputs& f, const Outputs& d,
                 const std::vector<std::pair<std::string, double>>& floor_fracs = {}) {
  ASSERT_EQ(f.size(), d.size());
  for (size_t k = 0; k < f.size(); ++k) {
    ASSERT_EQ(f[k].values.size(), d[k].values.size()) << f[k].name;
    for (double x : f[k].values) ASSERT_TRUE(std::isfinite(x)) << op << " " << f[k].name;
    double floor_frac = 1e-2;
    for (const auto& [name, frac] : floor_fracs) {
      if (name == f[k].name) floor_frac = frac;
    }
    const double err = MaxRelDiff(f[k].values, d[k].values, floor_frac);
    Report("float_vs_double_" + op + "_" + f[k].name, err);
    EXPECT_LT(err, kAgreeTol) << op << " " << f[k].name;
  }
}

template <typename T>
Outputs EncoderOutputs(const std::vector<int32_t>& tokens, const Vec& wte, const Vec& wpe,
                       const Vec& dout, int B, int Tn, int C, int V) {
  CpuBackend<T> be;
  std::vector<T> e = Cast<T>(wte), p = Cast<T>(wpe), d = Cast<T>(dout);
  std::vector<T> out(B * Tn * C), dwte(V * C), dwpe(Tn * C);
  be.EncoderForward(out.data(), tokens.data(), e.data(), p.data(), B, Tn, C);
  be.EncoderBackward(dwte.data(), dwpe.data(), d.data(), tokens.data(), B, Tn, C);
  return {{"out", ToVec(out)}, {"dwte", ToVec(dwte)}, {"dwpe", ToVec(dwpe)}};
}

TEST(OpsFloatVsDouble, Encoder) {
  const int B = 3, T = 9, C = 37, V = 5;  // few tokens: many collisions in dwte
  std::vector<int32_t> tokens(B * T);
  CounterRng rng(201, 0);
  for (int32_t& t : tokens) t = static_cast<int32_t>(rng.Below(V));
  const Vec wte = RoundToFloat(RandomNormal(V * C, 202)),
            wpe = RoundToFloat(RandomNormal(T * C, 203));
  const Vec dout = RoundToFloat(RandomNormal(B * T * C, 204));
  ExpectAgree("encoder", EncoderOutputs<float>(tokens, wte, wpe, dout, B, T, C, V),
              EncoderOutputs<double>(tokens, wte, wpe, dout, B, T, C, V));
}

template <typename T>
Outputs LayerNormOutputs(const Vec& inp, const Vec& w, const Vec& b, const Vec& dout, int N,
                         int C) {
  CpuBackend<T> be;
  std::vector<T> x = Cast<T>(inp), wt = Cast<T>(w), bt = Cast<T>(b), d = Cast<T>(dout);
  std::vector<T> out(N * C), mean(N), rstd(N), dinp(N * C), dw(C), db(C);
  be.LayerNormForward(out.data(), mean.data(), rstd.data(), x.data(), wt.data(), bt.data(), N, C);
  be.LayerNormBackward(dinp.data(), dw.data(), db.data(), d.data(), x.data(), wt.data(),
                       mean.data(), rstd.data(), N, C);
  return {{"out", ToVec(out)},   {"mean", ToVec(mean)}, {"rstd", ToVec(rstd)},
          {"dinp", ToVec(dinp)}, {"dw", ToVec(dw)},     {"db", ToVec(db)}};
}

TEST(OpsFloatVsDouble, LayerNorm) {
  const int N = 16, C = 67;  // odd C exercises the vector tails
  const Vec inp = RoundToFloat(RandomNormal(N * C, 211, 1.5, 0.5));
  const Vec w = RoundToFloat(RandomNormal(C, 212, 0.3, 1.0)),
            b = RoundToFloat(RandomNormal(C, 213, 0.3));
  const Vec dout = RoundToFloat(RandomNormal(N * C, 214));
  ExpectAgree("layernorm", LayerNormOutputs<float>(inp, w, b, dout, N, C),
              LayerNormOutputs<double>(inp, w, b, dout, N, C));
}

template <typename T>
Outputs MatmulOutputs(const Vec& inp, const Vec& w, const Vec& bias, const Vec& dout, int N, int C,
                      int OC, double alpha) {
  CpuBackend<T> be;
  std::vector<T> x = Cast<T>(inp), wt = Cast<T>(w), bt = Cast<T>(bias), d = Cast<T>(dout);
  std::vector<T> out(N * OC), dinp(N * C), dw(OC * C), dbias(OC);
  be.MatmulForward(out.data(), x.data(), wt.data(), bt.data(), N, C, OC, static_cast<T>(alpha),
                   false);
  be.MatmulBackward(dinp.data(), dw.data(), dbias.data(), d.data(), x.data(), wt.data(), N, C, OC,
                    static_cast<T>(alpha));
  return {{"out", ToVec(out)}, {"dinp", ToVec(dinp)}, {"dw", ToVec(dw)}, {"dbias", ToVec(dbias)}};
}

TEST(OpsFloatVsDouble, Matmul) {
  const int N = 16, C = 67, OC = 33;
  const Vec inp = RoundToFloat(RandomNormal(N * C, 221)),
            w = RoundToFloat(RandomNormal(OC * C, 222));
  const Vec bias = RoundToFloat(RandomNormal(OC, 223)),
            dout = RoundToFloat(RandomNormal(N * OC, 224));
  ExpectAgree("matmul", MatmulOutputs<float>(inp, w, bias, dout, N, C, OC, 0.5),
              MatmulOutputs<double>(inp, w, bias, dout, N, C, OC, 0.5));
}

template <typename T>
Outputs AttentionOutputs(const Vec& qkv, const Vec& dout, int B, int Tn, int C, int NH,
                         bool causal) {
  CpuBackend<T> be;
  std::vector<T> x = Cast<T>(qkv), d = Cast<T>(dout);
  std::vector<T> out(B * Tn * C), att(B * NH * Tn * Tn), dqkv(x.size()), datt(att.size());
  be.AttentionForward(out.data(), att.data(), x.data(), B, Tn, C, NH, causal);
  be.AttentionBackward(dqkv.data(), datt.data(), d.data(), x.data(), att.data(), B, Tn, C, NH);
  return {{"out", ToVec(out)}, {"att", ToVec(att)}, {"dqkv", ToVec(dqkv)}};
}

TEST(OpsFloatVsDouble, Attention) {
  const int B = 2, T = 16, C = 32, NH = 4;
  // Scale 1.5 spreads the scores (std ~2.3 after 1/sqrt(hs), extremes ~+-9), so the softmax exp
  // sees a range. (At scale 2 float's own cancellation in dS = P * (dP - rowsum(P * dP)) already
  // reaches 5e-5..7e-5 on dqkv, too close to the tolerance; at 1.5 it is ~1e-5.)
  const Vec qkv = RoundToFloat(RandomNormal(B * T * 3 * C, 231, 1.5));
  const Vec dout = RoundToFloat(RandomNormal(B * T * C, 232));
  for (bool causal : {true, false}) {
    const std::string op = causal ? "attention_causal" : "attention_bidir";
    ExpectAgree(op, AttentionOutputs<float>(qkv, dout, B, T, C, NH, causal),
                AttentionOutputs<double>(qkv, dout, B, T, C, NH, causal));
  }
}

template <typename T>
Outputs GeluOutputs(const Vec& inp, const Vec& dout) {
  CpuBackend<T> be;
  std::vector<T> x = Cast<T>(inp), d = Cast<T>(dout), out(x.size()), dinp(x.size());
  be.GeluForward(out.data(), x.data(), x.size());
  be.GeluBackward(dinp.data(), x.data(), d.data(), x.size());
  return {{"out", ToVec(out)}, {"dinp", ToVec(dinp)}};
}

TEST(OpsFloatVsDouble, Gelu) {
  const size_t n = 2001;
  Vec inp(n);
  for (size_t i = 0; i < n; ++i) inp[i] = -6.0 + 12.0 * static_cast<double>(i) / (n - 1);
  inp = RoundToFloat(inp);
  const Vec dout = RoundToFloat(RandomNormal(n, 241));
  // dinp: floor 1e-1 instead of 1e-2. For |x| ~ 4..6, gelu'(x) = 0.5 (1 + t) + 0.5 x (1 - t^2) k
  // (1 + 3 * 0.044715 x^2) cancels: 1 - t^2 with t ~ +-1 turns the float tanh's absolute error
  // into an absolute error of gelu' amplified ~11x. Measured max |error of gelu'| over [-6, 6]:
  // 2.0e-6 with the fast Tanh (1.8e-7 abs err near +-1), 5.6e-7 with libm tanhf; times |dout| up
  // to ~3 against 1e-2 * max|dinp| ~ 0.03 that is 1.2e-4, over the tolerance, though only 2e-6
  // of the tensor's scale. With floor 1e-1 the measured error is ~1.2e-5.
  ExpectAgree("gelu", GeluOutputs<float>(inp, dout), GeluOutputs<double>(inp, dout),
              {{"dinp", 1e-1}});
}

template <typename T>
Outputs CrossEntropyOutputs(const Vec& logits, const std::vector<int32_t>& targets, int N, int V) {
  CpuBackend<T> be;
  std::vector<T> x = Cast<T>(logits), losses(N), losses_nograd(N);
  std::vector<T> copy = x;
  be.CrossEntropyForward(copy.data(), losses_nograd.data(), targets.data(), N, V, T(1), false);
  be.CrossEntropyForward(x.data(), losses.data(), targets.data(), N, V, T(0.25), true);
  return {{"losses", ToVec(losses)}, {"losses_nograd", ToVec(losses_nograd)}, {"grad", ToVec(x)}};
}

TEST(OpsFloatVsDouble, CrossEntropy) {
  const int N = 8, V = 101;
  const Vec logits = RoundToFloat(RandomNormal(N * V, 251, 3.0));
  std::vector<int32_t> targets(N);
  CounterRng rng(252, 0);
  for (int32_t& t : targets) t = static_cast<int32_t>(rng.Below(V));
  targets[5] = -1;
  ExpectAgree("cross_entropy", CrossEntropyOutputs<float>(logits, targets, N, V),
              CrossEntropyOutputs<double>(logits, targets, N, V));
}

// ---------------------------------------------------------------------------------------------
// The float fast exp / tanh against libm.

TEST(FastMath, ExpRelativeError) {
  double worst = 0, worst_x = 0;
  auto check = [&](float x) {
    const double ref = std::exp(static_cast<double>(x));
    const double err = std::abs(static_cast<double>(cpu::Exp(x)) - ref) / ref;
    if (err > worst) {
      worst = err;
      worst_x = x;
    }
  };
  const int n = 1 << 22;
  for (int i = 0; i <= n; ++i) check(static_cast<float>(-80.0 + 160.0 * i / n));
  CounterRng rng(301, 0);
  for (int i = 0; i < (1 << 20); ++i) check(static_cast<float>(-80.0 + 160.0 * rng.Uniform()));
  // Every float within 2^12 ulps of 0 and of +-1 (where exp is close to 1 and e).
  for (float c : {0.0f, 1.0f, -1.0f}) {
    float up = c, down = c;
    for (int i = 0; i < 4096; ++i) {
      check(up = std::nextafter(up, 100.0f));
      check(down = std::nextafter(down, -100.0f));
    }
  }
  Report("exp_max_rel_err", worst);
  EXPECT_LT(worst, 5e-7) << "at x=" << worst_x;
  EXPECT_EQ(cpu::Exp(0.0f), 1.0f);
  // Clamped outside [-87, 88]: finite and positive, never inf or 0.
  for (float x : {-1000.0f, -100.0f, -87.0f, 88.0f, 100.0f, 1000.0f}) {
    EXPECT_TRUE(std::isfinite(cpu::Exp(x))) << x;
    EXPECT_GT(cpu::Exp(x), 0.0f) << x;
  }
}

TEST(FastMath, TanhAbsoluteError) {
  double worst = 0, worst_x = 0;
  auto check = [&](float x) {
    const double err =
        std::abs(static_cast<double>(cpu::Tanh(x)) - std::tanh(static_cast<double>(x)));
    if (err > worst) {
      worst = err;
      worst_x = x;
    }
  };
  const int n = 1 << 22;
  for (int i = 0; i <= n; ++i) check(static_cast<float>(-10.0 + 20.0 * i / n));
  CounterRng rng(302, 0);
  for (int i = 0; i < (1 << 20); ++i) check(static_cast<float>(-10.0 + 20.0 * rng.Uniform()));
  Report("tanh_max_abs_err", worst);
  EXPECT_LT(worst, 5e-7) << "at x=" << worst_x;
  EXPECT_EQ(cpu::Tanh(0.0f), 0.0f);
  EXPECT_EQ(cpu::Tanh(50.0f), 1.0f);
  EXPECT_EQ(cpu::Tanh(-50.0f), -1.0f);
  EXPECT_EQ(cpu::Tanh(std::numeric_limits<float>::infinity()), 1.0f);
  EXPECT_EQ(cpu::Tanh(-std::numeric_limits<float>::infinity()), -1.0f);
}

// ---------------------------------------------------------------------------------------------
// AdamW and SumSquares.

// The documented update in double, with the float hyperparameters exactly as the kernel gets them.
void ReferenceAdamW(Vec& p, const Vec& g, Vec& m, Vec& v, float lr, float beta1, float beta2,
                    float eps, float wd, int64_t t, float grad_scale) {
  const double b1 = beta1, b2 = beta2;
  const double bc1 = 1 - std::pow(b1, static_cast<double>(t));
  const double bc2 = 1 - std::pow(b2, static_cast<double>(t));
  for (size_t i = 0; i < p.size(); ++i) {
    const double gi = g[i] * static_cast<double>(grad_scale);
    m[i] = b1 * m[i] + (1 - b1) * gi;
    v[i] = b2 * v[i] + (1 - b2) * gi * gi;
    p[i] -= static_cast<double>(lr) *
            ((m[i] / bc1) / (std::sqrt(v[i] / bc2) + static_cast<double>(eps)) +
             static_cast<double>(wd) * p[i]);
  }
}

template <typename T>
void CheckAdamW(double tol) {
  CpuBackend<T> be;
  const size_t n = 37;
  const float lr = 1e-2f, beta1 = 0.9f, beta2 = 0.95f, eps = 1e-8f, wd = 0.1f, grad_scale = 0.5f;
  Vec p_ref = RoundToFloat(RandomNormal(n, 401)), m_ref(n, 0.0), v_ref(n, 0.0);
  std::vector<T> p = Cast<T>(p_ref), m(n, T(0)), v(n, T(0));
  double worst = 0;
  for (int64_t t = 1; t <= 5; ++t) {
    const Vec g = RoundToFloat(RandomNormal(n, 410 + t, 3.0));
    std::vector<T> gt = Cast<T>(g);
    be.AdamW(p.data(), gt.data(), m.data(), v.data(), n, lr, beta1, beta2, eps, wd, t, grad_scale);
    // The gradients are consumed: zeroed in the same pass (backend.h).
    ASSERT_EQ(gt, std::vector<T>(n, T(0))) << "t=" << t;
    ReferenceAdamW(p_ref, g, m_ref, v_ref, lr, beta1, beta2, eps, wd, t, grad_scale);
    for (size_t i = 0; i < n; ++i) {
      worst = std::max(worst, std::abs(p[i] - p_ref[i]) / std::max(1.0, std::abs(p_ref[i])));
      ASSERT_NEAR(p[i], p_ref[i], tol * std::max(1.0, std::abs(p_ref[i])))
          << "t=" << t << " i=" << i;
      ASSERT_NEAR(m[i], m_ref[i], tol * std::max(1.0, std::abs(m_ref[i])))
          << "t=" << t << " i=" << i;
      ASSERT_NEAR(v[i], v_ref[i], tol * std::max(1.0, std::abs(v_ref[i])))
          << "t=" << t << " i=" << i;
    }
  }
  Report(std::string("adamw_worst_param_err_") + (sizeof(T) == 4 ? "float" : "double"), worst);
}

TEST(OpsAdamW, MatchesReferenceDouble) { CheckAdamW<double>(1e-14); }
// Float state against the double reference: each of the 5 steps rounds m, v, the bias
// corrections, sqrt, the division and the update (~6 fp32 roundings of O(1) values, each <= u =
// 2^-24 relative, and the inputs are exactly representable), so at most ~5 * 6 u = 30 u ~ 1.8e-6
// accumulates, worst case, on any machine: 2e-6 (33.5 u) is that bound, not a fit.
TEST(OpsAdamW, MatchesReferenceFloat) { CheckAdamW<float>(2e-6); }

TEST(OpsAdamW, FirstStepIsSignedLearningRate) {
  // t=1, no decay: m/bc1 = g, v/bc2 = g^2, so the step is lr * g / (|g| + eps) ~ lr * sign(g),
  // whatever grad_scale is.
  CpuBackend<double> be;
  Vec p = {1.0, -2.0, 0.5}, g = {3.0, -0.25, 1e-3}, m(3, 0.0), v(3, 0.0);
  be.AdamW(p.data(), g.data(), m.data(), v.data(), 3, 0.1f, 0.9f, 0.999f, 1e-12f, 0.0f, 1, 7.0f);
  EXPECT_NEAR(p[0], 1.0 - 0.1f, 1e-9);
  EXPECT_NEAR(p[1], -2.0 + 0.1f, 1e-9);
  EXPECT_NEAR(p[2], 0.5 - 0.1f, 1e-7);
  EXPECT_NEAR(m[0], (1 - 0.9f) * 21.0, 1e-12);
  EXPECT_NEAR(v[0], (1 - 0.999f) * 441.0, 1e-12);
  EXPECT_EQ(g, Vec(3, 0.0));
}

TEST(OpsAdamW, WeightDecayIsDecoupled) {
  // Zero gradients and zero moments: only the decay acts, p *= 1 - lr * wd, not rescaled by the
  // adaptive denominator (which coupled L2 through the gradient would be).
  CpuBackend<double> be;
  Vec p = {1.0, -3.0, 0.0}, g(3, 0.0), m(3, 0.0), v(3, 0.0);
  const float lr = 0.01f, wd = 0.2f;
  be.AdamW(p.data(), g.data(), m.data(), v.data(), 3, lr, 0.9f, 0.999f, 1e-8f, wd, 3, 1.0f);
  const double f = 1 - static_cast<double>(lr) * static_cast<double>(wd);
  EXPECT_NEAR(p[0], 1.0 * f, 1e-15);
  EXPECT_NEAR(p[1], -3.0 * f, 1e-15);
  EXPECT_EQ(p[2], 0.0);
  EXPECT_EQ(m, Vec(3, 0.0));
  EXPECT_EQ(v, Vec(3, 0.0));
}

template <typename T>
void CheckSumSquares() {
  CpuBackend<T> be;
  for (size_t n :
       {size_t{0}, size_t{1}, size_t{2}, size_t{3}, size_t{17}, size_t{1000}, size_t{100003}}) {
    const std::vector<T> x = Cast<T>(RandomNormal(n, 500 + n, 2.0));
    long double ref = 0;
    for (T xi : x) ref += static_cast<long double>(xi) * xi;
    const double got = be.SumSquares(x.data(), n);
    EXPECT_NEAR(got, static_cast<double>(ref), 1e-13 * static_cast<double>(ref)) << "n=" << n;
    // Deterministic.
    EXPECT_EQ(be.SumSquares(x.data(), n), got) << "n=" << n;
  }
}

TEST(OpsSumSquares, MatchesDirectSumDouble) { CheckSumSquares<double>(); }
// Accumulated in double: float inputs lose nothing to float accumulation.
TEST(OpsSumSquares, MatchesDirectSumFloat) { CheckSumSquares<float>(); }

// ---------------------------------------------------------------------------------------------
// Row gather and scatter (BERT's head): bitwise what a plain loop gives, for no rows, every row,
// row sets that skip the first and the last rows, and a large random set (every thread's share).

template <typename T>
void CheckGatherScatter(int N, int C, const std::vector<int32_t>& rows, uint64_t seed) {
  CpuBackend<T> be;
  const int M = static_cast<int>(rows.size());
  SCOPED_TRACE("N=" + std::to_string(N) + " C=" + std::to_string(C) + " M=" + std::to_string(M));
  const T poison = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> src = Cast<T>(RandomNormal(static_cast<size_t>(N) * C, seed));
  // GatherRows writes dst's M rows and nothing after them (one poisoned row past the end).
  std::vector<T> gathered(static_cast<size_t>(M + 1) * C, poison);
  std::vector<T> expected_gather(gathered.size(), poison);
  for (int i = 0; i < M; ++i) {
    for (int c = 0; c < C; ++c) {
      expected_gather[static_cast<size_t>(i) * C + c] = src[static_cast<size_t>(rows[i]) * C + c];
    }
  }
  be.GatherRows(gathered.data(), src.data(), rows.data(), M, C);
  EXPECT_TRUE(BitwiseEqual(gathered.data(), expected_gather.data(), gathered.size() * sizeof(T)));

  // ScatterRows writes every element of dst (N,C): the rows' values, zero elsewhere, over a dst
  // that starts poisoned; the row past the end stays untouched.
  const std::vector<T> head = Cast<T>(RandomNormal(static_cast<size_t>(M) * C, seed + 1));
  std::vector<T> scattered(static_cast<size_t>(N + 1) * C, poison);
  std::vector<T> expected_scatter(scattered.size(), poison);
  for (size_t k = 0; k < static_cast<size_t>(N) * C; ++k) expected_scatter[k] = T(0);
  for (int i = 0; i < M; ++i) {
    for (int c = 0; c < C; ++c) {
      expected_scatter[static_cast<size_t>(rows[i]) * C + c] = head[static_cast<size_t>(i) * C + c];
    }
  }
  be.ScatterRows(scattered.data(), head.data(), rows.data(), M, N, C);
  EXPECT_TRUE(
      BitwiseEqual(scattered.data(), expected_scatter.data(), scattered.size() * sizeof(T)));

  // Scatter after gather puts the gathered rows back where they were.
  std::vector<T> round_trip(static_cast<size_t>(N) * C, poison);
  be.ScatterRows(round_trip.data(), gathered.data(), rows.data(), M, N, C);
  for (int i = 0; i < M; ++i) {
    EXPECT_TRUE(BitwiseEqual(round_trip.data() + static_cast<size_t>(rows[i]) * C,
                             src.data() + static_cast<size_t>(rows[i]) * C, sizeof(T) * C));
  }
}

template <typename T>
void CheckGatherScatterCases() {
  const int N = 7;
  for (int C : {1, 5, 8}) {
    std::vector<int32_t> all(N);
    for (int i = 0; i < N; ++i) all[i] = i;
    CheckGatherScatter<T>(N, C, {}, 801);               // M = 0
    CheckGatherScatter<T>(N, C, all, 802);              // M = N
    CheckGatherScatter<T>(N, C, {2, 3, 6}, 803);        // not from row 0, through the last
    CheckGatherScatter<T>(N, C, {1, 4}, 804);           // neither the first nor the last row
    CheckGatherScatter<T>(N, C, {0}, 805);              // the first row only
    CheckGatherScatter<T>(N, C, {N - 1}, 806);          // the last row only
    CheckGatherScatter<T>(N, C, {0, 1, 2, 5, 6}, 807);  // one gap in the middle
  }
  // Many rows, about 15% of them (BERT's masking rate), over every thread's share.
  CounterRng rng(808, 0);
  std::vector<int32_t> some;
  for (int i = 0; i < 3000; ++i) {
    if (rng.Uniform() < 0.15) some.push_back(i);
  }
  CheckGatherScatter<T>(3000, 33, some, 809);
}

TEST(OpsRows, GatherAndScatterMatchALoopDouble) { CheckGatherScatterCases<double>(); }
TEST(OpsRows, GatherAndScatterMatchALoopFloat) { CheckGatherScatterCases<float>(); }

// ---------------------------------------------------------------------------------------------
// Determinism: the same inputs give bitwise the same outputs, run after run.

template <typename T>
void CheckAttentionBackwardDeterministic() {
  CpuBackend<T> be;
  const int B = 3, Tn = 33, C = 48, NH = 4;
  const std::vector<T> qkv = Cast<T>(RandomNormal(B * Tn * 3 * C, 601));
  const std::vector<T> dout = Cast<T>(RandomNormal(B * Tn * C, 602));
  std::vector<T> out(B * Tn * C), att(B * NH * Tn * Tn);
  be.AttentionForward(out.data(), att.data(), qkv.data(), B, Tn, C, NH, true);
  std::vector<T> dqkv1(qkv.size()), dqkv2(qkv.size(), T(7)), datt1(att.size()), datt2(att.size());
  be.AttentionBackward(dqkv1.data(), datt1.data(), dout.data(), qkv.data(), att.data(), B, Tn, C,
                       NH);
  be.AttentionBackward(dqkv2.data(), datt2.data(), dout.data(), qkv.data(), att.data(), B, Tn, C,
                       NH);
  EXPECT_TRUE(BitwiseEqual(dqkv1.data(), dqkv2.data(), dqkv1.size() * sizeof(T)));
  EXPECT_TRUE(BitwiseEqual(datt1.data(), datt2.data(), datt1.size() * sizeof(T)));
}

template <typename T>
void CheckLayerNormBackwardDeterministic() {
  CpuBackend<T> be;
  const int N = 97, C = 131;
  const std::vector<T> inp = Cast<T>(RandomNormal(N * C, 611, 1.5, 0.5));
  const std::vector<T> w = Cast<T>(RandomNormal(C, 612, 0.3, 1.0));
  const std::vector<T> b = Cast<T>(RandomNormal(C, 613, 0.3));
  const std::vector<T> dout = Cast<T>(RandomNormal(N * C, 614));
  std::vector<T> out(N * C), mean(N), rstd(N);
  be.LayerNormForward(out.data(), mean.data(), rstd.data(), inp.data(), w.data(), b.data(), N, C);
  // Accumulating outputs start from the same non-zero values each time.
  const std::vector<T> dinp0 = Cast<T>(RandomNormal(N * C, 615)),
                       dw0 = Cast<T>(RandomNormal(C, 616));
  const std::vector<T> db0 = Cast<T>(RandomNormal(C, 617));
  std::vector<T> dinp1 = dinp0, dw1 = dw0, db1 = db0, dinp2 = dinp0, dw2 = dw0, db2 = db0;
  be.LayerNormBackward(dinp1.data(), dw1.data(), db1.data(), dout.data(), inp.data(), w.data(),
                       mean.data(), rstd.data(), N, C);
  be.LayerNormBackward(dinp2.data(), dw2.data(), db2.data(), dout.data(), inp.data(), w.data(),
                       mean.data(), rstd.data(), N, C);
  EXPECT_TRUE(BitwiseEqual(dinp1.data(), dinp2.data(), dinp1.size() * sizeof(T)));
  EXPECT_TRUE(BitwiseEqual(dw1.data(), dw2.data(), dw1.size() * sizeof(T)));
  EXPECT_TRUE(BitwiseEqual(db1.data(), db2.data(), db1.size() * sizeof(T)));
}

TEST(OpsDeterminism, AttentionBackwardFloat) { CheckAttentionBackwardDeterministic<float>(); }
TEST(OpsDeterminism, AttentionBackwardDouble) { CheckAttentionBackwardDeterministic<double>(); }
TEST(OpsDeterminism, LayerNormBackwardFloat) { CheckLayerNormBackwardDeterministic<float>(); }
TEST(OpsDeterminism, LayerNormBackwardDouble) { CheckLayerNormBackwardDeterministic<double>(); }

}  // namespace
}  // namespace raptr
