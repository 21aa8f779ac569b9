// FLOPs model (see flops.h).
#include "worker/engine/flops.h"

namespace raptr {

uint64_t BlockForwardFlops(const ModelConfig& cfg, int B, int T) {
  const uint64_t N = static_cast<uint64_t>(B) * T;
  const uint64_t C = cfg.d_model, F = cfg.d_ff;
  const uint64_t matmuls = 2 * N * C * (3 * C) + 2 * N * C * C + 2 * N * C * F + 2 * N * F * C;
  const uint64_t attention = 4ull * B * static_cast<uint64_t>(T) * T * C;  // QK^T and PV
  return matmuls + attention;
}

uint64_t HeadForwardFlops(const ModelConfig& cfg, int64_t rows) {
  return 2ull * static_cast<uint64_t>(rows) * cfg.d_model * cfg.vocab_size;
}

uint64_t ForwardFlops(const ModelConfig& cfg, int B, int T, int num_active) {
  return num_active * BlockForwardFlops(cfg, B, T) +
         HeadForwardFlops(cfg, static_cast<int64_t>(B) * T);
}

uint64_t TrainingFlops(const ModelConfig& cfg, int B, int T, int num_active, int64_t head_rows) {
  // Backward does two products per forward product (input and weight gradients; for
  // attention dP, dV, dQ, dK against QK^T and PV).
  const int64_t rows = head_rows < 0 ? static_cast<int64_t>(B) * T : head_rows;
  return 3 * (num_active * BlockForwardFlops(cfg, B, T) + HeadForwardFlops(cfg, rows));
}

}  // namespace raptr
