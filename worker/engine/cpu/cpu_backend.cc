// CpuBackend kernels (see cpu_backend.h). Shapes are in each kernel's comment in backend.h.
#include "worker/engine/cpu/cpu_backend.h"

#include <cblas.h>
#include <omp.h>
#include <sys/mman.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <vector>

#include "worker/engine/cpu/fast_math.h"

namespace raptr {
namespace {

constexpr double kLayerNormEps = 1e-5;

// Row-major GEMM: C (M,N) = alpha * op(A) (M,K) @ op(B) (K,N) + beta * C.
inline void Gemm(bool trans_a, bool trans_b, int M, int N, int K, float alpha, const float* A,
                 int lda, const float* B, int ldb, float beta, float* Cm, int ldc) {
  cblas_sgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, Cm, ldc);
}
inline void Gemm(bool trans_a, bool trans_b, int M, int N, int K, double alpha, const double* A,
                 int lda, const double* B, int ldb, double beta, double* Cm, int ldc) {
  cblas_dgemm(CblasRowMajor, trans_a ? CblasTrans : CblasNoTrans,
              trans_b ? CblasTrans : CblasNoTrans, M, N, K, alpha, A, lda, B, ldb, beta, Cm, ldc);
}

// Splits [0, n) into contiguous chunks, one per thread: used for reductions over rows whose
// result is per-column, so each column is summed by one thread in a fixed order.
inline void ThreadChunk(size_t n, size_t* begin, size_t* end) {
  const size_t threads = static_cast<size_t>(omp_get_num_threads());
  const size_t id = static_cast<size_t>(omp_get_thread_num());
  const size_t chunk = (n + threads - 1) / threads;
  *begin = std::min(n, id * chunk);
  *end = std::min(n, *begin + chunk);
}

template <typename T>
constexpr T GeluK() {
  return static_cast<T>(0.7978845608028654);  // sqrt(2/pi)
}

}  // namespace

// Large buffers (parameters, gradients, moments, activations) are mapped straight from the
// kernel, with transparent huge pages requested: their placement is then the same whichever
// thread allocates them and whatever the process allocated and freed before. Through malloc, a
// long-lived worker's second job (a new job thread, a reused malloc arena) trained measurably
// slower than its first (docs/PERF.md), and 2 MiB pages cut TLB misses on buffers streamed
// every step.
template <typename T>
void* CpuBackend<T>::AllocBytes(size_t bytes) {
  if (bytes >= kMapBytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    madvise(p, bytes, MADV_HUGEPAGE);  // advisory: ignored where THP is off
    std::memset(p, 0, bytes);          // touch every page once, here, not in the first step
    std::lock_guard<std::mutex> lock(mapped_mu_);
    mapped_[p] = bytes;
    return p;
  }
  const size_t rounded = ((bytes + 63) / 64) * 64;
  void* p = std::aligned_alloc(64, std::max<size_t>(rounded, 64));
  if (p == nullptr) throw std::bad_alloc();
  std::memset(p, 0, rounded);  // touch every page once, here, not in the first step
  return p;
}

template <typename T>
void CpuBackend<T>::FreeBytes(void* ptr) {
  {
    std::lock_guard<std::mutex> lock(mapped_mu_);
    auto it = mapped_.find(ptr);
    if (it != mapped_.end()) {
      munmap(ptr, it->second);
      mapped_.erase(it);
      return;
    }
  }
  std::free(ptr);
}

template <typename T>
void CpuBackend<T>::CopyToDevice(void* dst, const void* host_src, size_t bytes) {
  // An empty copy may name no buffer (an empty vector's data() is null; memcpy's arguments must
  // not be null even for 0 bytes).
  if (bytes == 0) return;
  std::memcpy(dst, host_src, bytes);
}

template <typename T>
void CpuBackend<T>::CopyToHost(void* host_dst, const void* src, size_t bytes) {
  if (bytes == 0) return;
  std::memcpy(host_dst, src, bytes);
}

template <typename T>
void CpuBackend<T>::Copy(T* dst, const T* src, size_t n) {
  if (n == 0) return;
  std::memcpy(dst, src, n * sizeof(T));
}

template <typename T>
void CpuBackend<T>::Zero(T* x, size_t n) {
  if (n == 0) return;
  std::memset(x, 0, n * sizeof(T));
}

