"""docs/RESULTS.md and its plots from the stored runs of bench/paper/study.py.

Plots are SVG written here (no plotting package is installed on these machines): line charts with
axes, ticks, gridlines and a legend.
"""
import csv
import math
import os
import statistics

import investigate  # bench/paper/investigate.py

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DOCS = os.path.join(ROOT, "docs")
FIGS = os.path.join(DOCS, "results")
COLUMNS = ["step", "stage", "path_length", "loss", "eval_loss", "lr", "tokens", "flops",
           "flops_full", "step_seconds"]
COLORS = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2",
          "#7f7f7f", "#bcbd22", "#17becf", "#000000"]
LABELS = {"full": "full training", "raptr": "RaPTr (6-8-10-12)", "pld": "PLD",
          "layerdrop": "LayerDrop (keep 0.75)", "stacking": "stacking (6-9-12)",
          "full-equal-flops": "full, RaPTr's FLOPs", "raptr-exact": "RaPTr, exact sampling",
          "raptr-frozen": "RaPTr, frozen skipped", "raptr-no-fixed": "RaPTr, no fixed layers",
          "raptr-scaled": "RaPTr, 1/q scaling", "raptr-warmup": "RaPTr, 10% full warmup"}


def write_csv(path, rows):
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        w.writeheader()
        for r in rows:
            w.writerow({k: r.get(k, "") for k in COLUMNS})


def read_csv(path):
    with open(path) as f:
        rows = []
        for r in csv.DictReader(f):
            rows.append({k: (float(v) if v not in ("", None) else None) for k, v in r.items()})
        return rows


# ------------------------------------------------------------------------------------------------
# SVG line charts.

def _nice_ticks(lo, hi, n=5):
    if hi <= lo:
        hi = lo + 1
    raw = (hi - lo) / n
    mag = 10 ** math.floor(math.log10(raw))
    step = min((m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw), default=10 * mag)
    start = math.floor(lo / step) * step
    ticks = []
    t = start
    while t <= hi + step * 1e-9:
        if t >= lo - step * 1e-9:
            ticks.append(t)
        t += step
    return ticks


def _fmt(v):
    if v == 0:
        return "0"
    a = abs(v)
    if a >= 1e9 or a < 1e-2:
        return f"{v:.1e}".replace("e+0", "e").replace("e+", "e")
    if a >= 100:
        return f"{v:.0f}"
    return f"{v:.3g}"


