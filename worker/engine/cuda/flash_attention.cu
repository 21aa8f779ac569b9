// Flash attention on the GPU (backend.h has the contract): FlashAttention-2's algorithm in fp32 on
// the CUDA cores, with no (B,NH,T,T) matrix. Queries and keys go in tiles of
// kFlashAttentionTile = 64 (the CPU backend's tiles too, so both count the same FLOPs); a block
// of 256 threads (16 x 16) owns one (batch, head, tile), and each thread a 4 x 4 micro-tile of
// the 64 x 64 scores (rows ty + 16a, columns tx + 16c) and the matching 4 x hs/16 slice of the
// output (columns tx + 16v). A row's 16 threads sit in one half-warp, so row max and row sum are
// shuffles within it.
//
// Forward: one block per (b, h, query tile) holds the Q tile in shared memory and streams the K
// and V tiles (causal: only key tiles 0..q; the diagonal tile is computed whole and masked), with
// the online softmax (row max m, row sum l, unnormalised output) in registers; P goes through
// shared memory for the P.V product. out = o / l, lse = m + log l.
//
// Backward, three kernels: D = rowsum(dout * out) (one warp per row, into the backend's Scratch,
// B*NH*T floats); one block per (b, h, key tile) sums dK and dV over the query tiles that see it;
// one block per (b, h, query tile) sums dQ over its key tiles. Both recompute S, P = exp(S - lse)
// and dP = dO.V^T per tile, then dS = P (dP - D).
//
// Determinism: bitwise, run to run and on any GPU (for one binary). There are no atomics: every
// output element is written by one thread, which sums its terms in a fixed order (the dot
// products over d ascending, the accumulations over keys or queries ascending, tile by tile in
// ascending order); the row reductions are butterflies over fixed lanes, and the launch geometry
// depends on the shape only, not on the device's SM count. The price is that S and dP are
// computed twice in the backward (14 hs FLOPs per score instead of 10, see backend.h).
//
// Head size: the kernels are templated on a padded head size kHs in {16, 32, 64, 128}; a head of
// hs <= kHs is zero-padded in shared memory (the zero terms leave every sum unchanged), so any
// hs <= 128 runs (GPT-2 124M's 64 exactly; the tests' small 4, 5, 8, 11, 16 on kHs = 16). A
// larger hs throws std::runtime_error. Shared memory (opted in past 48 KB): forward 116 KB,
// dK/dV 166 KB, dQ 150 KB at kHs = 128; 65, 100 and 83 KB at 64.
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>

#include "worker/engine/cuda/common.cuh"
#include "worker/engine/cuda/cuda_backend.h"