template <typename T>
void CpuBackend<T>::GatherRows(T* dst, const T* src, const int32_t* rows, int M, int C) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < M; ++i) {
    std::memcpy(dst + static_cast<size_t>(i) * C, src + static_cast<size_t>(rows[i]) * C,
                sizeof(T) * C);
  }
}

template <typename T>
void CpuBackend<T>::ScatterRows(T* dst, const T* src, const int32_t* rows, int M, int N, int C) {
  // Iteration i zeroes the rows between target row i-1 and target row i (for i == M, those after
  // the last target), then copies row i to its place.
#pragma omp parallel for schedule(static)
  for (int i = 0; i <= M; ++i) {
    const size_t begin = i == 0 ? 0 : static_cast<size_t>(rows[i - 1]) + 1;
    const size_t end = i < M ? static_cast<size_t>(rows[i]) : static_cast<size_t>(N);
    if (end > begin) std::memset(dst + begin * C, 0, sizeof(T) * (end - begin) * C);
    if (i < M) {
      std::memcpy(dst + end * C, src + static_cast<size_t>(i) * C, sizeof(T) * C);
    }
  }
}

template <typename T>
void CpuBackend<T>::EncoderForward(T* out, const int32_t* tokens, const T* wte, const T* wpe, int B,
                                   int Tn, int C) {
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * Tn; ++bt) {
    const T* e = wte + static_cast<size_t>(tokens[bt]) * C;
    const T* p = wpe + static_cast<size_t>(bt % Tn) * C;
    T* o = out + static_cast<size_t>(bt) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = e[c] + p[c];
  }
}

template <typename T>
void CpuBackend<T>::EncoderBackward(T* dwte, T* dwpe, const T* dout, const int32_t* tokens, int B,
                                    int Tn, int C) {
  // Tokens repeat, so rows of dwte collide: split by channel instead, each thread owning a
  // column range and walking positions in order (deterministic, no atomics).
#pragma omp parallel
  {
    size_t c0, c1;
    ThreadChunk(static_cast<size_t>(C), &c0, &c1);
    for (int bt = 0; bt < B * Tn; ++bt) {
      T* e = dwte + static_cast<size_t>(tokens[bt]) * C;
      T* p = dwpe + static_cast<size_t>(bt % Tn) * C;
      const T* d = dout + static_cast<size_t>(bt) * C;
      for (size_t c = c0; c < c1; ++c) {
        e[c] += d[c];
        p[c] += d[c];
      }
    }
  }
}

template <typename T>
void CpuBackend<T>::LayerNormForward(T* out, T* mean, T* rstd, const T* inp, const T* w, const T* b,
                                     int N, int C) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    const T* x = inp + static_cast<size_t>(i) * C;
    T sum = 0;
#pragma omp simd reduction(+ : sum)
    for (int c = 0; c < C; ++c) sum += x[c];
    const T m = sum / C;
    T var = 0;
#pragma omp simd reduction(+ : var)
    for (int c = 0; c < C; ++c) var += (x[c] - m) * (x[c] - m);
    const T s = static_cast<T>(1.0 / std::sqrt(static_cast<double>(var / C) + kLayerNormEps));
    T* o = out + static_cast<size_t>(i) * C;
#pragma omp simd
    for (int c = 0; c < C; ++c) o[c] = (x[c] - m) * s * w[c] + b[c];
    mean[i] = m;
    rstd[i] = s;
  }
}

template <typename T>
void CpuBackend<T>::LayerNormBackward(T* dinp, T* dw, T* db, const T* dout, const T* inp,
                                      const T* w, const T* mean, const T* rstd, int N, int C) {
#pragma omp parallel
  {
#pragma omp for schedule(static)
    for (int i = 0; i < N; ++i) {
      const T* x = inp + static_cast<size_t>(i) * C;
      const T* d = dout + static_cast<size_t>(i) * C;
      T* dx = dinp + static_cast<size_t>(i) * C;
      const T m = mean[i], s = rstd[i];
      // dnorm = d * w; dx = s * (dnorm - mean(dnorm) - norm * mean(dnorm * norm)).
      T sum_dn = 0, sum_dn_n = 0;
#pragma omp simd reduction(+ : sum_dn, sum_dn_n)
      for (int c = 0; c < C; ++c) {
        const T dn = d[c] * w[c];
        sum_dn += dn;
        sum_dn_n += dn * (x[c] - m) * s;
      }
      const T mean_dn = sum_dn / C, mean_dn_n = sum_dn_n / C;
#pragma omp simd
      for (int c = 0; c < C; ++c) {
        const T n = (x[c] - m) * s;
        dx[c] += s * (d[c] * w[c] - mean_dn - n * mean_dn_n);
      }
    }
    // Parameter gradients sum over rows: each thread owns a channel range.
    size_t c0, c1;
    ThreadChunk(static_cast<size_t>(C), &c0, &c1);
    for (int i = 0; i < N; ++i) {
      const T* x = inp + static_cast<size_t>(i) * C;
      const T* d = dout + static_cast<size_t>(i) * C;
      const T m = mean[i], s = rstd[i];
      for (size_t c = c0; c < c1; ++c) {
        dw[c] += d[c] * (x[c] - m) * s;
        db[c] += d[c];
      }
    }
  }
}

