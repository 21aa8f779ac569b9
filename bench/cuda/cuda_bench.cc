// cuda_bench: training-step throughput of Model<float> on CudaBackend at a given shape and path
// length, with cuBLAS's sgemm rate (fp32 and TF32) measured in the same process as the ceiling.
//
// Prints one JSON line per path length, like engine_bench: median step time (forward + backward +
// AdamW step, timed with CUDA events on the backend's stream after warmup), tokens/s, model
// FLOPs/s (FLOPs model of flops.h), the phase times, the sgemm ceilings and the GPU memory in use.
// Random tokens: the speed of a step does not depend on the data.
//
// MFU is counted the way llm.c counts it (llmc/mfu.h, gpt2_estimate_mfu): 6 * N_params + 6 * L *
// C * T FLOPs per token, N_params the parameters the step trains (a path of k blocks: the shared
// tensors plus k blocks; wpe counted at max_seq) and L the blocks it runs (k), against a dense
// peak: --peak-bf16-tflops (H100/H200 SXM, 989) and --peak-tf32-tflops (494.7). These FLOPs count
// causal attention at half of T^2, so they are below flops.h's executed FLOPs (full T^2).
#include <cublas_v2.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cstdio>
#include <stdexcept>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_shape.h"
#include "common/flags.h"
#include "common/random.h"
#include "worker/engine/cuda/cuda_backend.h"
#include "worker/engine/flops.h"
#include "worker/engine/model.h"
#include "worker/engine/optimizer.h"

namespace raptr {
namespace {

void Check(cudaError_t e, const char* what) {
  if (e != cudaSuccess) throw std::runtime_error(std::string(what) + ": " + cudaGetErrorString(e));
}
void Check(cublasStatus_t s, const char* what) {
  if (s != CUBLAS_STATUS_SUCCESS) {
    throw std::runtime_error(std::string(what) + ": " + cublasGetStatusString(s));
  }
}

// CUDA events on one stream; Seconds(a, b) after b has completed.
class Events {
 public:
  explicit Events(int n) : events_(n) {
    for (auto& e : events_) Check(cudaEventCreate(&e), "cudaEventCreate");
  }
  ~Events() {
    for (auto& e : events_) cudaEventDestroy(e);
  }
  void Record(int i, cudaStream_t s) { Check(cudaEventRecord(events_[i], s), "cudaEventRecord"); }
  void Wait(int i) { Check(cudaEventSynchronize(events_[i]), "cudaEventSynchronize"); }
  double Seconds(int a, int b) {
    float ms = 0;
    Check(cudaEventElapsedTime(&ms, events_[a], events_[b]), "cudaEventElapsedTime");
    return ms / 1e3;
  }

