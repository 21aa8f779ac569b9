#!/usr/bin/env python3
"""PyTorch GPT-2 training step on the GPU, on the shapes cuda_bench times (issue 11).

The reference for raptr's CUDA numbers in the same device call (scripts/device-check.sh runs
both): the same architecture as raptr's GPT (pre-LN blocks, LayerNorm eps 1e-5, GELU tanh,
learned positions, tied LM head without bias, mean cross-entropy over B*T targets), GPT-2 124M
by default, and the same step: zero_grad + forward + backward + clip_grad_norm_(1.0) + AdamW
(lr 1e-4, betas (0.9, 0.95), wd 0.1; fused on CUDA). A path of k < L blocks runs blocks
i*L//k for i < k, as cuda_bench does; the skipped blocks get no gradient and no update.

Configs (--configs, comma list, run in order in one process): {eager,compile}-{fp32,tf32,bf16}.
  fp32   float32 matmuls at full precision (torch.backends.cuda.matmul.allow_tf32 = False)
  tf32   float32 weights and activations, matmuls in TF32 ('high' matmul precision)
  bf16   torch.autocast(bfloat16) over the forward, fp32 master weights (AMP), TF32 elsewhere
Attention is F.scaled_dot_product_attention (flash / memory-efficient kernels) unless
--attn naive (raptr's math: the (B,NH,T,T) probabilities materialised). compile-* wraps the
model in torch.compile; its first step (the compilation) is reported as compile_s and is not
timed.

MFU is llm.c's accounting (llmc/mfu.h): 6 * N_params + 6 * k * C * T FLOPs per token, N_params
the trained parameters (shared tensors + k blocks, wpe at max(T, 1024) rows), against the dense
bf16 peak (--peak-bf16-tflops, 989 for H100/H200 SXM) and the dense TF32 peak (494.7), the same
fields cuda_bench prints.

  python3 tests/parity/torch_step_bench.py --batch 16 --seq 1024 \\
      --configs eager-fp32,eager-tf32,eager-bf16,compile-bf16 --budget-s 90

Prints one JSON line per config on stdout (a config left out for the budget or failing still
gets a line, with "skipped" or "error"); progress goes to stderr. Exit status 0 when every config
ran or was skipped for the budget, 1 when one failed, 2 on bad arguments, 3 without a GPU (unless
--device cpu, a smoke test of the script itself at a small shape).
"""
import argparse
import json
import math
import statistics
import sys
import time

MODES = ("fp32", "tf32", "bf16")
IMPLS = ("eager", "compile")


def log(msg):
    print(f"torch_step_bench: {msg}", file=sys.stderr, flush=True)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--layers", type=int, default=12)
    p.add_argument("--d-model", type=int, default=768)
    p.add_argument("--heads", type=int, default=12)
    p.add_argument("--d-ff", type=int, default=0, help="0: 4 * d-model")
    p.add_argument("--vocab", type=int, default=50257)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--seq", type=int, default=1024)
    p.add_argument("--active", type=int, default=0, help="path length k (0: all layers)")
    p.add_argument("--configs", default="eager-fp32,eager-tf32,eager-bf16,compile-bf16")
    p.add_argument("--attn", choices=("sdpa", "naive"), default="sdpa")
    p.add_argument("--steps", type=int, default=10, help="timed steps per config")
    p.add_argument("--warmup", type=int, default=3, help="untimed steps first (compile: the first)")
    p.add_argument("--budget-s", type=float, default=0,
                   help="start no config once this many seconds have passed (0: no limit)")
    p.add_argument("--compile-estimate-s", type=float, default=75,
                   help="seconds a compile-* config is assumed to need, against --budget-s")
    p.add_argument("--eager-estimate-s", type=float, default=15,
                   help="seconds an eager-* config is assumed to need, against --budget-s")
    p.add_argument("--peak-bf16-tflops", type=float, default=989.0)
    p.add_argument("--peak-tf32-tflops", type=float, default=494.7)
    p.add_argument("--device", default="cuda", help="cuda, or cpu for a smoke test")
    p.add_argument("--seed", type=int, default=1)
    a = p.parse_args(argv)
    a.d_ff = a.d_ff or 4 * a.d_model
    a.active = a.active or a.layers
    if not (0 < a.active <= a.layers) or a.d_model % a.heads or min(a.batch, a.seq, a.steps) <= 0:
        p.error("need 0 < --active <= --layers, --heads dividing --d-model, positive sizes")
    configs = []
    for c in a.configs.split(","):
        impl, _, mode = c.strip().partition("-")
        if impl not in IMPLS or mode not in MODES:
            p.error(f"--configs: bad config '{c}' (want {{eager,compile}}-{{fp32,tf32,bf16}})")
        configs.append((impl, mode))
    a.config_list = configs
    return a