template <typename T>
void CpuBackend<T>::MatmulForward(T* out, const T* inp, const T* w, const T* bias, int N, int C,
                                  int OC, T alpha, bool accumulate) {
  T beta = accumulate ? T(1) : T(0);
  if (bias != nullptr) {
    // Seed the output with the (scaled) bias so the GEMM adds onto it.
#pragma omp parallel for schedule(static)
    for (int i = 0; i < N; ++i) {
      T* o = out + static_cast<size_t>(i) * OC;
      if (accumulate) {
#pragma omp simd
        for (int j = 0; j < OC; ++j) o[j] += alpha * bias[j];
      } else {
#pragma omp simd
        for (int j = 0; j < OC; ++j) o[j] = alpha * bias[j];
      }
    }
    beta = T(1);
  }
  Gemm(false, true, N, OC, C, alpha, inp, C, w, C, beta, out, OC);
  this->flops_executed_ += 2ull * N * C * OC;
}

template <typename T>
void CpuBackend<T>::MatmulBackward(T* dinp, T* dw, T* dbias, const T* dout, const T* inp,
                                   const T* w, int N, int C, int OC, T alpha) {
  if (dinp != nullptr) {
    Gemm(false, false, N, C, OC, alpha, dout, OC, w, C, T(0), dinp, C);
    this->flops_executed_ += 2ull * N * C * OC;
  }
  Gemm(true, false, OC, C, N, alpha, dout, OC, inp, C, T(1), dw, C);
  this->flops_executed_ += 2ull * N * C * OC;
  if (dbias != nullptr) {
#pragma omp parallel
    {
      size_t j0, j1;
      ThreadChunk(static_cast<size_t>(OC), &j0, &j1);
      for (int i = 0; i < N; ++i) {
        const T* d = dout + static_cast<size_t>(i) * OC;
        for (size_t j = j0; j < j1; ++j) dbias[j] += alpha * d[j];
      }
    }
  }
}

template <typename T>
void CpuBackend<T>::AttentionForward(T* out, T* att, const T* qkv, int B, int Tn, int C, int NH,
                                     bool causal) {
  const int hs = C / NH;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hs)));
  const size_t TT = static_cast<size_t>(Tn) * Tn;
  // One (batch, head) per task; the GEMMs inside run single-threaded (OpenBLAS's OpenMP build
  // does not nest), so the threads split the heads instead.
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    const T* q = qkv + static_cast<size_t>(b) * Tn * 3 * C + static_cast<size_t>(h) * hs;
    const T* k = q + C;
    const T* v = q + 2 * C;
    T* p = att + static_cast<size_t>(bh) * TT;
    Gemm(false, true, Tn, Tn, hs, scale, q, 3 * C, k, 3 * C, T(0), p, Tn);
    for (int i = 0; i < Tn; ++i) {
      T* row = p + static_cast<size_t>(i) * Tn;
      const int valid = causal ? i + 1 : Tn;
      T mx = row[0];
#pragma omp simd reduction(max : mx)
      for (int j = 1; j < valid; ++j) mx = std::max(mx, row[j]);
      T sum = 0;
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < valid; ++j) {
        row[j] = cpu::Exp(row[j] - mx);
        sum += row[j];
      }
      const T inv = T(1) / sum;