def svg_chart(path, title, xlabel, ylabel, series, ylim=None, vlines=()):
    """series: [(label, xs, ys, color, dashed)]; writes an SVG line chart."""
    W, H, L, R, T, B = 760, 440, 70, 210, 40, 50
    xs = [x for s in series for x in s[1]]
    ys = [y for s in series for y in s[2]]
    if not xs:
        return False
    x0, x1 = min(xs), max(xs)
    y0, y1 = ylim if ylim else (min(ys), max(ys))
    pad = (y1 - y0) * 0.05 or 0.1
    if not ylim:
        y0, y1 = y0 - pad, y1 + pad
    px = lambda x: L + (x - x0) / ((x1 - x0) or 1) * (W - L - R)
    py = lambda y: T + (1 - (y - y0) / ((y1 - y0) or 1)) * (H - T - B)
    out = [f'<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" '
           f'font-family="sans-serif" font-size="12">',
           f'<rect width="{W}" height="{H}" fill="white"/>',
           f'<text x="{W / 2 - R / 2}" y="22" text-anchor="middle" font-size="14">{title}</text>']
    for t in _nice_ticks(x0, x1):
        out.append(f'<line x1="{px(t):.1f}" y1="{T}" x2="{px(t):.1f}" y2="{H - B}" '
                   f'stroke="#e5e5e5"/>')
        out.append(f'<text x="{px(t):.1f}" y="{H - B + 16}" text-anchor="middle">{_fmt(t)}</text>')
    for t in _nice_ticks(y0, y1):
        out.append(f'<line x1="{L}" y1="{py(t):.1f}" x2="{W - R}" y2="{py(t):.1f}" '
                   f'stroke="#e5e5e5"/>')
        out.append(f'<text x="{L - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_fmt(t)}</text>')
    for v in vlines:
        out.append(f'<line x1="{px(v):.1f}" y1="{T}" x2="{px(v):.1f}" y2="{H - B}" '
                   f'stroke="#999" stroke-dasharray="2,3"/>')
    out.append(f'<rect x="{L}" y="{T}" width="{W - L - R}" height="{H - T - B}" fill="none" '
               f'stroke="#333"/>')
    out.append(f'<text x="{(L + W - R) / 2}" y="{H - 12}" text-anchor="middle">{xlabel}</text>')
    out.append(f'<text transform="translate(16,{(T + H - B) / 2}) rotate(-90)" '
               f'text-anchor="middle">{ylabel}</text>')
    for i, (label, sx, sy, color, dashed) in enumerate(series):
        pts = " ".join(f"{px(x):.1f},{py(min(max(y, y0), y1)):.1f}" for x, y in zip(sx, sy))
        dash = ' stroke-dasharray="6,3"' if dashed else ""
        out.append(f'<polyline points="{pts}" fill="none" stroke="{color}" stroke-width="1.6"'
                   f'{dash}/>')
        ly = T + 14 + 18 * i
        out.append(f'<line x1="{W - R + 10}" y1="{ly - 4}" x2="{W - R + 34}" y2="{ly - 4}" '
                   f'stroke="{color}" stroke-width="2"{dash}/>')
        out.append(f'<text x="{W - R + 40}" y="{ly}">{label}</text>')
    out.append("</svg>")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as f:
        f.write("\n".join(out) + "\n")
    return True


# ------------------------------------------------------------------------------------------------
# The report.

def _mean_spread(values):
    if not values:
        return None, None
    if len(values) == 1:
        return values[0], None
    return statistics.mean(values), statistics.stdev(values)


QUIET_LOAD = 2.3


def _wall(runs):
    """(median wall seconds over the runs that had the machine to themselves, True when none
    did and the median is over all of them)."""
    quiet = [r["meta"]["wall_seconds"] for r in runs
             if r["meta"].get("load_average_after", 0) <= QUIET_LOAD]
    if quiet:
        return statistics.median(quiet), False
    return statistics.median(r["meta"]["wall_seconds"] for r in runs), True


def _evals(rows):
    return [(r["step"], r["eval_loss"], r) for r in rows if r.get("eval_loss") is not None]


def _cumulative(rows, key):
    total, out = 0.0, []
    for r in rows:
        total += r[key] or 0
        out.append(total)
    return out


