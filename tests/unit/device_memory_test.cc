// The session never touches backend memory as host memory: whole sessions (steps with stacking
// copies, a staged Gloo all-reduce, evaluation, the state digest, checkpoint save and restore) run
// on a CPU backend whose buffers are mapped PROT_NONE outside its own calls, as a GPU's memory is
// out of the host's reach, and they must agree bitwise with the same runs on the plain CPU
// backend. Any host access to a buffer (std::copy over params, hashing the moments in place, a
// checkpoint writer reading device addresses) dies with SIGSEGV here instead of passing on the
// CPU and crashing on the first GPU. The memory preflight's plan is checked against what a run
// really allocates.
#include <omp.h>
#include <sys/mman.h>
#include <unistd.h>

#include <cstring>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <thread>
#include <vector>

#include "absl/strings/str_cat.h"
#include "gloo/rendezvous/hash_store.h"
#include "gtest/gtest.h"
#include "tests/unit/small_run.h"
#include "worker/collective/gloo_group.h"
#include "worker/engine/cpu/cpu_backend.h"
#include "worker/engine/session.h"

namespace raptr {
namespace {

using testing::FreshDir;
using testing::SmallConfig;

// CpuBackend's kernels over buffers the host cannot touch between calls. Each call opens every
// buffer (PROT_READ|PROT_WRITE), runs CpuBackend's kernel, and closes them again (PROT_NONE).
// It also counts the bytes asked for, and can pretend to have a fixed capacity.
class ProtectedCpuBackend final : public Backend<float> {
 public:
  explicit ProtectedCpuBackend(std::optional<size_t> capacity = std::nullopt)
      : capacity_(capacity) {}
  ~ProtectedCpuBackend() override {
    for (const auto& [p, len] : mapped_) munmap(p, len);
  }
  std::string name() const override { return "protected-cpu"; }
  bool host_accessible() const override { return false; }
  std::optional<size_t> AvailableBytes() override {
    ThrowIfFaulted();
    if (!capacity_.has_value() || hide_capacity_) return std::nullopt;
    return *capacity_ > requested_ ? *capacity_ - requested_ : 0;
  }
  void set_capacity(std::optional<size_t> capacity) { capacity_ = capacity; }
  // Keeps the capacity but reports no budget (AvailableBytes nullopt): the preflight passes and
  // the allocations meet the limit.
  void hide_capacity() { hide_capacity_ = true; }
  // After `calls` more kernel calls, every call but FreeBytes throws `reason`, as a CUDA backend
  // does after a sticky error, and device_fault() says so.
  void set_fault(const std::string& reason, int calls = 0) {
    pending_fault_ = reason;
    calls_to_fault_ = calls;
    if (calls == 0) fault_ = reason;
  }
  std::string device_fault() const override { return fault_; }
  size_t requested_bytes() const { return requested_; }
  size_t peak_requested_bytes() const { return peak_; }