#pragma omp simd
      for (int j = 0; j < valid; ++j) row[j] *= inv;
      for (int j = valid; j < Tn; ++j) row[j] = 0;
    }
    T* o = out + static_cast<size_t>(b) * Tn * C + static_cast<size_t>(h) * hs;
    Gemm(false, false, Tn, hs, Tn, T(1), p, Tn, v, 3 * C, T(0), o, C);
  }
  this->flops_executed_ += 4ull * B * NH * TT * hs;
}

template <typename T>
void CpuBackend<T>::AttentionBackward(T* dqkv, T* datt, const T* dout, const T* qkv, const T* att,
                                      int B, int Tn, int C, int NH) {
  const int hs = C / NH;
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hs)));
  const size_t TT = static_cast<size_t>(Tn) * Tn;
#pragma omp parallel for schedule(static)
  for (int bh = 0; bh < B * NH; ++bh) {
    const int b = bh / NH, h = bh % NH;
    const size_t qoff = static_cast<size_t>(b) * Tn * 3 * C + static_cast<size_t>(h) * hs;
    const T* q = qkv + qoff;
    const T* k = q + C;
    const T* v = q + 2 * C;
    T* dq = dqkv + qoff;
    T* dk = dq + C;
    T* dv = dq + 2 * C;
    const T* p = att + static_cast<size_t>(bh) * TT;
    T* dp = datt + static_cast<size_t>(bh) * TT;
    const T* dO = dout + static_cast<size_t>(b) * Tn * C + static_cast<size_t>(h) * hs;
    // dP = dO @ V^T ; dV = P^T @ dO
    Gemm(false, true, Tn, Tn, hs, T(1), dO, C, v, 3 * C, T(0), dp, Tn);
    Gemm(true, false, Tn, hs, Tn, T(1), p, Tn, dO, C, T(0), dv, 3 * C);
    // Softmax backward: dS = P * (dP - rowsum(P * dP)), then the 1/sqrt(hs) of the scores.
    for (int i = 0; i < Tn; ++i) {
      const T* prow = p + static_cast<size_t>(i) * Tn;
      T* drow = dp + static_cast<size_t>(i) * Tn;
      T dot = 0;
#pragma omp simd reduction(+ : dot)
      for (int j = 0; j < Tn; ++j) dot += prow[j] * drow[j];
#pragma omp simd
      for (int j = 0; j < Tn; ++j) drow[j] = prow[j] * (drow[j] - dot) * scale;
    }
    // dQ = dS @ K ; dK = dS^T @ Q
    Gemm(false, false, Tn, hs, Tn, T(1), dp, Tn, k, 3 * C, T(0), dq, 3 * C);
    Gemm(true, false, Tn, hs, Tn, T(1), dp, Tn, q, 3 * C, T(0), dk, 3 * C);
  }
  this->flops_executed_ += 8ull * B * NH * TT * hs;
}

// ---- Flash attention ----
// Queries and keys in tiles of kFlashAttentionTile. Forward, per (batch, head, query tile): the
// running row max m, row sum l and unnormalised output o of the tile's rows fold in one key tile
// at a time (m' = max(m, max_j s_ij); o = o exp(m - m') + sum_j exp(s_ij - m') v_j; l likewise),
// then out = o / l and lse = m + log l. Causal, query tile q stops after key tile q; inside that
// diagonal tile the masked entries are computed like the others and weighted 0, as on the GPU
// (the FLOPs count them). The backward recomputes s_ij and p_ij = exp(s_ij - lse_i) entry by
// entry: a pass over key tiles sums dV_j += p_ij dO_i and dK_j += dS_ij q_i over the query tiles
// in order, a pass over query tiles sums dQ_i += dS_ij k_j over the key tiles in order, with
// dS_ij = p_ij (dO_i.v_j - D_i). Every output element is summed by one task in a fixed order.
namespace {

template <typename T>
inline T Dot(const T* a, const T* b, int n) {
  T s = 0;
#pragma omp simd reduction(+ : s)
  for (int d = 0; d < n; ++d) s += a[d] * b[d];
  return s;
}

// y += a * x over n elements.
template <typename T>
inline void Axpy(T a, const T* x, T* y, int n) {
#pragma omp simd
  for (int d = 0; d < n; ++d) y[d] += a * x[d];
}

inline int FlashTiles(int Tn) { return (Tn + kFlashAttentionTile - 1) / kFlashAttentionTile; }

}  // namespace

