// CpuBackend's flash attention (backend.h: FlashAttentionForward / FlashAttentionBackward)
// against the materialized AttentionForward / AttentionBackward and an exact (double) reference,
// a double finite-difference gradient check, bitwise determinism across runs and OpenMP thread
// counts, and the FLOPs it counts. Shapes: T in {1, 7, 64, 130} (one tile, a full tile, a tile
// and a partial one past the 64-tile), B in {1, 3}, NH in {1, 4}, causal and bidirectional, plus
// a GPT-2-sized head (hs = 64). Every output is poisoned with NaN first, so an element left
// unwritten fails.
//
// Rounding bound (first-order forward error analysis, Higham's gamma_n = n u / (1 - n u), u the
// unit roundoff, 2^-24 for float, 2^-53 for double). With exact s_ij = q_i.k_j / sqrt(hs),
// a_ij = sum_d |q_id k_jd| / sqrt(hs) (the scores' magnitude), A_i = max_j a_ij over the row's
// unmasked keys and lse_i the exact log-sum-exp:
//   - a computed score is off by at most gamma(hs + 1) a_ij (a dot product of hs terms, a scale);
//   - a computed probability (materialized: exp(s - max) / sum; flash: exp(s - m) rescaled and
//     divided by l, or exp(s - lse) with lse itself rounded) is off by a relative
//     eps_i <= gamma(n) F_i, F_i = 2 A_i + |lse_i| + 2: the two score errors in s - lse, lse's
//     own rounding (u |lse_i|) and the sum of up to T terms, exp, log and the rescalings (the
//     + 2, with n = hs + T + 8 covering every chain of roundings here);
//   - a sum over j of such terms adds gamma(T) of the sum of their magnitudes.
// So an output is off by at most 2 gamma(n) M, where M is the same expression evaluated on
// magnitudes: out_id: F_i sum_j p_ij |v_jd|; lse_i: F_i; with dP_ij = dO_i.v_j, its magnitude
// b_ij = sum_d |dO_id v_jd|, D_i = sum_j p_ij dP_ij (= dO_i.out_i) and its magnitude
// B_i = sum_j p_ij b_ij, dS_ij = p_ij (dP_ij - D_i) has magnitude G_ij = p_ij F_i (b_ij + 2 B_i)
// (D's error includes that of the out it is computed from), and dq_id: sum_j G_ij |k_jd| /
// sqrt(hs), dk_jd: sum_i G_ij |q_id| / sqrt(hs), dv_jd: F_i-weighted sum_i p_ij |dO_id|. Two
// implementations then differ by at most twice that. A wrong index or a dropped key is an O(1)
// error next to M; the tests record the worst error / bound ratio seen (see --gtest_output=xml).
#include <omp.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "common/random.h"
#include "gtest/gtest.h"
#include "worker/engine/cpu/cpu_backend.h"

namespace raptr {
namespace {

using Vec = std::vector<double>;

void Report(const std::string& key, double value) {
  char buf[32];
  std::snprintf(buf, sizeof(buf), "%.3g", value);
  ::testing::Test::RecordProperty(key, buf);
  std::printf("  %-64s %s\n", key.c_str(), buf);
}

// Sets the calling thread's OpenMP thread count for a scope.
class ScopedOmpThreads {
 public:
  explicit ScopedOmpThreads(int n) : saved_(omp_get_max_threads()) { omp_set_num_threads(n); }
  ~ScopedOmpThreads() { omp_set_num_threads(saved_); }
  ScopedOmpThreads(const ScopedOmpThreads&) = delete;
  ScopedOmpThreads& operator=(const ScopedOmpThreads&) = delete;