namespace raptr {
namespace {

using cuda::CeilDiv;
using cuda::kWarp;
using cuda::WarpSum;

constexpr int kTile = kFlashAttentionTile;  // 64 queries x 64 keys
constexpr int kThreads = 256;               // 16 x 16
constexpr int kPer = kTile / 16;            // rows (and columns) of a thread's micro-tile
constexpr int kLdP = kTile + 1;             // row stride of the P and dS tiles in shared memory
static_assert(kTile == 64, "the 16 x 16 thread grid of 4 x 4 micro-tiles covers 64 x 64");

// Butterfly over the 16 lanes of a half-warp (one score row): every lane gets the same value.
__device__ inline float HalfWarpMax(float v) {
#pragma unroll
  for (int o = 8; o > 0; o /= 2) v = fmaxf(v, __shfl_xor_sync(0xffffffffu, v, o));
  return v;
}
__device__ inline float HalfWarpSum(float v) {
#pragma unroll
  for (int o = 8; o > 0; o /= 2) v += __shfl_xor_sync(0xffffffffu, v, o);
  return v;
}

// Rows t0 .. t0 + 63 of src (row stride ld floats), their first hs columns, into dst (64 rows of
// kHs + 1: the odd stride keeps a column read by 16 rows on 16 banks); zero past T and past hs.
template <int kHs>
__device__ inline void LoadTile(float* dst, const float* src, size_t ld, int t0, int T, int hs) {
  constexpr int kLd = kHs + 1;
  for (int idx = threadIdx.x; idx < kTile * kHs; idx += kThreads) {
    const int r = idx / kHs, d = idx % kHs, t = t0 + r;
    dst[r * kLd + d] = t < T && d < hs ? src[static_cast<size_t>(t) * ld + d] : 0.f;
  }
}

// Entries t0 .. t0 + 63 of a (T) row vector into dst, zero past T.
__device__ inline void LoadRow(float* dst, const float* src, int t0, int T) {
  if (threadIdx.x < kTile) {
    const int t = t0 + threadIdx.x;
    dst[threadIdx.x] = t < T ? src[t] : 0.f;
  }
}

template <int kHs>
constexpr size_t ForwardSmemBytes() {
  return sizeof(float) * (3 * kTile * (kHs + 1) + kTile * kLdP);
}
template <int kHs>
constexpr size_t BackwardKVSmemBytes() {
  return sizeof(float) * (4 * kTile * (kHs + 1) + 2 * kTile * kLdP + 2 * kTile);
}
template <int kHs>
constexpr size_t BackwardQSmemBytes() {
  return sizeof(float) * (4 * kTile * (kHs + 1) + kTile * kLdP + 2 * kTile);
}

// grid (tiles, NH, B). qkv (B,T,3C), out (B,T,C), lse (B,NH,T).
template <int kHs>
__global__ void __launch_bounds__(kThreads)
    FlashForwardKernel(float* out, float* lse, const float* qkv, int T, int C, int NH, float scale,
                       bool causal) {
  constexpr int kLd = kHs + 1, kV = kHs / 16;
  extern __shared__ float smem[];
  float* sQ = smem;
  float* sK = sQ + kTile * kLd;
  float* sV = sK + kTile * kLd;
  float* sP = sV + kTile * kLd;
  const int hs = C / NH, tiles = (T + kTile - 1) / kTile;
  // Causal: the costliest query tiles (the most key tiles) start first.
  const int qt = causal ? tiles - 1 - static_cast<int>(blockIdx.x) : static_cast<int>(blockIdx.x);
  const int h = blockIdx.y, b = blockIdx.z;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const size_t ld = 3 * static_cast<size_t>(C);
  const float* base = qkv + static_cast<size_t>(b) * T * ld + static_cast<size_t>(h) * hs;
  LoadTile<kHs>(sQ, base, ld, qt * kTile, T, hs);

  float m[kPer], l[kPer], o[kPer][kV];
#pragma unroll
  for (int a = 0; a < kPer; ++a) {
    m[a] = -INFINITY;
    l[a] = 0.f;
#pragma unroll
    for (int v = 0; v < kV; ++v) o[a][v] = 0.f;
  }
  const int kt_end = causal ? qt + 1 : tiles;
  for (int kt = 0; kt < kt_end; ++kt) {
    __syncthreads();  // the previous tile's sK, sV and sP are read
    LoadTile<kHs>(sK, base + C, ld, kt * kTile, T, hs);
    LoadTile<kHs>(sV, base + 2 * C, ld, kt * kTile, T, hs);
    __syncthreads();
    float s[kPer][kPer];
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
#pragma unroll
      for (int c = 0; c < kPer; ++c) s[a][c] = 0.f;
    }
#pragma unroll 8
    for (int d = 0; d < kHs; ++d) {
      float qv[kPer], kv[kPer];
#pragma unroll
      for (int a = 0; a < kPer; ++a) {
        qv[a] = sQ[(ty + 16 * a) * kLd + d];
        kv[a] = sK[(tx + 16 * a) * kLd + d];
      }
#pragma unroll
      for (int a = 0; a < kPer; ++a) {
#pragma unroll
        for (int c = 0; c < kPer; ++c) s[a][c] = fmaf(qv[a], kv[c], s[a][c]);
      }
    }
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
      const int i = qt * kTile + ty + 16 * a;
      bool keep[kPer];
      float mx = m[a];
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        const int j = kt * kTile + tx + 16 * c;
        keep[c] = j < T && !(causal && j > i);
        s[a][c] *= scale;
        if (keep[c]) mx = fmaxf(mx, s[a][c]);
      }
      // Every tile that runs has an unmasked key for each row (key kt * 64 <= i), so mx is finite.
      mx = HalfWarpMax(mx);
      const float alpha = m[a] == -INFINITY ? 0.f : expf(m[a] - mx);
      float sum = 0.f;
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        const float p = keep[c] ? expf(s[a][c] - mx) : 0.f;
        sum += p;
        sP[(ty + 16 * a) * kLdP + tx + 16 * c] = p;
      }
      sum = HalfWarpSum(sum);
      l[a] = l[a] * alpha + sum;
      m[a] = mx;
#pragma unroll
      for (int v = 0; v < kV; ++v) o[a][v] *= alpha;
    }
    __syncthreads();
