#!/usr/bin/env python3
"""Compares two raptr runs: their checkpoints' weights, or their jobs' per-step losses.

  compare_checkpoints.py A_DIR B_DIR --exact      every tensor bitwise equal
  compare_checkpoints.py A_DIR B_DIR --rtol R     max |a - b| <= R * max |a| over all tensors
  compare_checkpoints.py --losses STORE.db JOB_A JOB_B --spec JOB.yaml
      per-step training losses of two jobs of the same spec on different world sizes, within
      the fp32 bounds derived below (docs/TESTING.md)

--exact is for runs the design promises bitwise equal (same world size, same machine). --rtol is
a fitted tolerance: no test should use it across world sizes or machines.
Prints the largest difference; exit status 0 when within bounds, 1 otherwise.
"""
import argparse
import json
import math
import re
import sqlite3
import struct
import sys
from array import array


def read_tensors(path):
    with open(path, "rb") as f:
        data = f.read()
    (header_len,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + header_len])
    base = 8 + header_len
    tensors = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        if info["dtype"] != "F32":
            sys.exit(f"{path}: tensor {name} is {info['dtype']}, expected F32")
        begin, end = info["data_offsets"]
        values = array("f")
        values.frombytes(data[base + begin:base + end])
        tensors[name] = values
    return tensors


U = 2.0 ** -24  # fp32 unit roundoff


def gamma(n):
    """Higham's gamma_n: n fp32 roundings in a chain (a sum or dot product of n terms, any order)
    are within gamma_n * sum |terms| of the exact result."""
    return n * U / (1 - n * U)


def forward_chain(spec_path):
    """The longest chain of fp32 roundings from the weights to one per-position loss (as
    ForwardChain in tests/unit/data_parallel_test.cc): per block two LayerNorms (2C each), the
    qkv, projection and MLP products (C, C, C, F), attention (C + 2T); then ln_f (2C), the tied
    head (C) and the log-sum-exp over V."""
    text = open(spec_path).read()

    def field(name, default=None):
        m = re.search(r"\b" + name + r":\s*(\d+)", text)
        if m is None and default is None:
            sys.exit(f"{spec_path}: no {name}")
        return int(m.group(1)) if m else default

    L, C, V, T = field("layers"), field("d_model"), field("vocab_size"), field("seq")
    F = field("d_ff", 4 * C)
    return L * (2 * C + C + (C + 2 * T) + C + 2 * C + C + F) + 2 * C + C + V


def job_losses(store, job):
    rows = sqlite3.connect(f"file:{store}?mode=ro", uri=True).execute(
        "SELECT step, loss FROM step_summaries WHERE job_id = ? ORDER BY step", (job,)).fetchall()
    if not rows:
        sys.exit(f"{store}: no step summaries for job {job}")
    return [loss for _, loss in rows]


def compare_losses(args):
    a, b = job_losses(args.losses, args.a), job_losses(args.losses, args.b)
    if len(a) != len(b):
        print(f"{args.a} has {len(a)} steps, {args.b} {len(b)}")
        return 1
    # Step 0 runs from the same initial weights on the same global batch: the job loss is a
    # double sum of fp32 per-position losses over the ranks, and a per-position loss
    # lse(z) - z_y moves by at most twice its logits' error, each logit within gamma_F of exact
    # relative to the logits' scale (O(1) here: max(1, loss) stands for it); two such results
    # differ by at most 2 * 2 gamma_F * max(1, loss). The double sums add < n 2^-53: nothing.
    factor = 4 * gamma(forward_chain(args.spec))
    step0_bound = factor * max(1.0, a[0])
    # Later steps start from weights that differ by rounding amplified by AdamW (its update is
    # ~ lr * sign(g) wherever |g| is at rounding level), so no a-priori fp32 bound holds for a
    # free-running trajectory. What a correct data-parallel run guarantees is that this drift is
    # far below what a different batch or a different update does: the loss's own step-to-step
    # noise sigma (RMS of a[k] - a[k-1], measured on run A). Require |a - b| <= the fp32 bound +
    # sigma / 4 at every step: a rank training on the wrong rows, a wrong loss weighting or a
    # missing share of the gradient moves the curve by O(sigma) within a few steps.
    sigma = math.sqrt(sum((a[k] - a[k - 1]) ** 2 for k in range(1, len(a))) / (len(a) - 1))
    worst_k, worst_ratio, failed = 0, 0.0, False
    for k, (x, y) in enumerate(zip(a, b)):
        bound = factor * max(1.0, x) + (0 if k == 0 else sigma / 4)
        ratio = abs(x - y) / bound
        if ratio > worst_ratio:
            worst_k, worst_ratio = k, ratio
        if ratio > 1:
            failed = True
            print(f"step {k}: loss {x:.9g} vs {y:.9g}, |a - b| = {abs(x - y):.3g} > bound {bound:.3g}")
    print(f"step 0: |a - b| = {abs(a[0] - b[0]):.3g} (fp32 bound {step0_bound:.3g}); "
          f"steps 1..{len(a) - 1}: loss noise sigma = {sigma:.3g}, bound fp32 + sigma/4; "
          f"worst |a - b| / bound = {worst_ratio:.3g} at step {worst_k}")
    return 1 if failed else 0


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--exact", action="store_true")
    parser.add_argument("--rtol", type=float, default=1e-5)
    parser.add_argument("--losses", metavar="STORE_DB",
                        help="compare jobs A and B's per-step losses from the coordinator's store")
    parser.add_argument("--spec", help="the jobs' spec (YAML), for the fp32 bound (--losses)")
    args = parser.parse_args()
    if args.losses:
        if not args.spec:
            parser.error("--losses needs --spec")
        return compare_losses(args)
    a = read_tensors(args.a + "/model.safetensors")
    b = read_tensors(args.b + "/model.safetensors")
    if sorted(a) != sorted(b):
        print(f"tensor names differ: {sorted(set(a) ^ set(b))}")
        return 1
    max_abs = max(max(abs(x) for x in t) for t in a.values())
    worst, worst_name, identical = 0.0, "", True
    for name in a:
        if a[name].tobytes() != b[name].tobytes():
            identical = False
        diff = max(abs(x - y) for x, y in zip(a[name], b[name]))
        if diff > worst:
            worst, worst_name = diff, name
    print(f"max |a - b| = {worst:.3g} ({worst_name or 'all equal'}), max |a| = {max_abs:.3g}, "
          f"bitwise {'identical' if identical else 'different'}")
    if args.exact:
        return 0 if identical else 1
    return 0 if worst <= args.rtol * max_abs else 1


if __name__ == "__main__":
    sys.exit(main())