 private:
  int saved_;
};

struct Shape {
  int B, T, C, NH;
  bool causal;
  std::string Name() const {
    char buf[64];
    std::snprintf(buf, sizeof(buf), "B%d_T%d_C%d_NH%d_%s", B, T, C, NH,
                  causal ? "causal" : "bidir");
    return buf;
  }
  size_t N() const { return static_cast<size_t>(B) * T; }
};

// The table of the issue: T x B x NH x mask, hs = 12 with one head and 8 with four; and a
// GPT-2-sized head (hs = 64) past one tile.
std::vector<Shape> Shapes() {
  std::vector<Shape> s;
  for (int T : {1, 7, 64, 130}) {
    for (int B : {1, 3}) {
      for (int NH : {1, 4}) {
        for (bool causal : {true, false}) s.push_back({B, T, NH == 1 ? 12 : 32, NH, causal});
      }
    }
  }
  for (bool causal : {true, false}) s.push_back({1, 130, 128, 2, causal});
  return s;
}

// Float-representable inputs (so float and double backends see the same values). q and k have
// a standard deviation of 1.5: the scores then spread over several units (peaked softmax rows).
Vec Inputs(size_t n, uint64_t seed, double scale) {
  CounterRng rng(seed, 3);
  Vec v(n);
  for (double& x : v) x = static_cast<float>(scale * rng.Normal());
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

// The exact attention (double, from the inputs as given) and the magnitudes M of the header's
// bound, element by element.
struct Exact {
  Vec out, lse, dqkv;
  Vec out_mag, lse_mag, dqkv_mag;
};

Exact ExactAttention(const Vec& qkv, const Vec& dout, const Shape& s) {
  const int B = s.B, T = s.T, C = s.C, NH = s.NH, hs = C / NH;
  const double scale = 1.0 / std::sqrt(static_cast<double>(hs));
  const size_t C3 = 3 * static_cast<size_t>(C);
  Exact e;
  e.out.assign(s.N() * C, 0.0);
  e.out_mag.assign(s.N() * C, 0.0);
  e.lse.assign(static_cast<size_t>(B) * NH * T, 0.0);
  e.lse_mag.assign(e.lse.size(), 0.0);
  e.dqkv.assign(s.N() * C3, 0.0);
  e.dqkv_mag.assign(s.N() * C3, 0.0);
  auto valid = [&](int i, int j) { return !(s.causal && j > i); };
  for (int b = 0; b < B; ++b) {
    for (int h = 0; h < NH; ++h) {
      auto q = [&](int t, int d) { return qkv[(b * T + t) * C3 + h * hs + d]; };
      auto k = [&](int t, int d) { return qkv[(b * T + t) * C3 + C + h * hs + d]; };
      auto v = [&](int t, int d) { return qkv[(b * T + t) * C3 + 2 * C + h * hs + d]; };
      auto dO = [&](int t, int d) { return dout[(b * T + t) * C + h * hs + d]; };
      const size_t TT = static_cast<size_t>(T) * T;
      Vec p(TT, 0.0), dp(TT, 0.0), bmag(TT, 0.0), F(T), D(T, 0.0), Bm(T, 0.0);
      for (int i = 0; i < T; ++i) {
        Vec sc(T);
        double mx = -1e300, A = 0;
        for (int j = 0; j < T; ++j) {
          double dot = 0, mag = 0;
          for (int d = 0; d < hs; ++d) {
            dot += q(i, d) * k(j, d);
            mag += std::abs(q(i, d) * k(j, d));
          }
          sc[j] = dot * scale;
          if (valid(i, j)) {
            mx = std::max(mx, sc[j]);
            A = std::max(A, mag * scale);
          }
        }
        double sum = 0;
        for (int j = 0; j < T; ++j) sum += valid(i, j) ? std::exp(sc[j] - mx) : 0.0;
        const double lse = mx + std::log(sum);
        const size_t li = (static_cast<size_t>(b) * NH + h) * T + i;
        e.lse[li] = lse;
        F[i] = 2 * A + std::abs(lse) + 2;
        e.lse_mag[li] = F[i];
        for (int j = 0; j < T; ++j) {
          if (!valid(i, j)) continue;
          const double pij = std::exp(sc[j] - lse);
          p[i * T + j] = pij;
          double dpij = 0, bij = 0;
          for (int d = 0; d < hs; ++d) {
            e.out[(b * T + i) * C + h * hs + d] += pij * v(j, d);
            e.out_mag[(b * T + i) * C + h * hs + d] += F[i] * pij * std::abs(v(j, d));
            dpij += dO(i, d) * v(j, d);
            bij += std::abs(dO(i, d) * v(j, d));
          }
          dp[i * T + j] = dpij;
          bmag[i * T + j] = bij;
          D[i] += pij * dpij;
          Bm[i] += pij * bij;
        }
      }
      for (int i = 0; i < T; ++i) {
        for (int j = 0; j < T; ++j) {
          const double pij = p[i * T + j];
          if (pij == 0.0) continue;
          const double ds = pij * (dp[i * T + j] - D[i]);
          const double G = pij * F[i] * (bmag[i * T + j] + 2 * Bm[i]);
          for (int d = 0; d < hs; ++d) {
            const size_t qi = (b * T + i) * C3 + h * hs + d, kj = (b * T + j) * C3 + C + h * hs + d;
            const size_t vj = kj + C;
            e.dqkv[qi] += scale * ds * k(j, d);
            e.dqkv_mag[qi] += scale * G * std::abs(k(j, d));
            e.dqkv[kj] += scale * ds * q(i, d);
            e.dqkv_mag[kj] += scale * G * std::abs(q(i, d));
            e.dqkv[vj] += pij * dO(i, d);
            e.dqkv_mag[vj] += F[i] * pij * std::abs(dO(i, d));
          }
        }
      }
    }
  }
  return e;
}

template <typename T>
double Gamma(const Shape& s) {
  const double u = std::numeric_limits<T>::epsilon() / 2;
  const double n = s.C / s.NH + s.T + 8;
  return n * u / (1 - n * u);
}

// Checks |got - want| <= factor * gamma * mag element by element (NaN fails); returns the worst
// ratio of error to bound.
double CheckBound(const std::string& what, const Vec& got, const Vec& want, const Vec& mag,
                  double gamma, double factor) {
  EXPECT_EQ(got.size(), want.size()) << what;
  double worst = 0;
  int failures = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    const double bound = factor * gamma * mag[i];
    const double err = std::abs(got[i] - want[i]);
    // A zero magnitude means an exactly zero result (e.g. a key no query sees): it must be 0.
    const double ratio = bound > 0 ? err / bound : (err == 0 ? 0 : INFINITY);
    if (!(ratio <= 1.0)) {
      if (++failures <= 5) {
        ADD_FAILURE() << what << "[" << i << "]: got " << got[i] << " want " << want[i] << " bound "
                      << bound;
      }
    }
    worst = std::isnan(ratio) ? INFINITY : std::max(worst, ratio);
  }
  EXPECT_EQ(failures, 0) << what << ": " << failures << " of " << got.size() << " elements off";
  return worst;
}

// One backend's forward and backward on the inputs, outputs poisoned with NaN first.
template <typename T>
struct Results {
  std::vector<T> out, lse, dqkv;     // flash
  std::vector<T> mat_out, mat_dqkv;  // materialized
  uint64_t fwd_flops = 0, bwd_flops = 0;
};

template <typename T>
Results<T> RunBoth(CpuBackend<T>& be, const Vec& qkv_d, const Vec& dout_d, const Shape& s,
                   bool materialized) {
  const T nan = std::numeric_limits<T>::quiet_NaN();
  const std::vector<T> qkv = Cast<T>(qkv_d), dout = Cast<T>(dout_d);
  Results<T> r;
  r.out.assign(s.N() * s.C, nan);
  r.lse.assign(static_cast<size_t>(s.B) * s.NH * s.T, nan);
  r.dqkv.assign(qkv.size(), nan);
  be.ResetFlops();
  be.FlashAttentionForward(r.out.data(), r.lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.causal);
  r.fwd_flops = be.flops_executed();
  be.ResetFlops();
  be.FlashAttentionBackward(r.dqkv.data(), dout.data(), qkv.data(), r.out.data(), r.lse.data(), s.B,
                            s.T, s.C, s.NH, s.causal);
  r.bwd_flops = be.flops_executed();
  if (materialized) {
    const size_t att = static_cast<size_t>(s.B) * s.NH * s.T * s.T;
    std::vector<T> p(att, nan), datt(att, nan);
    r.mat_out.assign(r.out.size(), nan);
    r.mat_dqkv.assign(qkv.size(), nan);
    be.AttentionForward(r.mat_out.data(), p.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.causal);
    be.AttentionBackward(r.mat_dqkv.data(), datt.data(), dout.data(), qkv.data(), p.data(), s.B,
                         s.T, s.C, s.NH);
  }
  return r;
}

// Flash and materialized against the exact values, each within its bound, and against each other
// within twice it; FLOPs as backend.h defines them.
template <typename T>
void CheckAgainstExact(const char* type) {
  CpuBackend<T> be;
  uint64_t seed = 1000;
  double worst[6] = {0, 0, 0, 0, 0, 0};
  for (const Shape& s : Shapes()) {
    SCOPED_TRACE(s.Name());
    const Vec qkv = Inputs(s.N() * 3 * s.C, ++seed, 1.5);
    const Vec dout = Inputs(s.N() * s.C, ++seed, 1.0);
    const Exact e = ExactAttention(qkv, dout, s);
    const Results<T> r = RunBoth(be, qkv, dout, s, true);
    const double g = Gamma<T>(s);
    const std::string tag = std::string(type) + " " + s.Name();
    worst[0] =
        std::max(worst[0], CheckBound(tag + " flash out", ToVec(r.out), e.out, e.out_mag, g, 2));
    worst[1] =
        std::max(worst[1], CheckBound(tag + " flash lse", ToVec(r.lse), e.lse, e.lse_mag, g, 2));
    worst[2] = std::max(worst[2],
                        CheckBound(tag + " flash dqkv", ToVec(r.dqkv), e.dqkv, e.dqkv_mag, g, 2));
    // The materialized ops obey the same bound (so the bound is not fitted to flash alone)...
    CheckBound(tag + " materialized out", ToVec(r.mat_out), e.out, e.out_mag, g, 2);
    CheckBound(tag + " materialized dqkv", ToVec(r.mat_dqkv), e.dqkv, e.dqkv_mag, g, 2);
    // ... and the two differ by at most the sum of their bounds.
    worst[3] = std::max(worst[3], CheckBound(tag + " flash vs materialized out", ToVec(r.out),
                                             ToVec(r.mat_out), e.out_mag, g, 4));
    worst[4] = std::max(worst[4], CheckBound(tag + " flash vs materialized dqkv", ToVec(r.dqkv),
                                             ToVec(r.mat_dqkv), e.dqkv_mag, g, 4));
    // The plain relative error of out against the exact, for scale.
    double num = 0, den = 0;
    for (size_t i = 0; i < e.out.size(); ++i) {
      num = std::max(num, std::abs(r.out[i] - e.out[i]));
      den = std::max(den, std::abs(e.out[i]));
    }
    worst[5] = std::max(worst[5], num / den);
    EXPECT_EQ(r.fwd_flops, FlashAttentionForwardFlops(s.B, s.T, s.C, s.NH, s.causal));
    EXPECT_EQ(r.bwd_flops, FlashAttentionBackwardFlops(s.B, s.T, s.C, s.NH, s.causal));
  }
  const std::string t(type);
  Report("worst_err_over_bound_" + t + "_flash_out", worst[0]);
  Report("worst_err_over_bound_" + t + "_flash_lse", worst[1]);
  Report("worst_err_over_bound_" + t + "_flash_dqkv", worst[2]);
  Report("worst_err_over_bound_" + t + "_flash_vs_materialized_out", worst[3]);
  Report("worst_err_over_bound_" + t + "_flash_vs_materialized_dqkv", worst[4]);
  Report("worst_max_abs_err_over_max_abs_" + t + "_flash_out", worst[5]);
}

TEST(FlashAttention, FloatWithinRoundingBoundOfExactAndMaterialized) {
  CheckAgainstExact<float>("float");
}
TEST(FlashAttention, DoubleWithinRoundingBoundOfExactAndMaterialized) {
  CheckAgainstExact<double>("double");
}

// Double: the analytic backward against finite differences of the forward's out, projected on
// a random R (L = sum(out * R), dout = R), on a sample of qkv elements (every one for T <= 7;
// 40 for the larger shapes, always including the first and the last).
TEST(FlashAttention, DoubleFiniteDifferenceGradient) {
  CpuBackend<double> be;
  constexpr double kH = 1e-4, kTol = 1e-6;
  uint64_t seed = 2000;
  double worst = 0;
  for (const Shape& s : Shapes()) {
    SCOPED_TRACE(s.Name());
    Vec qkv = Inputs(s.N() * 3 * s.C, ++seed, 1.5);
    const Vec R = Inputs(s.N() * s.C, ++seed, 1.0);
    Vec out(s.N() * s.C), lse(static_cast<size_t>(s.B) * s.NH * s.T);
    auto forward = [&] {
      Vec o(out.size(), std::nan("")), l(lse.size(), std::nan(""));
      be.FlashAttentionForward(o.data(), l.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.causal);
      return o;
    };
    be.FlashAttentionForward(out.data(), lse.data(), qkv.data(), s.B, s.T, s.C, s.NH, s.causal);
    Vec dqkv(qkv.size(), std::nan(""));
    be.FlashAttentionBackward(dqkv.data(), R.data(), qkv.data(), out.data(), lse.data(), s.B, s.T,
                              s.C, s.NH, s.causal);
    std::vector<size_t> sample;
    if (s.T <= 7) {
      for (size_t i = 0; i < qkv.size(); ++i) sample.push_back(i);
    } else {
      CounterRng rng(seed, 9);
      sample = {0, qkv.size() - 1};
      while (sample.size() < 40) sample.push_back(rng.Below(qkv.size()));
    }
    ScopedOmpThreads one(1);  // thousands of tiny calls (see ops_gradcheck_test.cc)
    int failures = 0;
    for (size_t i : sample) {
      // Five-point stencil: truncation error O(h^4), so h can be large enough that the outputs'
      // rounding (~1e-16 / h) stays far below the tolerance too.
      const double saved = qkv[i];
      auto at = [&](double delta) {
        qkv[i] = saved + delta;
        Vec o = forward();
        qkv[i] = saved;
        return o;
      };
      const Vec up1 = at(kH), down1 = at(-kH), up2 = at(2 * kH), down2 = at(-2 * kH);
      double diff = 0;
      for (size_t j = 0; j < up1.size(); ++j) {
        diff += (8 * (up1[j] - down1[j]) - (up2[j] - down2[j])) * R[j];
      }
      const double numeric = diff / (12 * kH);
      const double err = std::abs(dqkv[i] - numeric) / std::max(1e-3, std::abs(numeric));
      worst = std::max(worst, std::isnan(err) ? INFINITY : err);
      if (!(err < kTol) && ++failures <= 5) {
        ADD_FAILURE() << "dqkv[" << i << "]: analytic " << dqkv[i] << " numeric " << numeric;
      }
    }
    EXPECT_EQ(failures, 0);
  }
  Report("worst_rel_err_flash_fd_gradient_double", worst);
}

// Bitwise: two runs, and 1, 2 and 3 OpenMP threads. Every output element is computed by one task
// (batch, head, tile), which sums its terms in a fixed order whatever thread runs it, so the
// thread count cannot change a bit (unlike the materialized ops, whose guarantee is per thread
// count).
template <typename T>
void CheckDeterministic() {
  CpuBackend<T> be;
  uint64_t seed = 3000;
  for (const Shape& s :
       {Shape{3, 130, 32, 4, true}, Shape{3, 130, 32, 4, false}, Shape{1, 130, 128, 2, true}}) {
    SCOPED_TRACE(s.Name());
    const Vec qkv = Inputs(s.N() * 3 * s.C, ++seed, 1.5);
    const Vec dout = Inputs(s.N() * s.C, ++seed, 1.0);
    std::vector<Results<T>> runs;
    for (int threads : {2, 2, 1, 3}) {
      ScopedOmpThreads scoped(threads);
      runs.push_back(RunBoth(be, qkv, dout, s, false));
    }
    for (size_t k = 1; k < runs.size(); ++k) {
      EXPECT_EQ(0,
                std::memcmp(runs[k].out.data(), runs[0].out.data(), runs[0].out.size() * sizeof(T)))
          << "out, run " << k;
      EXPECT_EQ(0,
                std::memcmp(runs[k].lse.data(), runs[0].lse.data(), runs[0].lse.size() * sizeof(T)))
          << "lse, run " << k;
      EXPECT_EQ(
          0, std::memcmp(runs[k].dqkv.data(), runs[0].dqkv.data(), runs[0].dqkv.size() * sizeof(T)))
          << "dqkv, run " << k;
    }
  }
}

TEST(FlashAttention, BitwiseDeterministicAcrossRunsAndThreadCountsFloat) {
  CheckDeterministic<float>();
}
TEST(FlashAttention, BitwiseDeterministicAcrossRunsAndThreadCountsDouble) {
  CheckDeterministic<double>();
}

// What the FLOPs helpers count: T^2 bidirectional; causal, the 64-tiles on or below the diagonal
// (the diagonal tiles whole), between T (T + 1) / 2 and T^2.
TEST(FlashAttention, FlopsCountTheTilesThatRun) {
  EXPECT_EQ(FlashAttentionScores(1, true), 1u);
  EXPECT_EQ(FlashAttentionScores(7, true), 49u);  // one partial tile, computed whole
  EXPECT_EQ(FlashAttentionScores(64, true), 4096u);
  EXPECT_EQ(FlashAttentionScores(130, true), 64u * 64 + 64u * 128 + 2u * 130);
  EXPECT_EQ(FlashAttentionScores(1024, true), 64u * 64 * (16 * 17 / 2));  // 0.53 of T^2
  EXPECT_EQ(FlashAttentionScores(130, false), 130u * 130);
  for (int T : {1, 2, 63, 64, 65, 127, 128, 129, 1000, 2048}) {
    const uint64_t t = static_cast<uint64_t>(T);
    EXPECT_GE(FlashAttentionScores(T, true), t * (t + 1) / 2) << T;
    EXPECT_LE(FlashAttentionScores(T, true), t * t) << T;
  }
  EXPECT_EQ(FlashAttentionForwardFlops(3, 130, 32, 4, false), 4ull * 3 * 4 * 8 * 130 * 130);
  EXPECT_EQ(FlashAttentionBackwardFlops(3, 130, 32, 4, true),
            14ull * 3 * 4 * 8 * FlashAttentionScores(130, true));
}

// Rows whose scores are far apart (softmax saturated to one key) and large in magnitude: the
// online max keeps every exp in range (no overflow to inf, no 0/0), as the materialized op does.
TEST(FlashAttention, LargeScoresStayFinite) {
  CpuBackend<float> be;
  const Shape s{1, 130, 16, 1, false};
  const Vec qkv = Inputs(s.N() * 3 * s.C, 4000, 30.0);  // scores of several hundred
  const Vec dout = Inputs(s.N() * s.C, 4001, 1.0);
  const Results<float> r = RunBoth(be, qkv, dout, s, true);
  for (float x : r.out) ASSERT_TRUE(std::isfinite(x));
  for (float x : r.lse) ASSERT_TRUE(std::isfinite(x));
  for (float x : r.dqkv) ASSERT_TRUE(std::isfinite(x));
  const Exact e = ExactAttention(qkv, dout, s);
  CheckBound("large scores flash out", ToVec(r.out), e.out, e.out_mag, Gamma<float>(s), 2);
  CheckBound("large scores flash lse", ToVec(r.lse), e.lse, e.lse_mag, Gamma<float>(s), 2);
}

}  // namespace
}  // namespace raptr