#pragma unroll 4
    for (int j = 0; j < kTile; ++j) {
      float pv[kPer], vv[kV];
#pragma unroll
      for (int a = 0; a < kPer; ++a) pv[a] = sP[(ty + 16 * a) * kLdP + j];
#pragma unroll
      for (int v = 0; v < kV; ++v) vv[v] = sV[j * kLd + tx + 16 * v];
#pragma unroll
      for (int a = 0; a < kPer; ++a) {
#pragma unroll
        for (int v = 0; v < kV; ++v) o[a][v] = fmaf(pv[a], vv[v], o[a][v]);
      }
    }
  }
#pragma unroll
  for (int a = 0; a < kPer; ++a) {
    const int i = qt * kTile + ty + 16 * a;
    if (i >= T) continue;
    const float inv = 1.f / l[a];
    float* y = out + (static_cast<size_t>(b) * T + i) * C + static_cast<size_t>(h) * hs;
#pragma unroll
    for (int v = 0; v < kV; ++v) {
      const int col = tx + 16 * v;
      if (col < hs) y[col] = o[a][v] * inv;
    }
    if (tx == 0) lse[(static_cast<size_t>(b) * NH + h) * T + i] = m[a] + logf(l[a]);
  }
}

// D (B,NH,T) = rowsum(dout * out) per head. One warp per row.
constexpr int kRowsPerBlock = 8;
__global__ void FlashRowDotKernel(float* D, const float* dout, const float* out, int B, int T,
                                  int C, int NH) {
  const size_t r = static_cast<size_t>(blockIdx.x) * kRowsPerBlock + threadIdx.x / kWarp;
  const int lane = threadIdx.x % kWarp;
  if (r >= static_cast<size_t>(B) * NH * T) return;
  const int hs = C / NH, t = static_cast<int>(r % T);
  const size_t bh = r / T, b = bh / NH, h = bh % NH;
  const size_t off = (b * T + t) * C + h * hs;
  float s = 0.f;
  for (int d = lane; d < hs; d += kWarp) s += dout[off + d] * out[off + d];
  s = WarpSum(s);
  if (lane == 0) D[r] = s;
}

// S, P and dS of a thread's 4 x 4 entries: queries qrow(a) (rows of sQ, sdO, sL, sD), keys
// krow(c) (rows of sK, sV); i0, j0 the tiles' first positions. Masked entries (past T, or above
// the diagonal when causal) get P = dS = 0.
template <int kHs, typename QRow, typename KRow>
__device__ inline void TileEntries(const float* sQ, const float* sdO, const float* sK,
                                   const float* sV, const float* sL, const float* sD, int i0,
                                   int j0, int T, float scale, bool causal, QRow qrow, KRow krow,
                                   float (&p)[kPer][kPer], float (&ds)[kPer][kPer]) {
  constexpr int kLd = kHs + 1;
  float s[kPer][kPer], dp[kPer][kPer];
#pragma unroll
  for (int a = 0; a < kPer; ++a) {
#pragma unroll
    for (int c = 0; c < kPer; ++c) s[a][c] = dp[a][c] = 0.f;
  }
#pragma unroll 4
  for (int d = 0; d < kHs; ++d) {
    float qv[kPer], ov[kPer], kv[kPer], vv[kPer];
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
      qv[a] = sQ[qrow(a) * kLd + d];
      ov[a] = sdO[qrow(a) * kLd + d];
      kv[a] = sK[krow(a) * kLd + d];
      vv[a] = sV[krow(a) * kLd + d];
    }
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        s[a][c] = fmaf(qv[a], kv[c], s[a][c]);
        dp[a][c] = fmaf(ov[a], vv[c], dp[a][c]);
      }
    }
  }