def build_model(torch, a, device):
    nn, F = torch.nn, torch.nn.functional
    have_sdpa = hasattr(F, "scaled_dot_product_attention")
    use_sdpa = a.attn == "sdpa" and have_sdpa

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            C = a.d_model
            self.ln_1 = nn.LayerNorm(C, eps=1e-5)
            self.c_attn = nn.Linear(C, 3 * C)
            self.c_proj = nn.Linear(C, C)
            self.ln_2 = nn.LayerNorm(C, eps=1e-5)
            self.c_fc = nn.Linear(C, a.d_ff)
            self.mlp_proj = nn.Linear(a.d_ff, C)

        def attn(self, x):
            B, T, C = x.shape
            NH = a.heads
            q, k, v = self.c_attn(x).split(C, dim=2)
            q, k, v = (t.view(B, T, NH, C // NH).transpose(1, 2) for t in (q, k, v))
            if use_sdpa:
                y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            else:
                att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(C // NH))
                mask = torch.ones(T, T, dtype=torch.bool, device=x.device).triu(1)
                att = torch.softmax(att.masked_fill(mask, float("-inf")), dim=-1)
                y = att @ v
            return self.c_proj(y.transpose(1, 2).reshape(B, T, C))

        def forward(self, x):
            x = x + self.attn(self.ln_1(x))
            return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))

    class GPT(nn.Module):
        def __init__(self):
            super().__init__()
            self.wte = nn.Embedding(a.vocab, a.d_model)
            self.wpe = nn.Embedding(max(a.seq, 1024), a.d_model)
            self.h = nn.ModuleList(Block() for _ in range(a.layers))
            self.ln_f = nn.LayerNorm(a.d_model, eps=1e-5)
            self.path = [(i * a.layers) // a.active for i in range(a.active)]
            for m in self.modules():  # GPT-2 init (std 0.02, zero biases)
                if isinstance(m, (nn.Linear, nn.Embedding)):
                    nn.init.normal_(m.weight, std=0.02)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)

        def forward(self, idx, targets):
            T = idx.shape[1]
            pos = torch.arange(T, device=idx.device)
            x = self.wte(idx) + self.wpe(pos)
            for l in self.path:
                x = self.h[l](x)
            logits = self.ln_f(x) @ self.wte.weight.t()  # tied head, no bias
            return F.cross_entropy(logits.float().view(-1, logits.shape[-1]), targets.view(-1))

    model = GPT().to(device)
    shared = sum(p.numel() for n, p in model.named_parameters() if not n.startswith("h."))
    block = sum(p.numel() for p in model.h[0].parameters())
    return model, shared + a.active * block, ("sdpa" if use_sdpa else "naive")


def run_config(torch, a, impl, mode, device):
    cuda = device.type == "cuda"
    torch.backends.cuda.matmul.allow_tf32 = mode != "fp32"
    torch.backends.cudnn.allow_tf32 = mode != "fp32"
    if hasattr(torch, "set_float32_matmul_precision"):
        torch.set_float32_matmul_precision("highest" if mode == "fp32" else "high")
    torch.manual_seed(a.seed)
    model, params, attn = build_model(torch, a, device)
    line = {"impl": f"torch-{impl}", "mode": mode, "tf32": mode != "fp32", "attn": attn,
            "torch": torch.__version__, "layers": a.layers, "d_model": a.d_model,
            "heads": a.heads, "d_ff": a.d_ff, "vocab": a.vocab, "batch": a.batch, "seq": a.seq,
            "active": a.active, "steps": a.steps}
    if cuda:
        line["device"] = torch.cuda.get_device_name(device)
    step_model = model
    if impl == "compile":
        if not hasattr(torch, "compile"):
            line["skipped"] = f"torch {torch.__version__} has no torch.compile"
            return line
        step_model = torch.compile(model)
    fused = {"fused": True} if cuda else {}
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.1,
                            **fused)
    g = torch.Generator(device="cpu").manual_seed(a.seed + 1)
    idx = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(device)
    tgt = torch.randint(0, a.vocab, (a.batch, a.seq), generator=g).to(device)
    autocast = (torch.autocast(device_type=device.type, dtype=torch.bfloat16)
                if mode == "bf16" else None)

    def step():
        opt.zero_grad(set_to_none=True)
        if autocast is not None:
            with autocast:
                loss = step_model(idx, tgt)
        else:
            loss = step_model(idx, tgt)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        return loss

    sync = torch.cuda.synchronize if cuda else (lambda: None)
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    t0 = time.perf_counter()
    loss = step()
    sync()
    line["first_step_s"] = round(time.perf_counter() - t0, 3)
    if impl == "compile":
        line["compile_s"] = line["first_step_s"]
    for _ in range(max(0, a.warmup - 1)):
        step()
    sync()
    times = []
    for _ in range(a.steps):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            loss = step()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t = time.perf_counter()
            loss = step()
            times.append(time.perf_counter() - t)
    med = statistics.median(times)
    per_token = 6.0 * params + 6.0 * a.active * a.d_model * a.seq
    tflops = per_token * a.batch * a.seq / med / 1e12
    line.update({
        "step_s_median": round(med, 6), "step_s_min": round(min(times), 6),
        "tokens_per_s_median": round(a.batch * a.seq / med, 1), "loss": round(float(loss), 5),
        "params_trained": params, "llmc_flops_per_token": per_token,
        "llmc_tflops_per_s": round(tflops, 3),
        "mfu_bf16_peak": round(tflops / a.peak_bf16_tflops, 4),
        "mfu_tf32_peak": round(tflops / a.peak_tf32_tflops, 4),
        "peak_bf16_tflops": a.peak_bf16_tflops, "peak_tf32_tflops": a.peak_tf32_tflops,
    })
    if cuda:
        line["gpu_mem_used_mb"] = round(torch.cuda.max_memory_allocated(device) / 2**20)
    return line