def write_report(plan, load_run, base, docs=None):
    """Writes RESULTS.md (and its figures under results/) into `docs` (default docs/)."""
    docs = docs or DOCS
    figs = os.path.join(docs, "results")
    lines = ["# Reproducing RaPTr on this machine", "",
             "Regenerated by `make paper` (`bench/paper/study.py`) from the runs stored in",
             "`bench/paper/runs/` (one CSV row per step, from the coordinator's step summaries,",
             "plus a JSON of totals). Missing runs are listed; rerunning the command adds them.", ""]
    t, o = base["training"], base["optimizer"]
    lines += ["## Setup", "",
              f"Both objectives: 12 blocks, d 128, 4 heads, vocabulary 8192 (the bundled State of "
              f"the Union corpus, `data/sotu-8k`), {t['steps']} steps of {t['batch']} sequences x "
              f"{t['seq']} tokens, AdamW (lr {o['lr']}, {o['warmup_steps']} warmup steps, cosine "
              f"to {o['min_lr_ratio']}x, weight decay {o['weight_decay']}, clip {o['grad_clip']}), "
              f"evaluation of the full model on {t['eval_batches']} validation batches every "
              f"{t['eval_every']} steps. Every method gets the same steps, data order, "
              "initialisation and optimizer; only the schedule differs (full training at RaPTr's "
              "FLOPs runs fewer steps, with its warmup scaled to them). d 128 keeps a run to a "
              "few minutes on this 2-core machine, so the study (30 runs) fits in about 2 hours "
              "(the investigation's 19 runs, some twice as long, take about 70 minutes more); "
              "at this width the tied 8192-word output head costs about as much as five blocks, "
              "which caps any schedule's savings (skipping blocks cannot save the head's FLOPs). "
              "Runs go through the service (a local coordinator and one worker with both cores), "
              "one after another; each run's JSON records the load average after it, since other "
              "work may have shared the machine.", ""]
    for objective in ("gpt", "bert"):
        runs = [r for r in plan if r[0] == objective and r[2] in LABELS]
        stored = {r[1]: load_run(objective, r[1]) for r in runs}
        missing = [name for name, run in stored.items() if run is None]
        title = "GPT (causal LM)" if objective == "gpt" else "BERT (masked LM)"
        lines += [f"## {title}", ""]
        if objective == "bert":
            lines += ["These runs come from the engine before 2026-12-01, which ran BERT's output "
                      "head (and counted its FLOPs) over every position; it now runs on the masked "
                      "positions only (issue 14), so a new BERT run spends fewer FLOPs on the head "
                      "and its blocks are a larger share of a step. New runs are not to be mixed "
                      "with these in one table.", ""]
        by_method = {}
        for r in runs:
            if stored[r[1]] is not None:
                by_method.setdefault(r[2], []).append(stored[r[1]])
        if not by_method:
            lines += ["No runs stored yet.", ""]
            continue
        full = by_method.get("full", [])
        full_flops = statistics.mean(r["meta"]["flops"] for r in full) if full else None
        full_wall = _wall(full)[0] if full else None
        lines += ["| method | runs | final eval loss | FLOPs | FLOPs vs full | wall time (s) | "
                  "wall vs full | load after |", "|---|---|---|---|---|---|---|---|"]
        order = [m for m in LABELS if m in by_method]
        for method in order:
            rs = by_method[method]
            mean, sd = _mean_spread([r["meta"]["final_eval_loss"] for r in rs])
            flops = statistics.mean(r["meta"]["flops"] for r in rs)
            wall, shared = _wall(rs)
            loss = f"{mean:.4f}" + (f" ± {sd:.4f}" if sd is not None else "")
            fr = f"{full_flops / flops:.2f}x fewer" if full_flops and method != "full" else "-"
            wr = f"{full_wall / wall:.2f}x less" if full_wall and method != "full" else "-"
            load = statistics.mean(r["meta"].get("load_average_after", 0) for r in rs)
            lines.append(f"| {LABELS[method]} | {len(rs)} | {loss} | {flops:.3g} | {fr} | "
                         f"{wall:.0f}{' (shared)' if shared else ''} | {wr} | {load:.1f} |")
        lines += ["", "Loss: mean ± sample standard deviation over seeds where there are several. "
                  "Wall time: the job's start to end in the coordinator (every step, the 15 "
                  "evaluations, checkpoints), the median over the method's runs that had the "
                  f"machine to themselves (load average at most {QUIET_LOAD} when they ended). "
                  "Load after: the mean 1-minute load average when the runs ended; the study "
                  "alone keeps it near 2 (two training threads), higher means other work shared "
                  "the 2 cores and inflated the wall time; '(shared)' marks a method with no "
                  "quiet run, whose wall time is not comparable. FLOPs and losses do not depend "
                  "on load.", ""]
        if missing:
            lines += [f"Missing runs (not yet run): {', '.join(missing)}.", ""]
        # Plots: eval loss against FLOPs and against training time, seed 1 of each method.
        series_flops, series_time = [], []
        for i, method in enumerate(order):
            run = next((r for r in by_method[method] if r["meta"]["seed"] == 1),
                       by_method[method][0])
            rows = run["rows"]
            cum_flops = _cumulative(rows, "flops")
            cum_time = _cumulative(rows, "step_seconds")
            ev = [(cum_flops[int(s) - 1], cum_time[int(s) - 1], e) for s, e, _ in _evals(rows)]
            dashed = method.startswith("raptr-")
            color = COLORS[i % len(COLORS)]
            series_flops.append((LABELS[method], [a for a, _, _ in ev], [e for _, _, e in ev],
                                 color, dashed))
            series_time.append((LABELS[method], [b for _, b, _ in ev], [e for _, _, e in ev],
                                color, dashed))
        finals = [s[2][-1] for s in series_flops if s[2]]
        ylim = (min(finals) - 0.15, min(finals) + 1.2) if finals else None
        if svg_chart(os.path.join(figs, f"{objective}-eval-vs-flops.svg"),
                     f"{title}: eval loss against FLOPs (seed 1)", "training FLOPs",
                     "eval loss (full model)", series_flops, ylim=ylim):
            lines += [f"![eval loss against FLOPs](results/{objective}-eval-vs-flops.svg)", ""]
        if svg_chart(os.path.join(figs, f"{objective}-eval-vs-time.svg"),
                     f"{title}: eval loss against training time (seed 1)",
                     "training time (s, sum of step times)", "eval loss (full model)",
                     series_time, ylim=ylim):
            lines += [f"![eval loss against time](results/{objective}-eval-vs-time.svg)", ""]
        # RaPTr's stage transitions: training loss (50-step moving average) of RaPTr and full.
        raptr = next((r for r in by_method.get("raptr", []) if r["meta"]["seed"] == 1), None)
        base = next((r for r in full if r["meta"]["seed"] == 1), None)
        if raptr is not None:
            series = []
            for label, run, color in (("RaPTr", raptr, COLORS[1]), ("full", base, COLORS[0])):
                if run is None:
                    continue
                loss = [r["loss"] for r in run["rows"]]
                avg = [statistics.mean(loss[max(0, i - 24):i + 1]) for i in range(len(loss))]
                series.append((label, list(range(1, len(avg) + 1)), avg, color, False))
            transitions = [int(r["step"]) for a, r in zip(raptr["rows"], raptr["rows"][1:])
                           if r["stage"] != a["stage"]]
            tail = [y for s in series for y in s[2][100:]]
            if svg_chart(os.path.join(figs, f"{objective}-raptr-transitions.svg"),
                         f"{title}: training loss (25-step mean); stage transitions dashed",
                         "step", "training loss", series,
                         ylim=(min(tail) - 0.1, max(tail) + 0.1) if tail else None,
                         vlines=transitions):
                lines += [f"![RaPTr stage transitions](results/{objective}-raptr-transitions.svg)",
                          ""]
            lines += _transition_table(raptr, transitions)
        lines += _verdict(by_method)
    lines += investigate.section(plan, load_run, figs, LABELS, svg_chart, COLORS)
    findings = os.path.join(os.path.dirname(os.path.abspath(__file__)), "findings.md")
    if os.path.exists(findings):
        with open(findings) as f:
            lines += [f.read().rstrip(), ""]
    os.makedirs(docs, exist_ok=True)
    with open(os.path.join(docs, "RESULTS.md"), "w") as f:
        f.write("\n".join(lines) + "\n")