#pragma unroll
  for (int a = 0; a < kPer; ++a) {
    const int i = i0 + qrow(a);
#pragma unroll
    for (int c = 0; c < kPer; ++c) {
      const int j = j0 + krow(c);
      const bool keep = i < T && j < T && !(causal && j > i);
      p[a][c] = keep ? expf(s[a][c] * scale - sL[qrow(a)]) : 0.f;
      ds[a][c] = p[a][c] * (dp[a][c] - sD[qrow(a)]);
    }
  }
}

// dK and dV of one key tile. grid (tiles, NH, B).
template <int kHs>
__global__ void __launch_bounds__(kThreads)
    FlashBackwardKVKernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                          const float* D, int T, int C, int NH, float scale, bool causal) {
  constexpr int kLd = kHs + 1, kV = kHs / 16;
  extern __shared__ float smem[];
  float* sK = smem;
  float* sV = sK + kTile * kLd;
  float* sQ = sV + kTile * kLd;
  float* sdO = sQ + kTile * kLd;
  float* sP = sdO + kTile * kLd;
  float* sdS = sP + kTile * kLdP;
  float* sL = sdS + kTile * kLdP;
  float* sD = sL + kTile;
  const int hs = C / NH, tiles = (T + kTile - 1) / kTile;
  const int kt = blockIdx.x, h = blockIdx.y, b = blockIdx.z;  // causal: low kt, most work, first
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const size_t ld = 3 * static_cast<size_t>(C);
  const float* base = qkv + static_cast<size_t>(b) * T * ld + static_cast<size_t>(h) * hs;
  const float* dbase = dout + static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * hs;
  const size_t bh = static_cast<size_t>(b) * NH + h;
  LoadTile<kHs>(sK, base + C, ld, kt * kTile, T, hs);
  LoadTile<kHs>(sV, base + 2 * C, ld, kt * kTile, T, hs);

  float dk[kPer][kV], dv[kPer][kV];  // keys ty + 16c, columns tx + 16v
#pragma unroll
  for (int c = 0; c < kPer; ++c) {
#pragma unroll
    for (int v = 0; v < kV; ++v) dk[c][v] = dv[c][v] = 0.f;
  }
  for (int qt = causal ? kt : 0; qt < tiles; ++qt) {
    __syncthreads();  // the previous tile's sQ, sdO, sP, sdS are read
    LoadTile<kHs>(sQ, base, ld, qt * kTile, T, hs);
    LoadTile<kHs>(sdO, dbase, C, qt * kTile, T, hs);
    LoadRow(sL, lse + bh * T, qt * kTile, T);
    LoadRow(sD, D + bh * T, qt * kTile, T);
    __syncthreads();
    float p[kPer][kPer], ds[kPer][kPer];  // queries tx + 16a, keys ty + 16c
    TileEntries<kHs>(
        sQ, sdO, sK, sV, sL, sD, qt * kTile, kt * kTile, T, scale, causal,
        [tx](int a) { return tx + 16 * a; }, [ty](int c) { return ty + 16 * c; }, p, ds);
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        sP[(tx + 16 * a) * kLdP + ty + 16 * c] = p[a][c];
        sdS[(tx + 16 * a) * kLdP + ty + 16 * c] = ds[a][c];
      }
    }
    __syncthreads();
    // dV_j += sum_i P_ij dO_i, dK_j += sum_i dS_ij Q_i, i ascending.
#pragma unroll 2
    for (int r = 0; r < kTile; ++r) {
      float pj[kPer], dsj[kPer], ov[kV], qv[kV];
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
        pj[c] = sP[r * kLdP + ty + 16 * c];
        dsj[c] = sdS[r * kLdP + ty + 16 * c];
      }
#pragma unroll
      for (int v = 0; v < kV; ++v) {
        ov[v] = sdO[r * kLd + tx + 16 * v];
        qv[v] = sQ[r * kLd + tx + 16 * v];
      }