def main(argv):
    a = parse_args(argv)
    start = time.monotonic()
    import torch  # after argument parsing: --help works without torch

    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        for impl, mode in a.config_list:
            print(json.dumps({"impl": f"torch-{impl}", "mode": mode, "batch": a.batch,
                              "seq": a.seq, "active": a.active, "skipped": "no CUDA device"}))
        log(f"torch {torch.__version__}: no CUDA device")
        return 3
    failed = False
    for impl, mode in a.config_list:
        est = a.compile_estimate_s if impl == "compile" else a.eager_estimate_s
        elapsed = time.monotonic() - start
        if a.budget_s and elapsed + est > a.budget_s:
            print(json.dumps({"impl": f"torch-{impl}", "mode": mode, "batch": a.batch,
                              "seq": a.seq, "active": a.active,
                              "skipped": f"budget ({elapsed:.0f}s of {a.budget_s:.0f}s used, "
                                         f"needs ~{est:.0f}s)"}), flush=True)
            continue
        log(f"{impl}-{mode} B={a.batch} T={a.seq} k={a.active} (t={elapsed:.0f}s)")
        try:
            line = run_config(torch, a, impl, mode, device)
        except Exception as e:  # noqa: BLE001 -- one failing config must not hide the others
            failed = True
            line = {"impl": f"torch-{impl}", "mode": mode, "batch": a.batch, "seq": a.seq,
                    "active": a.active, "error": f"{type(e).__name__}: {str(e)[:300]}"}
        line["wall_s"] = round(time.monotonic() - start - elapsed, 1)
        print(json.dumps(line), flush=True)
        if impl == "compile" and hasattr(torch, "_dynamo"):
            torch._dynamo.reset()  # drop the compiled graphs (and the model they hold)
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