def _transition_table(raptr, transitions):
    if not transitions:
        return []
    loss = [r["loss"] for r in raptr["rows"]]
    out = ["Training loss around RaPTr's stage transitions (mean of the 25 steps before and "
           "after; the paper predicts no spike when the path lengthens):", "",
           "| transition at step | before | after | change |", "|---|---|---|---|"]
    for t in transitions:
        before = statistics.mean(loss[max(0, t - 26):t - 1])
        after = statistics.mean(loss[t - 1:t + 24])
        out.append(f"| {t} | {before:.4f} | {after:.4f} | {after - before:+.4f} |")
    return out + [""]


def _verdict(by_method):
    """Plain statements of what the stored runs show against the paper's claims."""
    def final(method):
        rs = by_method.get(method, [])
        return [r["meta"]["final_eval_loss"] for r in rs]
    out = ["What the runs show (computed from the table; the paper claims RaPTr matches or beats "
           "full training at 20-33% fewer FLOPs, beats PLD at equal steps and full training at "
           "equal FLOPs):", ""]
    full, raptr = final("full"), final("raptr")
    if full and raptr:
        fm, fs = _mean_spread(full)
        rm, rs_ = _mean_spread(raptr)
        spreads = [s for s in (fs, rs_) if s is not None]
        spread = max(spreads) if spreads else None
        diff = rm - fm
        if spread is None:
            verdict = ("below (one seed each, so no spread to judge by)" if diff < 0
                       else "above (one seed each, so no spread to judge by)")
        elif abs(diff) <= 2 * spread:
            verdict = "within two seed standard deviations of"
        else:
            verdict = "better than" if diff < 0 else "worse than"
        flops = (statistics.mean(r["meta"]["flops"] for r in by_method["full"]) /
                 statistics.mean(r["meta"]["flops"] for r in by_method["raptr"]))
        wall = _wall(by_method["full"])[0] / _wall(by_method["raptr"])[0]
        out.append(f"- RaPTr's final eval loss ({rm:.4f}) is {verdict} full training's "
                   f"({fm:.4f}; difference {diff:+.4f}, "
                   + (f"largest seed standard deviation {spread:.4f}, " if spread else "")
                   + f"{len(full)} and {len(raptr)} seeds; RaPTr's seeds "
                   + ", ".join(f"{v:.4f}" for v in raptr) + f") for {flops:.2f}x fewer "
                   f"FLOPs and {wall:.2f}x less wall time (paper: about 1.33x fewer FLOPs).")
    for method, claim in (("full-equal-flops", "full training at RaPTr's FLOPs"),
                          ("pld", "PLD at equal steps"), ("layerdrop", "LayerDrop"),
                          ("stacking", "gradual stacking")):
        other = final(method)
        if other and raptr:
            rm = statistics.mean(raptr)
            om = statistics.mean(other)
            out.append(f"- RaPTr {'beats' if rm < om else 'does not beat'} {claim}: "
                       f"{rm:.4f} against {om:.4f} ({rm - om:+.4f}).")
    seeds = {r["meta"]["seed"]: r["meta"]["final_eval_loss"] for r in by_method.get("raptr", [])}
    for method in ("raptr-exact", "raptr-frozen", "raptr-no-fixed", "raptr-scaled",
                   "raptr-warmup"):
        runs = by_method.get(method, [])
        if not runs or 1 not in seeds:
            continue
        # Same-seed difference, and where the ablation lies against the default's seed range: one
        # seed of an ablation cannot beat seed noise the default's seeds show.
        mine = {r["meta"]["seed"]: r["meta"]["final_eval_loss"] for r in runs}
        common = sorted(set(mine) & set(seeds))
        diff = statistics.mean(mine[s] - seeds[s] for s in common)
        lo, hi = min(seeds.values()), max(seeds.values())
        m = statistics.mean(mine.values())
        where = ("below" if m < lo else "above" if m > hi else "inside") if len(seeds) > 1 else ""
        out.append(f"- Ablation {LABELS[method]}: {m:.4f} ({len(runs)} seed"
                   f"{'s' if len(runs) > 1 else ''}); same-seed difference from the default "
                   f"{diff:+.4f} (seed{'s' if len(common) > 1 else ''} "
                   f"{', '.join(map(str, common))})"
                   + (f", {where} the default's seed range {lo:.4f}-{hi:.4f}" if where else "")
                   + ".")
    return out + [""]