#pragma unroll
      for (int c = 0; c < kPer; ++c) {
#pragma unroll
        for (int v = 0; v < kV; ++v) {
          dv[c][v] = fmaf(pj[c], ov[v], dv[c][v]);
          dk[c][v] = fmaf(dsj[c], qv[v], dk[c][v]);
        }
      }
    }
  }
#pragma unroll
  for (int c = 0; c < kPer; ++c) {
    const int j = kt * kTile + ty + 16 * c;
    if (j >= T) continue;
    float* dK = dqkv + (static_cast<size_t>(b) * T + j) * ld + C + static_cast<size_t>(h) * hs;
    float* dV = dK + C;
#pragma unroll
    for (int v = 0; v < kV; ++v) {
      const int col = tx + 16 * v;
      if (col < hs) {
        dK[col] = dk[c][v] * scale;
        dV[col] = dv[c][v];
      }
    }
  }
}

// dQ of one query tile. grid (tiles, NH, B).
template <int kHs>
__global__ void __launch_bounds__(kThreads)
    FlashBackwardQKernel(float* dqkv, const float* dout, const float* qkv, const float* lse,
                         const float* D, int T, int C, int NH, float scale, bool causal) {
  constexpr int kLd = kHs + 1, kV = kHs / 16;
  extern __shared__ float smem[];
  float* sQ = smem;
  float* sdO = sQ + kTile * kLd;
  float* sK = sdO + kTile * kLd;
  float* sV = sK + kTile * kLd;
  float* sdS = sV + kTile * kLd;
  float* sL = sdS + kTile * kLdP;
  float* sD = sL + kTile;
  const int hs = C / NH, tiles = (T + kTile - 1) / kTile;
  const int qt = causal ? tiles - 1 - static_cast<int>(blockIdx.x) : static_cast<int>(blockIdx.x);
  const int h = blockIdx.y, b = blockIdx.z;
  const int tx = threadIdx.x % 16, ty = threadIdx.x / 16;
  const size_t ld = 3 * static_cast<size_t>(C);
  const float* base = qkv + static_cast<size_t>(b) * T * ld + static_cast<size_t>(h) * hs;
  const float* dbase = dout + static_cast<size_t>(b) * T * C + static_cast<size_t>(h) * hs;
  const size_t bh = static_cast<size_t>(b) * NH + h;
  LoadTile<kHs>(sQ, base, ld, qt * kTile, T, hs);
  LoadTile<kHs>(sdO, dbase, C, qt * kTile, T, hs);
  LoadRow(sL, lse + bh * T, qt * kTile, T);
  LoadRow(sD, D + bh * T, qt * kTile, T);

  float dq[kPer][kV];  // queries ty + 16a, columns tx + 16v
#pragma unroll
  for (int a = 0; a < kPer; ++a) {
#pragma unroll
    for (int v = 0; v < kV; ++v) dq[a][v] = 0.f;
  }
  const int kt_end = causal ? qt + 1 : tiles;
  for (int kt = 0; kt < kt_end; ++kt) {
    __syncthreads();  // the previous tile's sK, sV, sdS are read
    LoadTile<kHs>(sK, base + C, ld, kt * kTile, T, hs);
    LoadTile<kHs>(sV, base + 2 * C, ld, kt * kTile, T, hs);
    __syncthreads();
    float p[kPer][kPer], ds[kPer][kPer];  // queries ty + 16a, keys tx + 16c
    TileEntries<kHs>(
        sQ, sdO, sK, sV, sL, sD, qt * kTile, kt * kTile, T, scale, causal,
        [ty](int a) { return ty + 16 * a; }, [tx](int c) { return tx + 16 * c; }, p, ds);
#pragma unroll
    for (int a = 0; a < kPer; ++a) {
#pragma unroll
      for (int c = 0; c < kPer; ++c) sdS[(ty + 16 * a) * kLdP + tx + 16 * c] = ds[a][c];
    }
    __syncthreads();
    // dQ_i += sum_j dS_ij K_j, j ascending.
#pragma unroll 4
    for (int j = 0; j < kTile; ++j) {
      float dsv[kPer], kc[kV];
#pragma unroll
      for (int a = 0; a < kPer; ++a) dsv[a] = sdS[(ty + 16 * a) * kLdP + j];
#pragma unroll
      for (int v = 0; v < kV; ++v) kc[v] = sK[j * kLd + tx + 16 * v];
#pragma unroll
      for (int a = 0; a < kPer; ++a) {
#pragma unroll
        for (int v = 0; v < kV; ++v) dq[a][v] = fmaf(dsv[a], kc[v], dq[a][v]);
      }
    }
  }
#pragma unroll
  for (int a = 0; a < kPer; ++a) {
    const int i = qt * kTile + ty + 16 * a;
    if (i >= T) continue;
    float* dQ = dqkv + (static_cast<size_t>(b) * T + i) * ld + static_cast<size_t>(h) * hs;
#pragma unroll
    for (int v = 0; v < kV; ++v) {
      const int col = tx + 16 * v;
      if (col < hs) dQ[col] = dq[a][v] * scale;
    }
  }
}