template <typename T>
void CpuBackend<T>::FlashAttentionForward(T* out, T* lse, const T* qkv, int B, int Tn, int C,
                                          int NH, bool causal) {
  const int hs = C / NH, tile = kFlashAttentionTile, tiles = FlashTiles(Tn);
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hs)));
  const T neg_inf = -std::numeric_limits<T>::infinity();
  const size_t C3 = 3 * static_cast<size_t>(C);
#pragma omp parallel
  {
    std::vector<T> s(tile), m(tile), l(tile), o(static_cast<size_t>(tile) * hs);
    // Dynamic: causal tasks differ in cost. A task writes only its own rows, so the schedule
    // changes no result.
#pragma omp for schedule(dynamic)
    for (int task = 0; task < B * NH * tiles; ++task) {
      const int qt = task % tiles, bh = task / tiles, b = bh / NH, h = bh % NH;
      const T* base = qkv + static_cast<size_t>(b) * Tn * C3 + static_cast<size_t>(h) * hs;
      const int i0 = qt * tile, i1 = std::min(Tn, i0 + tile);
      std::fill(m.begin(), m.end(), neg_inf);
      std::fill(l.begin(), l.end(), T(0));
      std::fill(o.begin(), o.end(), T(0));
      const int kt_end = causal ? qt + 1 : tiles;
      for (int kt = 0; kt < kt_end; ++kt) {
        const int j0 = kt * tile, j1 = std::min(Tn, j0 + tile);
        for (int i = i0; i < i1; ++i) {
          const int r = i - i0;
          const T* q = base + i * C3;
          T mx = m[r];
          for (int j = j0; j < j1; ++j) {
            s[j - j0] = Dot(q, base + j * C3 + C, hs) * scale;
            if (!(causal && j > i)) mx = std::max(mx, s[j - j0]);
          }
          // Every tile that runs has an unmasked key for each row (key j0 <= i), so mx is finite.
          const T alpha = m[r] == neg_inf ? T(0) : cpu::Exp(m[r] - mx);
          T* orow = o.data() + static_cast<size_t>(r) * hs;
#pragma omp simd
          for (int d = 0; d < hs; ++d) orow[d] *= alpha;
          T sum = 0;
          for (int j = j0; j < j1; ++j) {
            const T p = causal && j > i ? T(0) : cpu::Exp(s[j - j0] - mx);
            sum += p;
            Axpy(p, base + j * C3 + 2 * C, orow, hs);
          }
          l[r] = l[r] * alpha + sum;
          m[r] = mx;
        }
      }
      for (int i = i0; i < i1; ++i) {
        const int r = i - i0;
        const T inv = T(1) / l[r];
        const T* orow = o.data() + static_cast<size_t>(r) * hs;
        T* y = out + (static_cast<size_t>(b) * Tn + i) * C + static_cast<size_t>(h) * hs;
#pragma omp simd
        for (int d = 0; d < hs; ++d) y[d] = orow[d] * inv;
        lse[static_cast<size_t>(bh) * Tn + i] =
            m[r] + static_cast<T>(std::log(static_cast<double>(l[r])));
      }
    }
  }
  this->flops_executed_ += FlashAttentionForwardFlops(B, Tn, C, NH, causal);
}