  void* AllocBytes(size_t bytes) override {
    const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
    ThrowIfFaulted();
    if (capacity_.has_value() && requested_ + bytes > *capacity_) throw std::bad_alloc();
    const size_t len = (std::max<size_t>(bytes, 1) + page - 1) / page * page;
    void* p = mmap(nullptr, len, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    mapped_[p] = len;
    sizes_[p] = bytes;
    requested_ += bytes;
    peak_ = std::max(peak_, requested_);
    return p;  // anonymous mappings are zero, as AllocBytes promises
  }
  void FreeBytes(void* ptr) override {
    auto it = mapped_.find(ptr);
    ASSERT_NE(it, mapped_.end()) << "freeing a buffer this backend does not own";
    munmap(ptr, it->second);
    requested_ -= sizes_[ptr];
    sizes_.erase(ptr);
    mapped_.erase(it);
  }
  void CopyToDevice(void* dst, const void* host_src, size_t bytes) override {
    ThrowIfFaulted();
    Open open(this);
    std::memcpy(dst, host_src, bytes);
  }
  void CopyToHost(void* host_dst, const void* src, size_t bytes) override {
    ThrowIfFaulted();
    Open open(this);
    std::memcpy(host_dst, src, bytes);
  }
  void Copy(float* dst, const float* src, size_t n) override { Run(&Cpu::Copy, dst, src, n); }
  void Zero(float* x, size_t n) override { Run(&Cpu::Zero, x, n); }
  void Synchronize() override {}

  void GatherRows(float* dst, const float* src, const int32_t* rows, int M, int C) override {
    Run(&Cpu::GatherRows, dst, src, rows, M, C);
  }
  void ScatterRows(float* dst, const float* src, const int32_t* rows, int M, int N,
                   int C) override {
    Run(&Cpu::ScatterRows, dst, src, rows, M, N, C);
  }
  void EncoderForward(float* out, const int32_t* tokens, const float* wte, const float* wpe, int B,
                      int Tn, int C) override {
    Run(&Cpu::EncoderForward, out, tokens, wte, wpe, B, Tn, C);
  }
  void EncoderBackward(float* dwte, float* dwpe, const float* dout, const int32_t* tokens, int B,
                       int Tn, int C) override {
    Run(&Cpu::EncoderBackward, dwte, dwpe, dout, tokens, B, Tn, C);
  }
  void LayerNormForward(float* out, float* mean, float* rstd, const float* inp, const float* w,
                        const float* b, int N, int C) override {
    Run(&Cpu::LayerNormForward, out, mean, rstd, inp, w, b, N, C);
  }
  void LayerNormBackward(float* dinp, float* dw, float* db, const float* dout, const float* inp,
                         const float* w, const float* mean, const float* rstd, int N,
                         int C) override {
    Run(&Cpu::LayerNormBackward, dinp, dw, db, dout, inp, w, mean, rstd, N, C);
  }
  void MatmulForward(float* out, const float* inp, const float* w, const float* bias, int N, int C,
                     int OC, float alpha, bool accumulate) override {
    Run(&Cpu::MatmulForward, out, inp, w, bias, N, C, OC, alpha, accumulate);
  }
  void MatmulBackward(float* dinp, float* dw, float* dbias, const float* dout, const float* inp,
                      const float* w, int N, int C, int OC, float alpha) override {
    Run(&Cpu::MatmulBackward, dinp, dw, dbias, dout, inp, w, N, C, OC, alpha);
  }
  void AttentionForward(float* out, float* att, const float* qkv, int B, int Tn, int C, int NH,
                        bool causal) override {
    Run(&Cpu::AttentionForward, out, att, qkv, B, Tn, C, NH, causal);
  }
  void AttentionBackward(float* dqkv, float* datt, const float* dout, const float* qkv,
                         const float* att, int B, int Tn, int C, int NH) override {
    Run(&Cpu::AttentionBackward, dqkv, datt, dout, qkv, att, B, Tn, C, NH);
  }
  void FlashAttentionForward(float* out, float* lse, const float* qkv, int B, int Tn, int C, int NH,
                             bool causal) override {
    Run(&Cpu::FlashAttentionForward, out, lse, qkv, B, Tn, C, NH, causal);
  }
  void FlashAttentionBackward(float* dqkv, const float* dout, const float* qkv, const float* out,
                              const float* lse, int B, int Tn, int C, int NH,
                              bool causal) override {
    Run(&Cpu::FlashAttentionBackward, dqkv, dout, qkv, out, lse, B, Tn, C, NH, causal);
  }
  void GeluForward(float* out, const float* inp, size_t n) override {
    Run(&Cpu::GeluForward, out, inp, n);
  }
  void GeluBackward(float* dinp, const float* inp, const float* dout, size_t n) override {
    Run(&Cpu::GeluBackward, dinp, inp, dout, n);
  }
  void CrossEntropyForward(float* logits, float* losses, const int32_t* targets, int N, int V,
                           float grad_scale, bool compute_grad) override {
    Run(&Cpu::CrossEntropyForward, logits, losses, targets, N, V, grad_scale, compute_grad);
  }
  double SumSquares(const float* x, size_t n) override {
    ThrowIfFaulted();
    Open open(this);
    return inner_.SumSquares(x, n);
  }
  void AdamW(float* params, float* grads, float* m, float* v, size_t n, float lr, float beta1,
             float beta2, float eps, float weight_decay, int64_t t, float grad_scale) override {
    Run(&Cpu::AdamW, params, grads, m, v, n, lr, beta1, beta2, eps, weight_decay, t, grad_scale);
  }

 private:
  using Cpu = CpuBackend<float>;
  // Every buffer readable and writable for the scope of one backend call.
  struct Open {
    explicit Open(ProtectedCpuBackend* b) : b(b) { b->Protect(PROT_READ | PROT_WRITE); }
    ~Open() { b->Protect(PROT_NONE); }
    ProtectedCpuBackend* b;
  };
  void Protect(int prot) {
    for (const auto& [p, len] : mapped_) {
      if (mprotect(p, len, prot) != 0) std::abort();
    }
  }
  void ThrowIfFaulted() const {
    if (!fault_.empty()) throw std::runtime_error(fault_);
  }
  template <typename F, typename... Args>
  void Run(F kernel, Args... args) {
    if (!pending_fault_.empty() && fault_.empty() && --calls_to_fault_ <= 0)
      fault_ = pending_fault_;
    ThrowIfFaulted();
    Open open(this);
    (inner_.*kernel)(args...);
    flops_executed_ = inner_.flops_executed();
  }

  Cpu inner_;
  std::optional<size_t> capacity_;
  bool hide_capacity_ = false;
  std::string fault_, pending_fault_;
  int calls_to_fault_ = 0;
  std::map<void*, size_t> mapped_;  // address -> mapped length (whole pages)
  std::map<void*, size_t> sizes_;   // address -> bytes asked for
  size_t requested_ = 0, peak_ = 0;
};

TEST(ProtectedCpuBackend, TouchingABufferFromTheHostFaults) {
  // The guard is what makes the session tests below able to fail: a host write to a buffer of
  // this backend kills the process, as it would with a GPU's memory.
  GTEST_FLAG_SET(death_test_style, "threadsafe");  // OpenMP's threads may be running
  ProtectedCpuBackend be;
  float* x = be.Alloc(16);
  std::vector<float> host(16, 1.0f);
  Upload<float>(be, host.data(), DeviceSpan<float>(x, 16));
  EXPECT_EQ(Download<float>(be, DeviceSpan<float>(x, 16)), host);
  EXPECT_DEATH({ x[3] = 2.0f; }, "");
  EXPECT_DEATH(
      {
        volatile float y = x[0];
        (void)y;
      },
      "");
  be.FreeBytes(x);
}

// One OpenMP thread for the kernels while it lives, on the calling thread. mprotect from the
// calling thread while OpenMP's workers spin between regions costs TLB shootdowns on every call
// (a 9-step run took 13 s instead of 0.4 s on 2 busy cores); the runs compared bitwise use the
// same thread count, which is all CpuBackend's determinism needs.
class OneKernelThread {
 public:
  OneKernelThread() : saved_(omp_get_max_threads()) { omp_set_num_threads(1); }
  ~OneKernelThread() { omp_set_num_threads(saved_); }