 private:
  std::vector<cudaEvent_t> events_;
};

// Median GFLOP/s of a row-major (M,K) x (N,K)^T product (the MatmulForward shape) on cuBLAS.
double SgemmGflops(int M, int N, int K, bool tf32, int reps) {
  cudaStream_t stream;
  Check(cudaStreamCreate(&stream), "cudaStreamCreate");
  cublasHandle_t handle;
  Check(cublasCreate(&handle), "cublasCreate");
  Check(cublasSetStream(handle, stream), "cublasSetStream");
  float *a, *b, *c;
  Check(cudaMalloc(&a, sizeof(float) * M * K), "cudaMalloc");
  Check(cudaMalloc(&b, sizeof(float) * N * K), "cudaMalloc");
  Check(cudaMalloc(&c, sizeof(float) * M * N), "cudaMalloc");
  std::vector<float> host(static_cast<size_t>(std::max(M, N)) * K);
  CounterRng rng(7, 0);
  for (auto& x : host) x = static_cast<float>(rng.Uniform() - 0.5);
  Check(cudaMemcpy(a, host.data(), sizeof(float) * M * K, cudaMemcpyHostToDevice), "cudaMemcpy");
  Check(cudaMemcpy(b, host.data(), sizeof(float) * N * K, cudaMemcpyHostToDevice), "cudaMemcpy");
  const float one = 1.f, zero = 0.f;
  const cublasComputeType_t compute = tf32 ? CUBLAS_COMPUTE_32F_FAST_TF32 : CUBLAS_COMPUTE_32F;
  Events ev(2);
  std::vector<double> rates;
  for (int r = 0; r < reps + 2; ++r) {  // two warmups
    ev.Record(0, stream);
    Check(cublasGemmEx(handle, CUBLAS_OP_T, CUBLAS_OP_N, N, M, K, &one, b, CUDA_R_32F, K, a,
                       CUDA_R_32F, K, &zero, c, CUDA_R_32F, N, compute, CUBLAS_GEMM_DEFAULT),
          "cublasGemmEx");
    ev.Record(1, stream);
    ev.Wait(1);
    if (r >= 2) rates.push_back(2.0 * M * N * K / ev.Seconds(0, 1) / 1e9);
  }
  cudaFree(a);
  cudaFree(b);
  cudaFree(c);
  cublasDestroy(handle);
  cudaStreamDestroy(stream);
  return Median(rates);
}

double GpuMemUsedMb() {
  size_t free_bytes = 0, total = 0;
  Check(cudaMemGetInfo(&free_bytes, &total), "cudaMemGetInfo");
  return static_cast<double>(total - free_bytes) / (1024.0 * 1024.0);
}

int Run(int argc, char** argv) {
  Flags flags;
  DefineBenchShapeFlags(flags);
  flags.Define("tf32", "false", "let cuBLAS use TF32 for the model's matmuls");
  flags.Define("attention", "materialized",
               "materialized ((B,NH,T,T) kept per block) or flash (recomputed in backward)");
  flags.Define("peak-bf16-tflops", "989", "dense bf16 peak for the MFU column (H100/H200 SXM)");
  flags.Define("peak-tf32-tflops", "494.7", "dense TF32 peak for the MFU column (H100/H200 SXM)");
  absl::StatusOr<BenchShape> shape;
  absl::StatusOr<bool> tf32;
  absl::Status parsed = flags.Parse(argc, argv, 1);
  if (parsed.ok()) shape = BenchShapeFromFlags(flags);
  if (parsed.ok()) parsed = shape.status();
  if (parsed.ok()) tf32 = flags.GetBool("tf32");
  if (parsed.ok()) parsed = tf32.status();
  double peak_bf16 = 0, peak_tf32 = 0;
  if (parsed.ok() && (!absl::SimpleAtod(flags.Get("peak-bf16-tflops"), &peak_bf16) ||
                      !absl::SimpleAtod(flags.Get("peak-tf32-tflops"), &peak_tf32) ||
                      peak_bf16 <= 0 || peak_tf32 <= 0)) {
    parsed = absl::InvalidArgumentError("--peak-bf16-tflops and --peak-tf32-tflops must be > 0");
  }
  if (!parsed.ok()) {
    std::fprintf(stderr, "cuda_bench: %s\n%s", std::string(parsed.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  if (CudaBackend::DeviceCount() == 0) {
    std::fprintf(stderr, "cuda_bench: no CUDA device\n");
    return 1;
  }
  const ModelConfig& cfg = shape->model;
  const int B = shape->batch, T = shape->seq;
  const int steps = shape->steps, warmup = shape->warmup;
  const std::vector<int>& lengths = shape->lengths;

  CudaBackendOptions options;
  options.allow_tf32 = *tf32;
  const absl::StatusOr<AttentionKind> parsed_attention = ParseAttentionKind(flags.Get("attention"));
  if (!parsed_attention.ok()) {
    std::fprintf(stderr, "cuda_bench: --attention: %s\n",
                 std::string(parsed_attention.status().message()).c_str());
    return 2;
  }
  const AttentionKind attention = *parsed_attention;
  CudaBackend backend(options);
  const std::string device = CudaBackend::DeviceName(0);
  auto* stream = static_cast<cudaStream_t>(backend.stream());
  Model<float> model(cfg, &backend, attention);
  model.InitWeights(1);
  OptimizerConfig ocfg;
  ocfg.total_steps = 1000000;
  AdamWOptimizer<float> opt(ocfg, model.layout(), &backend);
  std::vector<int32_t> inputs(static_cast<size_t>(B) * T), targets(inputs.size());
  CounterRng rng(3, 0);
  for (size_t i = 0; i < inputs.size(); ++i) {
    inputs[i] = static_cast<int32_t>(rng.Below(cfg.vocab_size));
    targets[i] = static_cast<int32_t>(rng.Below(cfg.vocab_size));
  }
  struct Line {
    int k;
    double med, min, fwd, bwd, optim, loss, mem_mb;
  };
  std::vector<Line> lines;
  int64_t step = 0;
  Events ev(4);
  for (int k : lengths) {
    std::vector<int> layers;  // a fixed path of k blocks spread over the depth
    for (int i = 0; i < k; ++i) layers.push_back(static_cast<int>((i * cfg.num_layers) / k));
    const ActiveLayerSet active = ActiveLayerSet::Of(cfg.num_layers, layers);
    std::vector<double> times, fwd, bwd, optim;
    double loss = 0;
    for (int s = 0; s < warmup + steps; ++s) {
      ev.Record(0, stream);
      auto l = model.Forward(inputs.data(), targets.data(), B, T, active, true);
      if (!l.ok()) {
        std::fprintf(stderr, "cuda_bench: %s\n", std::string(l.status().message()).c_str());
        return 1;
      }
      loss = *l;
      ev.Record(1, stream);
      if (absl::Status s = model.Backward(1.0f / static_cast<float>(B * T)); !s.ok()) {
        throw std::runtime_error(std::string(s.message()));
      }
      ev.Record(2, stream);
      opt.Step(model.params(), model.grads(), active, step++);
      ev.Record(3, stream);
      ev.Wait(3);
      if (s >= warmup) {
        times.push_back(ev.Seconds(0, 3));
        fwd.push_back(ev.Seconds(0, 1));
        bwd.push_back(ev.Seconds(1, 2));
        optim.push_back(ev.Seconds(2, 3));
      }
    }
    lines.push_back({k, Median(times), *std::min_element(times.begin(), times.end()), Median(fwd),
                     Median(bwd), Median(optim), loss, GpuMemUsedMb()});
  }
  // The ceilings, measured after the model ran (warm clocks): a large square product and the
  // model's widest block matmul at its B*T rows, each in fp32 and TF32.
  const double sgemm_fp32 = SgemmGflops(4096, 4096, 4096, false, 11);
  const double sgemm_tf32 = SgemmGflops(4096, 4096, 4096, true, 11);
  const double model_fp32 = SgemmGflops(B * T, cfg.d_ff, cfg.d_model, false, 21);
  const double model_tf32 = SgemmGflops(B * T, cfg.d_ff, cfg.d_model, true, 21);
  const ParamLayout& layout = model.layout();
  for (const Line& l : lines) {
    const double flops = static_cast<double>(TrainingFlops(cfg, B, T, l.k));
    // llm.c's accounting over the parameters this path trains (the k blocks timed above).
    double params = static_cast<double>(layout.total());
    for (int layer = l.k; layer < cfg.num_layers; ++layer) {
      params -= static_cast<double>(layout.LayerRange(layer).size());  // blocks are equal-sized
    }
    const double llmc_per_token = 6.0 * params + 6.0 * l.k * cfg.d_model * static_cast<double>(T);
    const double llmc_tflops = llmc_per_token * B * T / l.med / 1e12;
    std::printf(
        "{\"impl\":\"raptr-cuda\",\"device\":\"%s\",\"attention\":\"%s\",\"tf32\":%s,\"kind\":\"%"
        "s\",\"layers\":%d,"
        "\"d_model\":%d,\"heads\":%d,\"d_ff\":%d,\"vocab\":%d,\"batch\":%d,\"seq\":%d,"
        "\"active\":%d,\"steps\":%d,\"step_s_median\":%.6f,\"step_s_min\":%.6f,"
        "\"tokens_per_s_median\":%.1f,\"forward_s\":%.6f,\"backward_s\":%.6f,"
        "\"optimizer_s\":%.6f,\"model_gflops_per_s\":%.1f,\"sgemm_fp32_gflops_per_s\":%.1f,"
        "\"sgemm_tf32_gflops_per_s\":%.1f,\"sgemm_model_shape_fp32_gflops_per_s\":%.1f,"
        "\"sgemm_model_shape_tf32_gflops_per_s\":%.1f,\"loss\":%.5f,\"gpu_mem_used_mb\":%.0f,"
        "\"params_trained\":%.0f,\"llmc_flops_per_token\":%.0f,\"llmc_tflops_per_s\":%.3f,"
        "\"mfu_bf16_peak\":%.4f,\"mfu_tf32_peak\":%.4f,\"peak_bf16_tflops\":%.1f,"
        "\"peak_tf32_tflops\":%.1f}\n",
        device.c_str(), AttentionKindName(attention), *tf32 ? "true" : "false",
        ModelKindName(cfg.kind).c_str(), cfg.num_layers, cfg.d_model, cfg.num_heads, cfg.d_ff,
        cfg.vocab_size, B, T, l.k, steps, l.med, l.min, B * T / l.med, l.fwd, l.bwd, l.optim,
        flops / l.med / 1e9, sgemm_fp32, sgemm_tf32, model_fp32, model_tf32, l.loss, l.mem_mb,
        params, llmc_per_token, llmc_tflops, llmc_tflops / peak_bf16, llmc_tflops / peak_tf32,
        peak_bf16, peak_tf32);
  }
  std::fflush(stdout);
  return 0;
}

}  // namespace
}  // namespace raptr

int main(int argc, char** argv) {
  try {
    return raptr::Run(argc, argv);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "cuda_bench: %s\n", e.what());
    return 1;
  }
}