template <typename T>
void CpuBackend<T>::FlashAttentionBackward(T* dqkv, const T* dout, const T* qkv, const T* out,
                                           const T* lse, int B, int Tn, int C, int NH,
                                           bool causal) {
  const int hs = C / NH, tile = kFlashAttentionTile, tiles = FlashTiles(Tn);
  const T scale = static_cast<T>(1.0 / std::sqrt(static_cast<double>(hs)));
  const size_t C3 = 3 * static_cast<size_t>(C);
  // D (B,NH,T) = rowsum(dout * out) per head: the only scratch, O(B*NH*T).
  std::vector<T> D(static_cast<size_t>(B) * NH * Tn);
#pragma omp parallel for schedule(static)
  for (int bt = 0; bt < B * Tn; ++bt) {
    const int b = bt / Tn, t = bt % Tn;
    for (int h = 0; h < NH; ++h) {
      const size_t row = static_cast<size_t>(bt) * C + static_cast<size_t>(h) * hs;
      D[(static_cast<size_t>(b) * NH + h) * Tn + t] = Dot(dout + row, out + row, hs);
    }
  }
  // Score s_ij, probability p_ij and dS_ij of one entry, recomputed (the same in both passes).
  auto entry = [&](const T* base, const T* dO, size_t bh, int i, int j, T* p, T* ds) {
    const T* q = base + i * C3;
    const T s = Dot(q, base + j * C3 + C, hs) * scale;
    const T dp = Dot(dO, base + j * C3 + 2 * C, hs);
    *p = causal && j > i ? T(0) : cpu::Exp(s - lse[bh * Tn + i]);
    *ds = *p * (dp - D[bh * Tn + i]);
  };

  // Pass 1: dK, dV per (batch, head, key tile), over the query tiles that see it, in order.
#pragma omp parallel
  {
    std::vector<T> dk(static_cast<size_t>(tile) * hs), dv(static_cast<size_t>(tile) * hs);
#pragma omp for schedule(dynamic)
    for (int task = 0; task < B * NH * tiles; ++task) {
      const int kt = task % tiles, bh = task / tiles, b = bh / NH, h = bh % NH;
      const size_t off = static_cast<size_t>(b) * Tn * C3 + static_cast<size_t>(h) * hs;
      const T* base = qkv + off;
      const int j0 = kt * tile, j1 = std::min(Tn, j0 + tile);
      std::fill(dk.begin(), dk.end(), T(0));
      std::fill(dv.begin(), dv.end(), T(0));
      for (int qt = causal ? kt : 0; qt < tiles; ++qt) {
        const int i1 = std::min(Tn, (qt + 1) * tile);
        for (int i = qt * tile; i < i1; ++i) {
          const T* q = base + i * C3;
          const T* dO = dout + (static_cast<size_t>(b) * Tn + i) * C + static_cast<size_t>(h) * hs;
          for (int j = j0; j < j1; ++j) {
            T p, ds;
            entry(base, dO, bh, i, j, &p, &ds);
            Axpy(p, dO, dv.data() + static_cast<size_t>(j - j0) * hs, hs);
            Axpy(ds, q, dk.data() + static_cast<size_t>(j - j0) * hs, hs);
          }
        }
      }
      for (int j = j0; j < j1; ++j) {
        T* dK = dqkv + off + j * C3 + C;
        T* dV = dK + C;
        const T* a = dk.data() + static_cast<size_t>(j - j0) * hs;
        const T* c = dv.data() + static_cast<size_t>(j - j0) * hs;
#pragma omp simd
        for (int d = 0; d < hs; ++d) {
          dK[d] = a[d] * scale;
          dV[d] = c[d];
        }
      }
    }
  }

  // Pass 2: dQ per (batch, head, query tile), over the key tiles it sees, in order.
#pragma omp parallel
  {
    std::vector<T> dq(static_cast<size_t>(tile) * hs);
#pragma omp for schedule(dynamic)
    for (int task = 0; task < B * NH * tiles; ++task) {
      const int qt = task % tiles, bh = task / tiles, b = bh / NH, h = bh % NH;
      const size_t off = static_cast<size_t>(b) * Tn * C3 + static_cast<size_t>(h) * hs;
      const T* base = qkv + off;
      const int i0 = qt * tile, i1 = std::min(Tn, i0 + tile);
      std::fill(dq.begin(), dq.end(), T(0));
      const int kt_end = causal ? qt + 1 : tiles;
      for (int kt = 0; kt < kt_end; ++kt) {
        const int j1 = std::min(Tn, (kt + 1) * tile);
        for (int i = i0; i < i1; ++i) {
          const T* dO = dout + (static_cast<size_t>(b) * Tn + i) * C + static_cast<size_t>(h) * hs;
          T* acc = dq.data() + static_cast<size_t>(i - i0) * hs;
          for (int j = kt * tile; j < j1; ++j) {
            T p, ds;
            entry(base, dO, bh, i, j, &p, &ds);
            Axpy(ds, base + j * C3 + C, acc, hs);
          }
        }
      }
      for (int i = i0; i < i1; ++i) {
        T* dQ = dqkv + off + i * C3;
        const T* a = dq.data() + static_cast<size_t>(i - i0) * hs;
#pragma omp simd
        for (int d = 0; d < hs; ++d) dQ[d] = a[d] * scale;
      }
    }
  }
  this->flops_executed_ += FlashAttentionBackwardFlops(B, Tn, C, NH, causal);
}