 private:
  int saved_;
};

// What a run leaves behind, to compare two backends bitwise.
struct RunTrace {
  std::vector<double> losses;
  std::vector<double> eval_losses;
  std::vector<uint64_t> digests;
  std::vector<float> final_params;
};

// `steps` steps of `cfg` on `backend` as rank `rank` of `world` over `reducer`, with the
// schedule's stacking copies; evaluation and the digest every 3 steps; a checkpoint after
// step `save_at`, and then a fresh session (on a second backend from `make_backend`) restores it
// and runs the rest, so restore feeds the remaining steps.
template <typename MakeBackend>
RunTrace RunOn(MakeBackend make_backend, const TrainerConfig& cfg, const std::string& run_dir,
               int rank, int world, GradientReducer* reducer, int64_t save_at) {
  OneKernelThread one_thread;
  RunTrace trace;
  auto run = [&](TrainingSession& session, int64_t from, int64_t to) {
    for (int64_t step = from; step < to; ++step) {
      StepInput input;
      input.step = step;
      input.copies = StackingCopiesAtStep(cfg.schedule, cfg.model.num_layers, step);
      const PathPlan plan = PlanPath(cfg.schedule, cfg.model.num_layers, cfg.seed, step);
      input.stage = plan.stage;
      input.active = ToActiveSet(plan);
      absl::StatusOr<StepOutcome> out = session.RunStep(input, reducer);
      ASSERT_TRUE(out.ok()) << out.status();
      trace.losses.push_back(out->local_loss);
      if (step % 3 == 2) {
        absl::StatusOr<EvalOutcome> eval =
            session.Evaluate(2, ActiveLayerSet::Full(cfg.model.num_layers));
        ASSERT_TRUE(eval.ok()) << eval.status();
        trace.eval_losses.push_back(eval->loss);
        absl::StatusOr<uint64_t> digest = session.StateDigest();
        ASSERT_TRUE(digest.ok()) << digest.status();
        trace.digests.push_back(*digest);
      }
    }
  };
  std::string checkpoint;
  {
    absl::StatusOr<std::unique_ptr<TrainingSession>> first =
        TrainingSession::Create(cfg, rank, world, make_backend());
    EXPECT_TRUE(first.ok()) << first.status();
    if (!first.ok()) return trace;
    run(**first, 0, save_at + 1);
    if (rank == 0) {
      absl::StatusOr<std::string> saved = (*first)->Save(run_dir);
      EXPECT_TRUE(saved.ok()) << saved.status();
      if (saved.ok()) checkpoint = *saved;
    } else {
      checkpoint = CheckpointPath(run_dir, save_at + 1);
    }
  }
  // The other ranks read rank 0's checkpoint: wait until it is there (LATEST is written last).
  for (int i = 0; i < 2000 && !std::filesystem::exists(checkpoint); ++i) {
    std::this_thread::sleep_for(std::chrono::milliseconds(5));
  }
  absl::StatusOr<std::unique_ptr<TrainingSession>> second =
      TrainingSession::Create(cfg, rank, world, make_backend());
  EXPECT_TRUE(second.ok()) << second.status();
  if (!second.ok()) return trace;
  const absl::Status restored = (*second)->Restore(checkpoint);
  EXPECT_TRUE(restored.ok()) << restored;
  if (!restored.ok()) return trace;
  EXPECT_EQ((*second)->step(), save_at + 1);
  run(**second, save_at + 1, cfg.steps);
  trace.final_params = Download((*second)->backend(), (*second)->model().params());
  return trace;
}

std::unique_ptr<Backend<float>> Protected() { return std::make_unique<ProtectedCpuBackend>(); }
std::unique_ptr<Backend<float>> Plain() { return std::make_unique<CpuBackend<float>>(); }

void ExpectSameTrace(const RunTrace& device, const RunTrace& host) {
  ASSERT_FALSE(host.losses.empty());
  EXPECT_EQ(device.losses, host.losses);
  EXPECT_EQ(device.eval_losses, host.eval_losses);
  EXPECT_EQ(device.digests, host.digests);
  ASSERT_FALSE(host.final_params.empty());
  EXPECT_EQ(device.final_params, host.final_params);
}

TEST(DeviceMemory, StackingRunOnUntouchableMemoryMatchesTheCpuBitwise) {
  // Gradual stacking: its growth copies blocks and clears their moments, which the session used
  // to do with std::copy / std::fill on the buffers.
  const std::string dir = FreshDir("device_memory_stacking");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  cfg.steps = 9;
  cfg.optimizer.total_steps = cfg.steps;
  cfg.schedule = DefaultStackingSchedule(cfg.model.num_layers, cfg.steps);
  bool grows = false;
  for (int64_t s = 0; s < cfg.steps; ++s) {
    grows = grows || !StackingCopiesAtStep(cfg.schedule, cfg.model.num_layers, s).empty();
  }
  ASSERT_TRUE(grows) << "the schedule must copy blocks within the run";
  const RunTrace device = RunOn(Protected, cfg, dir + "/device", 0, 1, nullptr, 3);
  const RunTrace host = RunOn(Plain, cfg, dir + "/host", 0, 1, nullptr, 3);
  ExpectSameTrace(device, host);
}

// Two ranks over real Gloo on loopback: on the protected backend the session stages each
// gradient range through the host; on the CPU backend Gloo reduces the buffers in place.
RunTrace TwoRanks(bool protected_memory, const TrainerConfig& cfg, const std::string& dir) {
  gloo::rendezvous::HashStore store;
  RunTrace traces[2];
  std::thread threads[2];
  for (int rank = 0; rank < 2; ++rank) {
    threads[rank] = std::thread([&, rank] {
      absl::StatusOr<std::unique_ptr<GlooGroup>> group =
          GlooGroup::Connect(store, rank, 2, "127.0.0.1", std::chrono::seconds(30));
      ASSERT_TRUE(group.ok()) << group.status();
      traces[rank] = protected_memory ? RunOn(Protected, cfg, dir, rank, 2, group->get(), 4)
                                      : RunOn(Plain, cfg, dir, rank, 2, group->get(), 4);
    });
  }
  for (std::thread& t : threads) t.join();
  // Replicas agree bit for bit (the digest is what the coordinator compares).
  EXPECT_EQ(traces[0].digests, traces[1].digests);
  EXPECT_EQ(traces[0].final_params, traces[1].final_params);
  return traces[0];
}

TEST(DeviceMemory, DataParallelRaptrOnUntouchableMemoryMatchesTheCpuBitwise) {
  const std::string dir = FreshDir("device_memory_dp");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kBert);
  cfg.steps = 8;
  cfg.optimizer.total_steps = cfg.steps;
  cfg.schedule = DefaultRaptrSchedule(cfg.model.num_layers, cfg.steps);
  const RunTrace device = TwoRanks(true, cfg, dir + "/device");
  const RunTrace host = TwoRanks(false, cfg, dir + "/host");
  ExpectSameTrace(device, host);
}

class DeviceMemoryPlan : public ::testing::TestWithParam<AttentionKind> {};

TEST_P(DeviceMemoryPlan, MatchesWhatARunAllocates) {
  // A RaPTr schedule of exact paths whose longest stage runs 3 of 4 blocks: the plan counts 3
  // slots of activations, and a run that reaches that stage allocates exactly the plan.
  const std::string dir =
      FreshDir(absl::StrCat("device_memory_plan_", AttentionKindName(GetParam())));
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  cfg.attention = GetParam();
  cfg.steps = 6;
  cfg.optimizer.total_steps = cfg.steps;
  cfg.schedule.kind = PathScheduleConfig::Kind::kRaptr;
  cfg.schedule.sampling = PathSampling::kExact;
  cfg.schedule.fixed_layers = {0};
  cfg.schedule.full_warmup_steps = 0;
  cfg.schedule.stages = {{2, 2}, {3, 4}};
  ASSERT_TRUE(ValidatePathSchedule(cfg.schedule, cfg.model.num_layers).ok());
  const MemoryPlan plan = PlanMemory(cfg, 2);
  EXPECT_EQ(plan.max_path, 3);

  OneKernelThread one_thread;
  auto backend = std::make_unique<ProtectedCpuBackend>();
  ProtectedCpuBackend* be = backend.get();
  absl::StatusOr<std::unique_ptr<TrainingSession>> session =
      TrainingSession::Create(cfg, 0, 2, std::move(backend));
  ASSERT_TRUE(session.ok()) << session.status();
  for (int64_t step = 0; step < cfg.steps; ++step) {
    StepInput input;
    input.step = step;
    const PathPlan p = PlanPath(cfg.schedule, cfg.model.num_layers, cfg.seed, step);
    input.active = ToActiveSet(p);
    ASSERT_TRUE((*session)->RunStep(input, nullptr).ok());
  }
  ASSERT_TRUE((*session)->Evaluate(1, ActiveLayerSet::Full(cfg.model.num_layers)).ok());
  EXPECT_EQ(be->peak_requested_bytes(), plan.total()) << plan.DebugString();

  // A full-model schedule needs every block's activations: more than the 3-block plan.
  TrainerConfig full = cfg;
  full.schedule = PathScheduleConfig{};
  EXPECT_EQ(PlanMemory(full, 2).max_path, cfg.model.num_layers);
  EXPECT_GT(PlanMemory(full, 2).activation_bytes, plan.activation_bytes);
}

INSTANTIATE_TEST_SUITE_P(Attention, DeviceMemoryPlan,
                         ::testing::Values(AttentionKind::kMaterialized, AttentionKind::kFlash),
                         [](const auto& info) {
                           return std::string(AttentionKindName(info.param));
                         });

TEST(DeviceMemory, FlashAttentionHoldsNoTByTMatrixAndTrainsLikeMaterialized) {
  // At T=16 a block's (B,NH,T,T) probabilities are as large as its qkv; flash keeps (B,NH,T).
  const std::string dir = FreshDir("device_memory_flash");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  cfg.schedule = PathScheduleConfig{};
  const MemoryPlan materialized = PlanMemory(cfg);
  cfg.attention = AttentionKind::kFlash;
  const MemoryPlan flash = PlanMemory(cfg);
  const size_t L = cfg.model.num_layers, B = cfg.batch, T = cfg.seq, NH = cfg.model.num_heads;
  // Per block: att (B,NH,T,T) becomes lse (B,NH,T); and the backward's datt scratch goes.
  EXPECT_EQ(materialized.activation_bytes - flash.activation_bytes,
            (L * B * NH * T * (T - 1) + B * NH * T * T) * sizeof(float));

  // The same run both ways. Both are fp32 evaluations of one function, so they differ only by
  // rounding: the first step's loss (same weights) within 1e-5 relative (the ops agree to ~1e-6,
  // tests/unit/flash_attention_test.cc), and the 8-step curve within 1e-3 relative, far inside
  // what any real difference in the math (a wrong mask, a missing rescale) moves it.
  OneKernelThread one_thread;
  std::vector<double> losses[2];
  for (int i = 0; i < 2; ++i) {
    TrainerConfig c = cfg;
    c.attention = i == 0 ? AttentionKind::kMaterialized : AttentionKind::kFlash;
    absl::StatusOr<std::unique_ptr<TrainingSession>> session = TrainingSession::Create(c);
    ASSERT_TRUE(session.ok()) << session.status();
    EXPECT_EQ((*session)->model().attention(), c.attention);
    for (int64_t step = 0; step < c.steps; ++step) {
      StepInput input;
      input.step = step;
      input.active = ActiveLayerSet::Full(c.model.num_layers);
      absl::StatusOr<StepOutcome> out = (*session)->RunStep(input, nullptr);
      ASSERT_TRUE(out.ok()) << out.status();
      losses[i].push_back(out->local_loss);
    }
  }
  EXPECT_NEAR(losses[1][0], losses[0][0], 1e-5 * losses[0][0]);
  for (size_t s = 0; s < losses[0].size(); ++s) {
    EXPECT_NEAR(losses[1][s], losses[0][s], 1e-3 * losses[0][s]) << "step " << s;
  }
  EXPECT_LT(losses[0].back(), losses[0].front());  // it trains
}

TEST(DeviceMemory, PreflightRefusesAJobThatCannotHoldItsLongestPath) {
  const std::string dir = FreshDir("device_memory_preflight");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  const MemoryPlan plan = PlanMemory(cfg, 1);
  absl::StatusOr<std::unique_ptr<TrainingSession>> refused =
      TrainingSession::Create(cfg, 0, 1, std::make_unique<ProtectedCpuBackend>(plan.total() - 1));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted);
  const std::string message(refused.status().message());
  EXPECT_NE(message.find("activations of a 4-block path"), std::string::npos) << message;
  EXPECT_NE(message.find("is free"), std::string::npos) << message;
  EXPECT_NE(message.find("4x16"), std::string::npos) << message;  // the local batch

