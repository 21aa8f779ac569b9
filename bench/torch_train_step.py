#!/usr/bin/python3
"""PyTorch CPU training-step benchmark for raptr's GPT architecture.

Same math as raptr: pre-LN blocks (LayerNorm eps 1e-5, causal attention, GELU tanh),
tied LM head without bias, mean cross-entropy; float32; no torch.compile.
A step = zero_grad + forward + backward + clip_grad_norm_(1.0) + AdamW(lr 1e-4, wd 0.1,
fused=False) step. Only K active layers (a fixed random subset chosen with --seed) are
run; the skipped layers exist (memory) but are not executed, get no gradient and are
not updated by AdamW (their .grad stays None).

  /usr/bin/python3 bench/torch_train_step.py --layers 6 --d-model 384 --heads 6 --d-ff 1536 \
      --vocab 50257 --seq 64 --batch 4 --steps 10 --warmup 2 [--active K] [--threads N]

Prints one JSON line.
"""
import argparse
import json
import math
import random
import resource
import statistics
import time

import torch
import torch.nn as nn
import torch.nn.functional as F


class Block(nn.Module):
    def __init__(self, C, NH, F_):
        super().__init__()
        self.NH = NH
        self.ln_1 = nn.LayerNorm(C, eps=1e-5)
        self.c_attn = nn.Linear(C, 3 * C)
        self.c_proj = nn.Linear(C, C)
        self.ln_2 = nn.LayerNorm(C, eps=1e-5)
        self.c_fc = nn.Linear(C, F_)
        self.mlp_proj = nn.Linear(F_, C)

    def attn(self, x, mask):
        B, T, C = x.shape
        hs = C // self.NH
        q, k, v = self.c_attn(x).split(C, dim=2)
        q = q.view(B, T, self.NH, hs).transpose(1, 2)
        k = k.view(B, T, self.NH, hs).transpose(1, 2)
        v = v.view(B, T, self.NH, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        att = att.masked_fill(mask, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return self.c_proj(y)

    def forward(self, x, mask, scale=1.0):
        x = x + scale * self.attn(self.ln_1(x), mask)
        x = x + scale * self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x)), approximate="tanh"))
        return x


class GPT(nn.Module):
    def __init__(self, L, C, NH, F_, V, P):
        super().__init__()
        self.wte = nn.Embedding(V, C)
        self.wpe = nn.Embedding(P, C)
        self.h = nn.ModuleList([Block(C, NH, F_) for _ in range(L)])
        self.ln_f = nn.LayerNorm(C, eps=1e-5)
        for n, p in self.named_parameters():
            if p.dim() >= 2:
                nn.init.normal_(p, mean=0.0, std=0.02)
            elif n.endswith("bias"):
                nn.init.zeros_(p)

    def forward(self, idx, targets, active_layers, scales):
        B, T = idx.shape
        x = self.wte(idx) + self.wpe(torch.arange(T, device=idx.device)).unsqueeze(0)
        mask = torch.ones(T, T, dtype=torch.bool, device=idx.device).triu(1)
        for i, s in zip(active_layers, scales):
            x = self.h[i](x, mask, s)
        logits = self.ln_f(x) @ self.wte.weight.t()
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--layers", type=int, default=6)
    ap.add_argument("--d-model", type=int, default=384)
    ap.add_argument("--heads", type=int, default=6)
    ap.add_argument("--d-ff", type=int, default=None, help="default 4 * d-model")
    ap.add_argument("--vocab", type=int, default=50257)
    ap.add_argument("--seq", type=int, default=64)
    ap.add_argument("--max-seq", type=int, default=None, help="wpe rows; default --seq")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=10, help="timed steps")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps first")
    ap.add_argument("--active", type=int, default=None, help="number of active layers K (default all)")
    ap.add_argument("--scale", type=float, default=1.0,
                    help="residual scale of every active layer (math only; ~free)")
    ap.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    ap.add_argument("--seed", type=int, default=0)
    a = ap.parse_args()

    L, C, NH = a.layers, a.d_model, a.heads
    F_ = a.d_ff or 4 * C
    P = a.max_seq or a.seq
    K = L if a.active is None else a.active
    if not (1 <= K <= L):
        ap.error("--active must be in 1..layers")
    if C % NH:
        ap.error("d-model must be divisible by heads")
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(a.seed)
    active_layers = sorted(random.Random(a.seed).sample(range(L), K))
    scales = [a.scale] * K

    model = GPT(L, C, NH, F_, a.vocab, P)
    model.train()
    try:
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1, fused=False)
    except TypeError:  # torch < 2.0 has no `fused` argument for AdamW (never fused on CPU anyway)
        opt = torch.optim.AdamW(model.parameters(), lr=1e-4, weight_decay=0.1)
    n_params = sum(p.numel() for p in model.parameters())
    n_active_params = sum(p.numel() for n, p in model.named_parameters()
                          if not n.startswith("h.") or int(n.split(".")[1]) in active_layers)

    g = torch.Generator().manual_seed(a.seed + 1)
    total = a.warmup + a.steps
    batches = [(torch.randint(0, a.vocab, (a.batch, a.seq), generator=g),
                torch.randint(0, a.vocab, (a.batch, a.seq), generator=g)) for _ in range(total)]

    times, losses = [], []
    for step in range(total):
        x, y = batches[step]
        t0 = time.perf_counter()
        opt.zero_grad(set_to_none=True)
        loss = model(x, y, active_layers, scales)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        lv = loss.item()
        dt = time.perf_counter() - t0
        losses.append(lv)
        if step >= a.warmup:
            times.append(dt)

    med = statistics.median(times) if times else float("nan")
    out = {
        "impl": "pytorch",
        "model": "gpt",
        "layers": L, "d_model": C, "heads": NH, "d_ff": F_, "vocab": a.vocab,
        "seq": a.seq, "max_seq": P, "batch": a.batch,
        "active": K, "active_layers": active_layers,
        "steps": a.steps, "warmup": a.warmup,
        "params": n_params, "active_params": n_active_params,
        "tokens_per_s_median": (a.batch * a.seq / med) if times else None,
        "step_s_median": med,
        "step_s_all": [round(t, 6) for t in times],
        "loss_first": losses[0] if losses else None,
        "loss_last": losses[-1] if losses else None,
        "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