template <typename T>
void CpuBackend<T>::GeluForward(T* out, const T* inp, size_t n) {
  const T k = GeluK<T>();
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; ++i) {
    const T x = inp[i];
    const T u = k * (x + T(0.044715) * x * x * x);
    out[i] = T(0.5) * x * (T(1) + cpu::Tanh(u));
  }
}

template <typename T>
void CpuBackend<T>::GeluBackward(T* dinp, const T* inp, const T* dout, size_t n) {
  const T k = GeluK<T>();
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; ++i) {
    const T x = inp[i];
    const T u = k * (x + T(0.044715) * x * x * x);
    T t, sech2;
    cpu::TanhAndDerivative(u, &t, &sech2);
    const T grad = T(0.5) * (T(1) + t) + T(0.5) * x * sech2 * k * (T(1) + T(3 * 0.044715) * x * x);
    dinp[i] = grad * dout[i];
  }
}

template <typename T>
void CpuBackend<T>::CrossEntropyForward(T* logits, T* losses, const int32_t* targets, int N, int V,
                                        T grad_scale, bool compute_grad) {
#pragma omp parallel for schedule(static)
  for (int i = 0; i < N; ++i) {
    T* row = logits + static_cast<size_t>(i) * V;
    const int32_t target = targets[i];
    if (target < 0) {
      losses[i] = 0;
      if (compute_grad) std::memset(row, 0, sizeof(T) * V);
      continue;
    }
    T mx = row[0];
#pragma omp simd reduction(max : mx)
    for (int j = 1; j < V; ++j) mx = std::max(mx, row[j]);
    const T target_logit = row[target];
    T sum = 0;
    if (compute_grad) {
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) {
        row[j] = cpu::Exp(row[j] - mx);
        sum += row[j];
      }
      const T inv = grad_scale / sum;
#pragma omp simd
      for (int j = 0; j < V; ++j) row[j] *= inv;
      row[target] -= grad_scale;
    } else {
#pragma omp simd reduction(+ : sum)
      for (int j = 0; j < V; ++j) sum += cpu::Exp(row[j] - mx);
    }
    losses[i] = static_cast<T>(std::log(static_cast<double>(sum))) + mx - target_logit;
  }
}

template <typename T>
double CpuBackend<T>::SumSquares(const T* x, size_t n) {
  // Fixed-size blocks summed in block order: the result depends only on n, not on the thread
  // count or the schedule (the clipping scale, and so the whole run, stays reproducible).
  constexpr size_t kBlock = 1 << 16;
  const size_t blocks = (n + kBlock - 1) / kBlock;
  std::vector<double> partial(blocks, 0.0);
#pragma omp parallel for schedule(static)
  for (size_t b = 0; b < blocks; ++b) {
    const size_t i1 = std::min(n, (b + 1) * kBlock);
    double s = 0;
#pragma omp simd reduction(+ : s)
    for (size_t i = b * kBlock; i < i1; ++i) s += static_cast<double>(x[i]) * x[i];
    partial[b] = s;
  }
  double total = 0;
  for (double p : partial) total += p;
  return total;
}

template <typename T>
void CpuBackend<T>::AdamW(T* params, T* grads, T* m, T* v, size_t n, float lr, float beta1,
                          float beta2, float eps, float weight_decay, int64_t t, float grad_scale) {
  const T bc1 = static_cast<T>(1.0 - std::pow(static_cast<double>(beta1), static_cast<double>(t)));
  const T bc2 = static_cast<T>(1.0 - std::pow(static_cast<double>(beta2), static_cast<double>(t)));
  const T b1 = beta1, b2 = beta2, e = eps, wd = weight_decay, a = lr, gs = grad_scale;
#pragma omp parallel for simd schedule(static)
  for (size_t i = 0; i < n; ++i) {
    const T g = grads[i] * gs;
    grads[i] = 0;
    const T mi = b1 * m[i] + (T(1) - b1) * g;
    const T vi = b2 * v[i] + (T(1) - b2) * g * g;
    m[i] = mi;
    v[i] = vi;
    // lr 0 (moments_only on a skipped block): the parameter is not written (bit for bit).
    if (a != T(0)) params[i] -= a * ((mi / bc1) / (std::sqrt(vi / bc2) + e) + wd * params[i]);
  }
}

template class CpuBackend<float>;
template class CpuBackend<double>;

}  // namespace raptr