  absl::StatusOr<std::unique_ptr<TrainingSession>> fits =
      TrainingSession::Create(cfg, 0, 1, std::make_unique<ProtectedCpuBackend>(plan.total()));
  EXPECT_TRUE(fits.ok()) << fits.status();
}

TEST(DeviceMemory, OutOfMemoryNamesTheTensorAndASlotIsWholeOrAbsent) {
  // Host memory grows as paths first appear: a Model there can run out inside a step. The
  // allocation names the tensor, a path position's slot is allocated whole or not at all, and
  // the same forward runs once memory is there, with nothing leaked.
  const std::string dir = FreshDir("device_memory_oom");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  OneKernelThread one_thread;
  ProtectedCpuBackend be;
  Model<float> model(cfg.model, &be);
  model.InitWeights(1);
  const size_t params = be.requested_bytes();
  ASSERT_EQ(params, Model<float>::ParameterBytes(cfg.model));
  // Room for about two blocks' activations of the four.
  be.set_capacity(params + Model<float>::ActivationBytes(cfg.model, cfg.batch, cfg.seq, 2));
  std::vector<int32_t> tokens(static_cast<size_t>(cfg.batch) * cfg.seq, 5);
  const ActiveLayerSet full = ActiveLayerSet::Full(cfg.model.num_layers);
  try {
    (void)model.Forward(tokens.data(), tokens.data(), cfg.batch, cfg.seq, full, true);
    FAIL() << "the forward fitted";
  } catch (const BackendOutOfMemory& e) {
    const std::string what = e.what();
    EXPECT_NE(what.find("protected-cpu out of memory allocating activations of path position"),
              std::string::npos)
        << what;
    EXPECT_NE(what.find("GiB free"), std::string::npos) << what;
  }
  be.set_capacity(std::nullopt);
  absl::StatusOr<double> loss =
      model.Forward(tokens.data(), tokens.data(), cfg.batch, cfg.seq, full, true);
  ASSERT_TRUE(loss.ok()) << loss.status();
  ASSERT_TRUE(model.Backward(1.0f).ok());
  EXPECT_EQ(be.requested_bytes(),
            params + Model<float>::ActivationBytes(cfg.model, cfg.batch, cfg.seq, 4));
}

TEST(DeviceMemory, ABertModelAllocatesWhatActivationBytesCounts) {
  // BERT's head runs on its masked rows, gathered into a buffer of their own (B*T rows at most)
  // with their indices on the device: ActivationBytes counts both, so after a training step a
  // BERT model holds its parameters and exactly ActivationBytes, the same GPT's plus those two.
  const std::string dir = FreshDir("device_memory_bert");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kBert);
  OneKernelThread one_thread;
  ProtectedCpuBackend be;
  Model<float> model(cfg.model, &be);
  model.InitWeights(1);
  const size_t params = be.requested_bytes();
  const size_t N = static_cast<size_t>(cfg.batch) * cfg.seq, C = cfg.model.d_model;
  std::vector<int32_t> tokens(N, 5), targets(N, -1);
  for (size_t i = 1; i < N; i += 3) targets[i] = 7;
  const ActiveLayerSet full = ActiveLayerSet::Full(cfg.model.num_layers);
  absl::StatusOr<double> loss =
      model.Forward(tokens.data(), targets.data(), cfg.batch, cfg.seq, full, true);
  ASSERT_TRUE(loss.ok()) << loss.status();
  ASSERT_TRUE(model.Backward(1.0f).ok());
  const size_t bert =
      Model<float>::ActivationBytes(cfg.model, cfg.batch, cfg.seq, cfg.model.num_layers);
  EXPECT_EQ(be.requested_bytes(), params + bert);
  ModelConfig gpt = cfg.model;
  gpt.kind = ModelKind::kGpt;
  EXPECT_EQ(bert - Model<float>::ActivationBytes(gpt, cfg.batch, cfg.seq, cfg.model.num_layers),
            N * C * sizeof(float) + N * sizeof(int32_t));
}

