#!/usr/bin/env python3
"""Summarises a bench/run.sh results file (JSON lines) as the tables docs/PERF.md quotes."""
import json
import statistics
import sys


def flops_forward(r, k):
    n = r["batch"] * r["seq"]
    c, f, v, t = r["d_model"], r.get("d_ff") or 4 * r["d_model"], r["vocab"], r["seq"]
    block = 2 * n * c * 3 * c + 2 * n * c * c + 4 * n * c * f + 4 * r["batch"] * t * t * c
    return k * block + 2 * n * c * v


def main(path):
    rows = [json.loads(line) for line in open(path) if line.strip()]
    print(f"results: {path}\n")
    print("| shape | implementation | tokens/s (median) | vs PyTorch best | step s | model GFLOP/s | "
          "% of sgemm | peak RSS MB |")
    print("|---|---|---|---|---|---|---|---|")
    for bench in ("gpt2-124m", "d384"):
        group = [r for r in rows if r["bench"] == bench]
        best = [r for r in group if r["variant"] == "pytorch-best"]
        base = best[0]["tokens_per_s_median"] if best else None
        for r in group:
            tps = r["tokens_per_s_median"]
            gf = r.get("model_gflops_per_s")
            if gf is None:
                gf = 3 * flops_forward(r, r.get("active") or r["layers"]) / r["step_s_median"] / 1e9
            ours = [x for x in group if x["variant"] == "raptr"][0]
            # The ceiling: the better of the two sgemm medians measured in raptr's process.
            sg = max(ours.get("sgemm_gflops_per_s", 0), ours.get("sgemm_model_shape_gflops_per_s", 0))
            print(f"| {bench} | {r['variant']} | {tps:.1f} | {tps / base:.2f}x | "
                  f"{r['step_s_median']:.3f} | {gf:.1f} | {100 * gf / sg:.0f}% | "
                  f"{r['peak_rss_mb']:.0f} |")
    path_rows = [r for r in rows if r["bench"] == "path"]
    if path_rows:
        print("\n| implementation | t(6) s | t(9) s | t(12) s | t(6)/t(12) | FLOPs ratio | "
              "worst deviation from linear fit | peak RSS MB k=6/9/12 |")
        print("|---|---|---|---|---|---|---|---|")
        for variant in ("raptr", "pytorch-best"):
            t = {k: statistics.median(r["step_s_median"] for r in path_rows
                                      if r["variant"] == variant and r["active"] == k)
                 for k in (6, 9, 12)
                 if any(r["variant"] == variant and r["active"] == k for r in path_rows)}
            mem_variant = "raptr-mem" if variant == "raptr" else variant
            rss = {r["active"]: r["peak_rss_mb"] for r in path_rows if r["variant"] == mem_variant}
            if not all(k in t for k in (6, 9, 12)):
                continue
            r0 = path_rows[0]
            ratio = flops_forward(r0, 6) / flops_forward(r0, 12)
            # Least-squares line t = fixed + k * per_layer over the three points.
            ks = (6, 9, 12)
            km = sum(ks) / 3
            tm = sum(t[k] for k in ks) / 3
            slope = sum((k - km) * (t[k] - tm) for k in ks) / sum((k - km) ** 2 for k in ks)
            fit = {k: tm + slope * (k - km) for k in ks}
            worst = max(abs(t[k] - fit[k]) / fit[k] for k in ks)
            print(f"| {variant} | {t[6]:.3f} | {t[9]:.3f} | {t[12]:.3f} | {t[6] / t[12]:.3f} | "
                  f"{ratio:.3f} | {100 * worst:.1f}% | "
                  f"{rss[6]:.0f} / {rss[9]:.0f} / {rss[12]:.0f} |")


if __name__ == "__main__":
    main(sys.argv[1])
