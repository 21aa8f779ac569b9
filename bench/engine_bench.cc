// engine_bench: training-step throughput of the engine at a given shape and path length, with the
// raw OpenBLAS sgemm rate measured in the same process as the ceiling to compare against.
//
// Prints one JSON line per configuration: median step time, tokens/s, model FLOPs/s (FLOPs model
// of flops.h), sgemm GFLOP/s, peak resident memory. Random tokens: the speed of a step does not
// depend on the data.
#include <cblas.h>
#include <sys/resource.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "absl/strings/numbers.h"
#include "absl/strings/str_split.h"
#include "bench/bench_shape.h"
#include "common/flags.h"
#include "common/process_env.h"
#include "common/random.h"
#include "worker/engine/cpu/cpu_backend.h"
#include "worker/engine/flops.h"
#include "worker/engine/model.h"
#include "worker/engine/optimizer.h"

namespace raptr {
namespace {

double Now() {
  return std::chrono::duration<double>(std::chrono::steady_clock::now().time_since_epoch()).count();
}

double PeakRssMb() {
  rusage u{};
  getrusage(RUSAGE_SELF, &u);
  return static_cast<double>(u.ru_maxrss) / 1024.0;
}

// Median GFLOP/s of an (M,K) x (K,N) sgemm, the engine's ceiling on this machine.
double SgemmGflops(int M, int N, int K, int reps) {
  std::vector<float> a(static_cast<size_t>(M) * K), b(static_cast<size_t>(K) * N),
      c(static_cast<size_t>(M) * N);
  CounterRng rng(7, 0);
  for (auto& x : a) x = static_cast<float>(rng.Uniform() - 0.5);
  for (auto& x : b) x = static_cast<float>(rng.Uniform() - 0.5);
  std::vector<double> rates;
  for (int r = 0; r < reps + 1; ++r) {
    const double t0 = Now();
    cblas_sgemm(CblasRowMajor, CblasNoTrans, CblasTrans, M, N, K, 1.0f, a.data(), K, b.data(), K,
                0.0f, c.data(), N);
    const double dt = Now() - t0;
    if (r > 0) rates.push_back(2.0 * M * N * K / dt / 1e9);
  }
  return Median(rates);
}

int Run(int argc, char** argv) {
  Flags flags;
  DefineBenchShapeFlags(flags);
  flags.Define("rounds", "1", "rounds over all path lengths (interleaved timing)");
  flags.Define("attention", "materialized",
               "materialized ((B,NH,T,T) kept per block) or flash (recomputed in backward)");
  absl::StatusOr<BenchShape> shape;
  absl::StatusOr<int64_t> rounds_flag;
  absl::Status parsed = flags.Parse(argc, argv, 1);
  if (parsed.ok()) shape = BenchShapeFromFlags(flags);
  if (parsed.ok()) parsed = shape.status();
  if (parsed.ok()) rounds_flag = flags.GetInt("rounds");
  if (parsed.ok()) parsed = rounds_flag.status();
  if (!parsed.ok()) {
    std::fprintf(stderr, "engine_bench: %s\n%s", std::string(parsed.message()).c_str(),
                 flags.Usage().c_str());
    return 2;
  }
  const ModelConfig& cfg = shape->model;
  const int B = shape->batch, T = shape->seq;
  const int steps = shape->steps, warmup = shape->warmup;
  const int rounds = static_cast<int>(*rounds_flag);
  const absl::StatusOr<AttentionKind> parsed_attention = ParseAttentionKind(flags.Get("attention"));
  if (!parsed_attention.ok()) {
    std::fprintf(stderr, "engine_bench: --attention: %s\n",
                 std::string(parsed_attention.status().message()).c_str());
    return 2;
  }
  const AttentionKind attention = *parsed_attention;
  const std::vector<int>& lengths = shape->lengths;

  CpuBackend<float> backend;
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
  int64_t step = 0;
  // Timings per path length, interleaved in rounds (round r runs `steps` steps of every length
  // in turn) so that drift in the machine's speed spreads evenly over the lengths compared.
  struct Timings {
    ActiveLayerSet active;
    std::vector<double> total, fwd, bwd, optim;
  };
  std::vector<Timings> timings;
  for (int k : lengths) {
    // A fixed path of k blocks spread over the depth, like a RaPTr step of length k.
    std::vector<int> layers;
    for (int i = 0; i < k; ++i) layers.push_back(static_cast<int>((i * cfg.num_layers) / k));
    timings.push_back({ActiveLayerSet::Of(cfg.num_layers, layers), {}, {}, {}, {}});
  }
  for (int round = -1; round < rounds; ++round) {  // round -1: warmup, untimed
    for (Timings& tk : timings) {
      for (int s = 0; s < (round < 0 ? warmup : steps); ++s) {
        const double t0 = Now();
        auto loss = model.Forward(inputs.data(), targets.data(), B, T, tk.active, true);
        if (!loss.ok()) {
          std::fprintf(stderr, "engine_bench: %s\n", std::string(loss.status().message()).c_str());
          return 1;
        }
        const double t1 = Now();
        if (absl::Status s = model.Backward(1.0f / static_cast<float>(B * T)); !s.ok()) {
          std::fprintf(stderr, "engine_bench: %s\n", std::string(s.message()).c_str());
          return 1;
        }
        const double t2 = Now();
        opt.Step(model.params(), model.grads(), tk.active, step++);
        const double t3 = Now();
        if (round >= 0) {
          tk.total.push_back(t3 - t0);
          tk.fwd.push_back(t1 - t0);
          tk.bwd.push_back(t2 - t1);
          tk.optim.push_back(t3 - t2);
        }
      }
    }
  }
  std::vector<std::function<void(double, double)>> lines;
  for (size_t i = 0; i < timings.size(); ++i) {
    const Timings& tk = timings[i];
    const int k = lengths[i];
    const std::vector<double>& times = tk.total;
    const double med = Median(times);
    const double flops = static_cast<double>(TrainingFlops(cfg, B, T, k));
    const int timed = static_cast<int>(times.size());
    const double fwd = Median(tk.fwd), bwd = Median(tk.bwd), optim = Median(tk.optim);
    const double min_time = *std::min_element(times.begin(), times.end());
    lines.push_back([=](double sgemm, double sgemm_model) {
      std::printf(
          "{\"impl\":\"raptr\",\"attention\":\"%s\",\"kind\":\"%s\",\"layers\":%d,\"d_model\":%d,"
          "\"heads\":%d,"
          "\"d_ff\":%d,\"vocab\":%d,\"batch\":%d,\"seq\":%d,\"active\":%d,\"steps\":%d,"
          "\"step_s_median\":%.5f,\"step_s_min\":%.5f,\"tokens_per_s_median\":%.2f,"
          "\"forward_s\":%.5f,\"backward_s\":%.5f,\"optimizer_s\":%.5f,"
          "\"model_gflops_per_s\":%.2f,\"sgemm_gflops_per_s\":%.2f,"
          "\"sgemm_model_shape_gflops_per_s\":%.2f,\"peak_rss_mb\":%.1f}\n",
          AttentionKindName(attention), ModelKindName(cfg.kind).c_str(), cfg.num_layers,
          cfg.d_model, cfg.num_heads, cfg.d_ff, cfg.vocab_size, B, T, k, timed, med, min_time,
          B * T / med, fwd, bwd, optim, flops / med / 1e9, sgemm, sgemm_model, PeakRssMb());
    });
  }
  // The ceilings, measured after the model ran (a cold start under-reports them): a large square
  // product, and the model's widest block matmul at its B*T rows. Medians of many repetitions.
  const double sgemm = SgemmGflops(1024, 1024, 1024, 31);
  const double sgemm_model = SgemmGflops(B * T, cfg.d_ff, cfg.d_model, 31);
  for (const auto& print : lines) print(sgemm, sgemm_model);
  std::fflush(stdout);
  return 0;
}

}  // namespace
}  // namespace raptr

int main(int argc, char** argv) {
  raptr::EnsurePassiveOpenMpWaitPolicy(argv);  // the defaults the worker runs with
  return raptr::Run(argc, argv);
}
