#!/usr/bin/python3
"""PyTorch reference of the model raptr implements (GPT and pre-LN BERT kinds).

Built from a dict of Hugging Face named tensors (numpy arrays or torch tensors).
Every parameter is a leaf tensor with requires_grad=True, kept in `self.params`
under its HF name, so after `loss.backward()` `self.params[name].grad` is the
gradient (None for parameters the forward pass did not touch, e.g. skipped layers).

Math (see the raptr spec):
  x = wte[tok] + wpe[pos]
  for each ACTIVE layer l (a skipped layer is the identity):
      x = x + s_l * attn(ln_1(x));  x = x + s_l * mlp(ln_2(x))
  logits = ln_f(x) @ wte^T
  loss = mean CE over positions with target >= 0 (target -1 is ignored)
LayerNorm eps 1e-5 (biased variance), GELU tanh approximation, GPT causal, BERT bidirectional.
"""
import math

import numpy as np
import torch
import torch.nn.functional as F


def param_shapes(kind, L, C, F_, V, P):
    """Ordered dict-like list of (HF name, shape) for the given config."""
    out = []
    if kind == "gpt":
        out += [("wte.weight", (V, C)), ("wpe.weight", (P, C))]
        for i in range(L):
            p = "h.%d." % i
            out += [
                (p + "ln_1.weight", (C,)), (p + "ln_1.bias", (C,)),
                (p + "attn.c_attn.weight", (C, 3 * C)), (p + "attn.c_attn.bias", (3 * C,)),
                (p + "attn.c_proj.weight", (C, C)), (p + "attn.c_proj.bias", (C,)),
                (p + "ln_2.weight", (C,)), (p + "ln_2.bias", (C,)),
                (p + "mlp.c_fc.weight", (C, F_)), (p + "mlp.c_fc.bias", (F_,)),
                (p + "mlp.c_proj.weight", (F_, C)), (p + "mlp.c_proj.bias", (C,)),
            ]
        out += [("ln_f.weight", (C,)), ("ln_f.bias", (C,))]
    elif kind == "bert":
        out += [("bert.embeddings.word_embeddings.weight", (V, C)),
                ("bert.embeddings.position_embeddings.weight", (P, C))]
        for i in range(L):
            p = "bert.encoder.layer.%d." % i
            out += [
                (p + "attention.output.LayerNorm.weight", (C,)),
                (p + "attention.output.LayerNorm.bias", (C,)),
                (p + "attention.self.query.weight", (C, C)), (p + "attention.self.query.bias", (C,)),
                (p + "attention.self.key.weight", (C, C)), (p + "attention.self.key.bias", (C,)),
                (p + "attention.self.value.weight", (C, C)), (p + "attention.self.value.bias", (C,)),
                (p + "attention.output.dense.weight", (C, C)), (p + "attention.output.dense.bias", (C,)),
                (p + "output.LayerNorm.weight", (C,)), (p + "output.LayerNorm.bias", (C,)),
                (p + "intermediate.dense.weight", (F_, C)), (p + "intermediate.dense.bias", (F_,)),
                (p + "output.dense.weight", (C, F_)), (p + "output.dense.bias", (C,)),
            ]
        out += [("cls.predictions.transform.LayerNorm.weight", (C,)),
                ("cls.predictions.transform.LayerNorm.bias", (C,))]
    else:
        raise ValueError("kind must be gpt or bert, got %r" % kind)
    return out


def layer_of(kind, name):
    """Layer index a parameter belongs to, or None for embeddings / final LN."""
    pre = "h." if kind == "gpt" else "bert.encoder.layer."
    if name.startswith(pre):
        return int(name[len(pre):].split(".", 1)[0])
    return None


def is_layernorm_weight(name):
    return name.endswith(("ln_1.weight", "ln_2.weight", "ln_f.weight", "LayerNorm.weight"))