TEST(DeviceMemory, ADeviceSessionHoldsItsPlanFromTheStart) {
  // On a device (memory the host cannot touch) a session allocates its whole plan when it
  // starts: what the preflight promised is held, and memory that is not there after all (another
  // process took it) fails the start naming the tensor, not a step at the first long stage.
  const std::string dir = FreshDir("device_memory_reserve");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  const MemoryPlan plan = PlanMemory(cfg);
  {
    auto backend = std::make_unique<ProtectedCpuBackend>();
    ProtectedCpuBackend* be = backend.get();
    absl::StatusOr<std::unique_ptr<TrainingSession>> session =
        TrainingSession::Create(cfg, 0, 1, std::move(backend));
    ASSERT_TRUE(session.ok()) << session.status();
    EXPECT_EQ(be->requested_bytes(), plan.total());  // before any step
  }
  auto short_of_memory = std::make_unique<ProtectedCpuBackend>(plan.total() - 1);
  short_of_memory->hide_capacity();  // the preflight sees no budget; the allocations do
  absl::StatusOr<std::unique_ptr<TrainingSession>> refused =
      TrainingSession::Create(cfg, 0, 1, std::move(short_of_memory));
  ASSERT_FALSE(refused.ok());
  EXPECT_EQ(refused.status().code(), absl::StatusCode::kResourceExhausted) << refused.status();
  EXPECT_NE(refused.status().message().find("protected-cpu out of memory allocating"),
            absl::string_view::npos)
      << refused.status();
}