// The padded head size the kernels run hs on, after checking the shape; throws if unsupported.
int PaddedHeadSize(const char* op, int B, int Tn, int C, int NH) {
  auto fail = [&](const std::string& why) {
    throw std::runtime_error(std::string("CudaBackend::") + op + ": " + why +
                             " (B=" + std::to_string(B) + ", T=" + std::to_string(Tn) +
                             ", C=" + std::to_string(C) + ", NH=" + std::to_string(NH) + ")");
  };
  if (NH <= 0 || C <= 0 || C % NH != 0) fail("C must be a positive multiple of NH");
  if (B > 65535 || NH > 65535) fail("B and NH must be at most 65535 (grid dimensions)");
  const int hs = C / NH;
  if (hs > 128) {
    fail("head size hs = C/NH = " + std::to_string(hs) +
         " is not supported: the flash attention kernels take hs <= 128 (templated on 16, 32, "
         "64, 128; smaller heads are zero-padded)");
  }
  return hs <= 16 ? 16 : hs <= 32 ? 32 : hs <= 64 ? 64 : 128;
}

// The most shared memory any of the three kernels takes at padded head size `padded`.
size_t FlashSharedBytes(int padded) {
  auto most = [](size_t a, size_t b, size_t c) { return a > b ? (a > c ? a : c) : (b > c ? b : c); };
  switch (padded) {
    case 16:
      return most(ForwardSmemBytes<16>(), BackwardKVSmemBytes<16>(), BackwardQSmemBytes<16>());
    case 32:
      return most(ForwardSmemBytes<32>(), BackwardKVSmemBytes<32>(), BackwardQSmemBytes<32>());
    case 64:
      return most(ForwardSmemBytes<64>(), BackwardKVSmemBytes<64>(), BackwardQSmemBytes<64>());
    default:
      return most(ForwardSmemBytes<128>(), BackwardKVSmemBytes<128>(), BackwardQSmemBytes<128>());
  }
}

template <int kHs>
void LaunchForward(float* out, float* lse, const float* qkv, int B, int Tn, int C, int NH,
                   float scale, bool causal, cudaStream_t stream) {
  constexpr size_t smem = ForwardSmemBytes<kHs>();
  CUDA_CHECK(cudaFuncSetAttribute(FlashForwardKernel<kHs>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(smem)));
  const dim3 grid(CeilDiv(Tn, kTile), NH, B);
  FlashForwardKernel<kHs>
      <<<grid, kThreads, smem, stream>>>(out, lse, qkv, Tn, C, NH, scale, causal);
  CUDA_CHECK_LAUNCH("FlashForwardKernel");
}