class RefModel:
    def __init__(self, kind, weights, n_layers, n_heads, dtype=torch.float64,
                 ln_eps=1e-5, gelu="tanh", causal=None):
        """weights: dict HF name -> array. ln_eps / gelu / causal are overridable only
        so the self-test can build deliberately wrong models (negative controls)."""
        if kind not in ("gpt", "bert"):
            raise ValueError("kind must be gpt or bert")
        self.kind = kind
        self.L = n_layers
        self.NH = n_heads
        self.dtype = dtype
        self.ln_eps = ln_eps
        self.gelu = gelu
        self.causal = (kind == "gpt") if causal is None else causal
        self.params = {}
        for name, w in weights.items():
            t = torch.as_tensor(np.asarray(w)).to(dtype).clone().detach()
            t.requires_grad_(True)
            self.params[name] = t
        wte = self._p("wte.weight", "bert.embeddings.word_embeddings.weight")
        self.V, self.C = wte.shape
        self.P = self._p("wpe.weight", "bert.embeddings.position_embeddings.weight").shape[0]
        if self.C % self.NH:
            raise ValueError("d_model %d not divisible by heads %d" % (self.C, self.NH))
        expected = dict(param_shapes(kind, self.L, self.C, self._d_ff(), self.V, self.P))
        missing = sorted(set(expected) - set(self.params))
        if missing:
            raise ValueError("missing weights: %s" % missing[:5])
        for n, s in expected.items():
            if tuple(self.params[n].shape) != tuple(s):
                raise ValueError("weight %s has shape %s, expected %s"
                                 % (n, tuple(self.params[n].shape), s))

    # ---- helpers ---------------------------------------------------------------
    def _p(self, gpt_name, bert_name):
        return self.params[gpt_name if self.kind == "gpt" else bert_name]

    def _d_ff(self):
        if self.kind == "gpt":
            return self.params["h.0.mlp.c_fc.weight"].shape[1]
        return self.params["bert.encoder.layer.0.intermediate.dense.weight"].shape[0]

    def _ln(self, x, w, b):
        return F.layer_norm(x, (x.shape[-1],), w, b, self.ln_eps)

    def _act(self, x):
        if self.gelu == "tanh":
            return F.gelu(x, approximate="tanh")
        if self.gelu == "erf":
            return F.gelu(x)
        raise ValueError(self.gelu)

    def _layer(self, i):
        """(ln1w, ln1b, Wq, bq, Wk, bk, Wv, bv, Wo, bo, ln2w, ln2b, Wfc, bfc, Wpr, bpr)
        with every matrix in (in, out) layout, so y = x @ W + b."""
        p = self.params
        if self.kind == "gpt":
            h = "h.%d." % i
            C = self.C
            Wqkv, bqkv = p[h + "attn.c_attn.weight"], p[h + "attn.c_attn.bias"]
            return (p[h + "ln_1.weight"], p[h + "ln_1.bias"],
                    Wqkv[:, 0:C], bqkv[0:C], Wqkv[:, C:2 * C], bqkv[C:2 * C],
                    Wqkv[:, 2 * C:3 * C], bqkv[2 * C:3 * C],
                    p[h + "attn.c_proj.weight"], p[h + "attn.c_proj.bias"],
                    p[h + "ln_2.weight"], p[h + "ln_2.bias"],
                    p[h + "mlp.c_fc.weight"], p[h + "mlp.c_fc.bias"],
                    p[h + "mlp.c_proj.weight"], p[h + "mlp.c_proj.bias"])
        h = "bert.encoder.layer.%d." % i
        return (p[h + "attention.output.LayerNorm.weight"], p[h + "attention.output.LayerNorm.bias"],
                p[h + "attention.self.query.weight"].t(), p[h + "attention.self.query.bias"],
                p[h + "attention.self.key.weight"].t(), p[h + "attention.self.key.bias"],
                p[h + "attention.self.value.weight"].t(), p[h + "attention.self.value.bias"],
                p[h + "attention.output.dense.weight"].t(), p[h + "attention.output.dense.bias"],
                p[h + "output.LayerNorm.weight"], p[h + "output.LayerNorm.bias"],
                p[h + "intermediate.dense.weight"].t(), p[h + "intermediate.dense.bias"],
                p[h + "output.dense.weight"].t(), p[h + "output.dense.bias"])

    def _attn(self, x, Wq, bq, Wk, bk, Wv, bv, Wo, bo):
        B, T, C = x.shape
        NH, hs = self.NH, C // self.NH
        q = (x @ Wq + bq).view(B, T, NH, hs).transpose(1, 2)  # B NH T hs
        k = (x @ Wk + bk).view(B, T, NH, hs).transpose(1, 2)
        v = (x @ Wv + bv).view(B, T, NH, hs).transpose(1, 2)
        att = (q @ k.transpose(-2, -1)) * (1.0 / math.sqrt(hs))
        if self.causal:
            mask = torch.ones(T, T, dtype=torch.bool).triu(1)  # j > i
            att = att.masked_fill(mask, float("-inf"))
        att = torch.softmax(att, dim=-1)
        y = (att @ v).transpose(1, 2).reshape(B, T, C)
        return y @ Wo + bo

    # ---- public ----------------------------------------------------------------
    def zero_grad(self):
        for t in self.params.values():
            t.grad = None

    def normalize_scales(self, active, scales):
        """scales may be None, a per-layer list (len L) or a per-active-layer list."""
        n_act = sum(1 for a in active if a)
        if scales is None:
            return [1.0] * self.L
        scales = [float(s) for s in scales]
        if len(scales) == self.L:
            return scales
        if len(scales) == n_act:
            out, it = [1.0] * self.L, iter(scales)
            for i in range(self.L):
                if active[i]:
                    out[i] = next(it)
            return out
        raise ValueError("scales has %d entries; need %d (per layer) or %d (per active layer)"
                         % (len(scales), self.L, n_act))

    def forward(self, inputs, targets, active=None, scales=None):
        """inputs, targets: (B,T) int64 (torch or numpy). active: list[bool] of length L
        (None = all). scales: see normalize_scales. Returns (loss scalar, logits (B,T,V))."""
        inputs = torch.as_tensor(np.asarray(inputs), dtype=torch.int64)
        targets = torch.as_tensor(np.asarray(targets), dtype=torch.int64)
        active = [True] * self.L if active is None else [bool(a) for a in active]
        if len(active) != self.L:
            raise ValueError("active has %d entries, model has %d layers" % (len(active), self.L))
        s = self.normalize_scales(active, scales)
        B, T = inputs.shape
        if T > self.P:
            raise ValueError("T=%d exceeds max_seq %d" % (T, self.P))
        wte = self._p("wte.weight", "bert.embeddings.word_embeddings.weight")
        wpe = self._p("wpe.weight", "bert.embeddings.position_embeddings.weight")
        x = wte[inputs] + wpe[torch.arange(T)].unsqueeze(0)
        for i in range(self.L):
            if not active[i]:
                continue
            (l1w, l1b, Wq, bq, Wk, bk, Wv, bv, Wo, bo,
             l2w, l2b, Wfc, bfc, Wpr, bpr) = self._layer(i)
            x = x + s[i] * self._attn(self._ln(x, l1w, l1b), Wq, bq, Wk, bk, Wv, bv, Wo, bo)
            h = self._act(self._ln(x, l2w, l2b) @ Wfc + bfc)
            x = x + s[i] * (h @ Wpr + bpr)
        lnf = self._p("ln_f.weight", "cls.predictions.transform.LayerNorm.weight")
        lnfb = self._p("ln_f.bias", "cls.predictions.transform.LayerNorm.bias")
        logits = self._ln(x, lnf, lnfb) @ wte.t()
        loss = F.cross_entropy(logits.reshape(-1, self.V), targets.reshape(-1),
                               ignore_index=-1, reduction="mean")
        return loss, logits

    def grads(self):
        """dict HF name -> numpy float64 gradient (zeros where .grad is None)."""
        out = {}
        for n, t in self.params.items():
            g = t.grad
            out[n] = (np.zeros(tuple(t.shape)) if g is None
                      else g.detach().to(torch.float64).numpy().copy())
        return out

    def step(self, inputs, targets, active=None, scales=None):
        """forward + backward; returns (loss float, logits ndarray, grads dict)."""
        self.zero_grad()
        loss, logits = self.forward(inputs, targets, active, scales)
        loss.backward()
        return float(loss.detach()), logits.detach().to(torch.float64).numpy(), self.grads()