TEST(DeviceMemory, AFaultedDeviceFailsEveryCallAndTheSessionStillCloses) {
  // After a sticky fault every backend call throws (a CUDA context answers each call with the
  // error). The step fails with a Status, the session reports the fault, later calls fail at once,
  // and destroying the session (its buffers freed through the faulted backend) does not throw.
  const std::string dir = FreshDir("device_memory_fault");
  TrainerConfig cfg = SmallConfig(dir, ModelKind::kGpt);
  OneKernelThread one_thread;
  auto backend = std::make_unique<ProtectedCpuBackend>();
  ProtectedCpuBackend* be = backend.get();
  absl::StatusOr<std::unique_ptr<TrainingSession>> session =
      TrainingSession::Create(cfg, 0, 1, std::move(backend));
  ASSERT_TRUE(session.ok()) << session.status();
  StepInput input;
  input.step = 0;
  input.active = ActiveLayerSet::Full(cfg.model.num_layers);
  ASSERT_TRUE((*session)->RunStep(input, nullptr).ok());
  be->set_fault("an illegal memory access was encountered", 10);  // inside the next forward
  input.step = 1;
  absl::StatusOr<StepOutcome> failed = (*session)->RunStep(input, nullptr);
  ASSERT_FALSE(failed.ok());
  EXPECT_EQ(failed.status().code(), absl::StatusCode::kInternal) << failed.status();
  EXPECT_NE(failed.status().message().find("an illegal memory access"), absl::string_view::npos);
  EXPECT_EQ((*session)->DeviceFault(), "an illegal memory access was encountered");
  EXPECT_EQ((*session)->RunStep(input, nullptr).status().code(),
            absl::StatusCode::kFailedPrecondition);  // nothing runs on it again
  EXPECT_EQ((*session)->Save(dir + "/run").status().code(), absl::StatusCode::kFailedPrecondition);
  EXPECT_EQ((*session)->StateDigest().status().code(), absl::StatusCode::kFailedPrecondition);
  session->reset();  // frees every buffer through the faulted backend
}

}  // namespace
}  // namespace raptr