template <int kHs>
void LaunchBackward(float* dqkv, const float* dout, const float* qkv, const float* lse,
                    const float* D, int B, int Tn, int C, int NH, float scale, bool causal,
                    cudaStream_t stream) {
  const dim3 grid(CeilDiv(Tn, kTile), NH, B);
  constexpr size_t kv_smem = BackwardKVSmemBytes<kHs>(), q_smem = BackwardQSmemBytes<kHs>();
  CUDA_CHECK(cudaFuncSetAttribute(FlashBackwardKVKernel<kHs>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(kv_smem)));
  FlashBackwardKVKernel<kHs>
      <<<grid, kThreads, kv_smem, stream>>>(dqkv, dout, qkv, lse, D, Tn, C, NH, scale, causal);
  CUDA_CHECK_LAUNCH("FlashBackwardKVKernel");
  CUDA_CHECK(cudaFuncSetAttribute(FlashBackwardQKernel<kHs>,
                                  cudaFuncAttributeMaxDynamicSharedMemorySize,
                                  static_cast<int>(q_smem)));
  FlashBackwardQKernel<kHs>
      <<<grid, kThreads, q_smem, stream>>>(dqkv, dout, qkv, lse, D, Tn, C, NH, scale, causal);
  CUDA_CHECK_LAUNCH("FlashBackwardQKernel");
}

}  // namespace

void CudaBackend::FlashAttentionForward(float* out, float* lse, const float* qkv, int B, int Tn,
                                        int C, int NH, bool causal) {
  const int padded = PaddedHeadSize("FlashAttentionForward", B, Tn, C, NH);
  if (B > 0 && Tn > 0) {
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(C / NH)));
    switch (padded) {
      case 16:
        LaunchForward<16>(out, lse, qkv, B, Tn, C, NH, scale, causal, stream_);
        break;
      case 32:
        LaunchForward<32>(out, lse, qkv, B, Tn, C, NH, scale, causal, stream_);
        break;
      case 64:
        LaunchForward<64>(out, lse, qkv, B, Tn, C, NH, scale, causal, stream_);
        break;
      default:
        LaunchForward<128>(out, lse, qkv, B, Tn, C, NH, scale, causal, stream_);
        break;
    }
  }
  flops_executed_ += FlashAttentionForwardFlops(B, Tn, C, NH, causal);
}

void CudaBackend::FlashAttentionBackward(float* dqkv, const float* dout, const float* qkv,
                                         const float* out, const float* lse, int B, int Tn, int C,
                                         int NH, bool causal) {
  const int padded = PaddedHeadSize("FlashAttentionBackward", B, Tn, C, NH);
  if (B > 0 && Tn > 0) {
    const float scale = static_cast<float>(1.0 / std::sqrt(static_cast<double>(C / NH)));
    const size_t rows = static_cast<size_t>(B) * NH * Tn;
    float* D = static_cast<float*>(Scratch(rows * sizeof(float)));
    FlashRowDotKernel<<<CeilDiv(rows, kRowsPerBlock), kRowsPerBlock * kWarp, 0, stream_>>>(
        D, dout, out, B, Tn, C, NH);
    CUDA_CHECK_LAUNCH("FlashRowDotKernel");
    switch (padded) {
      case 16:
        LaunchBackward<16>(dqkv, dout, qkv, lse, D, B, Tn, C, NH, scale, causal, stream_);
        break;
      case 32:
        LaunchBackward<32>(dqkv, dout, qkv, lse, D, B, Tn, C, NH, scale, causal, stream_);
        break;
      case 64:
        LaunchBackward<64>(dqkv, dout, qkv, lse, D, B, Tn, C, NH, scale, causal, stream_);
        break;
      default:
        LaunchBackward<128>(dqkv, dout, qkv, lse, D, B, Tn, C, NH, scale, causal, stream_);
        break;
    }
  }
  flops_executed_ += FlashAttentionBackwardFlops(B, Tn, C, NH, causal);
}

bool CudaBackend::SupportsFlashAttention(int head_dim) const {
  if (head_dim <= 0 || head_dim > 128) return false;
  const int padded = head_dim <= 16 ? 16 : head_dim <= 32 ? 32 : head_dim <= 64 ? 64 : 128;
  int optin = 0;
  if (cudaDeviceGetAttribute(&optin, cudaDevAttrMaxSharedMemoryPerBlockOptin, options_.device) !=
      cudaSuccess) {
    (void)cudaGetLastError();
    return false;
  }
  return static_cast<size_t>(optin) >= FlashSharedBytes(padded);
}

}  // namespace raptr
