"""The long-regime section of docs/RESULTS.md (issue 14), computed from the runs stored under
bench/paper/runs/long by `bench/paper/study.py` (plan and settings: bench/paper/long.py).

Every number in the section comes from a stored run; a run that is not stored leaves its row out
and is listed as missing, in the order the study will run it. Wall times come only from runs
that had the machine to themselves (mean 1-minute load while training at most QUIET_LOAD: the
study alone keeps it near 2) and are compared only between runs on the same CPU model, since
sessions land on different machines.
"""
import collections
import json
import math
import os
import statistics
import struct

import long  # bench/paper/long.py
from plots import COLORS, line_chart

ROOT = long.ROOT
CORPUS = os.path.join(ROOT, "bench", "paper", "runs", "long", "corpus.json")
QUIET_LOAD = 2.5
# Paper: the 6-8-10-12 schedule's 1.33x for the blocks; 20-33% fewer FLOPs overall (BERT, UL2).
ORDER = ["full", "raptr", "raptr-frozen", "stacking", "pld", "layerdrop", "raptr-constant",
         "full-equal-flops", "raptr-no-decay", "raptr-moments", "pld-frozen", "layerdrop-frozen",
         "raptr-constant-frozen"]


def corpus():
    """Token counts and the unigram cross-entropy of data/sotu-1k, computed once from the
    prepared shards and stored with the runs so the report regenerates on a fresh checkout."""
    if os.path.exists(CORPUS):
        with open(CORPUS) as f:
            return json.load(f)

    def load(path):
        with open(path, "rb") as f:
            data = f.read()[256 * 4:]
        return struct.unpack(f"<{len(data) // 2}H", data)
    base = os.path.join(ROOT, long.DATA)
    try:
        train, val = load(os.path.join(base, "train.bin")), load(os.path.join(base, "val.bin"))
    except OSError:
        return None
    vocab = long.BASE["model"]["vocab_size"]
    counts = collections.Counter(train)
    total = len(train) + 0.5 * vocab
    ce = -sum(math.log((counts.get(t, 0) + 0.5) / total) for t in val) / len(val)
    out = {"corpus": long.DATA, "train_tokens": len(train), "val_tokens": len(val),
           "unigram_cross_entropy": ce}
    os.makedirs(os.path.dirname(CORPUS), exist_ok=True)
    with open(CORPUS, "w") as f:
        json.dump(out, f, indent=1)
        f.write("\n")
    return out


def _short_regime():
    """The short regime's head share of a step and its loss per doubling of steps (full training,
    seed 1, 1500 against 3000 steps), from its stored runs."""
    base = os.path.join(ROOT, "bench", "paper", "runs", "gpt")
    try:
        with open(os.path.join(base, "full-s1.json")) as f:
            a = json.load(f)
        with open(os.path.join(base, "full-3000-s1.json")) as f:
            b = json.load(f)
    except OSError:
        return None
    m = a["spec"]["model"]
    return {"head_share": 6 * m["vocab_size"] * m["d_model"] / (a["flops"] / a["tokens"]),
            "doubling": a["final_eval_loss"] - b["final_eval_loss"]}


def _final(run):
    return run["meta"]["final_eval_loss"]


def _evals(run):
    return {int(r["step"]): r["eval_loss"] for r in run["rows"] if r.get("eval_loss") is not None}


def _ms(values):
    if len(values) > 1:
        return f"{statistics.mean(values):.4f} ± {statistics.stdev(values):.4f}"
    return f"{values[0]:.4f}"


def _quiet(run):
    during = run["meta"].get("load_average_during")
    return bool(during and during["samples"] and during["mean"] <= QUIET_LOAD)


def _block_share(run):
    """Mean share of the blocks a step trained (from the per-step path lengths)."""
    paths = [r["path_length"] for r in run["rows"]]
    return statistics.mean(paths) / long.L


def _train_seconds(run):
    return sum(r["step_seconds"] or 0 for r in run["rows"])


def section(load_run, figs):
    runs, lr = long.plan(load_run)
    stored = {}
    missing = []
    for objective, name, method, *_ in runs:
        run = load_run(objective, name)
        if run is None:
            missing.append(f"{objective}/{name}")
        else:
            stored[(objective, name)] = (method, run)
    c = corpus()
    m, t, o = long.BASE["model"], long.BASE["training"], long.BASE["optimizer"]
    n_params = long.params(m)
    n_embed = m["vocab_size"] * m["d_model"] + m["max_seq"] * m["d_model"]
    tokens = t["steps"] * t["batch"] * t["seq"]
    short = _short_regime()
    out = ["## The long regime (issue 14)", "",
           "The first study (below, \"The short regime\") trained for 0.73 of a pass at 0.65 tokens "
           "per non-embedding parameter, where full training still gained "
           + (f"{short['doubling']:.2f} " if short else "") + "nats per doubling of its steps, "
           "so it measured how fast each method starts more than where it ends. This one trains "
           "a narrower model on more tokens, near the end of what more steps buy, with the "
           "learning rate tuned for full training first and then given to every method.", "",
           "### Setup", ""]
    passes = f", {tokens / c['train_tokens']:.1f} passes over its {c['train_tokens'] / 1e6:.2f}M " \
             "training tokens" if c else ""
    # FLOPs a token costs in the tied head (forward and backward), against a full step's.
    head_share = None
    full1 = next((r for (obj, _), (meth, r) in stored.items()
                  if obj == "gpt" and meth == "full-sweep"), None)
    if full1:
        per_token = full1["meta"]["flops"] / full1["meta"]["tokens"]
        head_share = 6 * m["vocab_size"] * m["d_model"] / per_token
    out += [f"GPT, {m['layers']} blocks, d {m['d_model']}, {m['heads']} heads, vocabulary "
            f"{m['vocab_size']} (the bundled corpus retokenized, `{long.DATA}`), {t['steps']} "
            f"steps of {t['batch']} x {t['seq']} tokens: {tokens / 1e6:.1f}M tokens, "
            f"{tokens / n_params:.1f} per parameter ({n_params / 1e6:.3f}M parameters) and "
            f"{tokens / (n_params - n_embed):.1f} per non-embedding parameter "
            f"({(n_params - n_embed) / 1e6:.3f}M){passes}. AdamW "
            f"(beta2 0.95, warmup {o['warmup_steps']} steps, cosine to {o['min_lr_ratio']}x, "
            f"weight decay {o['weight_decay']}, clip {o['grad_clip']}); evaluation of the full "
            f"model on {t['eval_batches']} validation batches every {t['eval_every']} steps."
            + (f" The tied head is {100 * head_share:.0f}% of a full step's FLOPs"
               + (f" ({100 * short['head_share']:.0f}% in the short regime)" if short else "")
               + ", so skipping a quarter of the blocks saves close to a quarter of the FLOPs."
               if head_share else "")
            + " Every skipping method is matched to the default RaPTr schedule's mean of 9 of 12 "
            f"blocks: PLD by `mean_keep: {long.MEAN_KEEP}` (gamma solved for the run's length), "
            f"LayerDrop and constant-rate RaPTr with RaPTr's fixed first and last blocks (keep "
            f"{long.LAYERDROP_KEEP:.1f} for the other ten; one stage of path {long.CONSTANT_PATH}), "
            "stacking 6-9-12 in thirds. Runs go one after another through the service (a local "
            "coordinator and one worker with both cores).", ""]
    if c:
        out += [f"A model that ignores context scores the unigram cross-entropy, "
                f"{c['unigram_cross_entropy']:.3f} on the validation set.", ""]

    # The learning-rate sweep and the horizon.
    sweep = sorted(((r["meta"]["spec"]["optimizer"]["lr"], r) for (obj, _), (meth, r)
                    in stored.items() if meth == "full-sweep"), key=lambda x: x[0])
    out += ["### The learning rate, and what a doubling of steps still buys", ""]
    if sweep:
        out += ["Full training, seed 1, at each learning rate tried:", "",
                "| lr | final eval loss | train loss, last 100 steps | train time (s) |",
                "|---|---|---|---|"]
        for x, r in sweep:
            tail = statistics.mean(row["loss"] for row in r["rows"][-100:])
            out.append(f"| {x:g} | {_final(r):.4f} | {tail:.4f} | {_train_seconds(r):.0f}"
                       f"{'' if _quiet(r) else ' (shared)'} |")
        out.append("")
    if lr is None:
        out += ["The sweep is not complete, so nothing else has run yet.", ""]
    else:
        ranked = sorted(sweep, key=lambda x: _final(x[1]))
        close = ""
        if len(ranked) > 1:
            gap = _final(ranked[1][1]) - _final(ranked[0][1])
            if gap < 0.01:
                close = (f" (lr {ranked[1][0]:g} is within {gap:.4f} of it, one seed each: the "
                         "optimum is likely between the two, and the choice between them is "
                         "noise)")
        para = [f"The best, lr {lr:g}, is given to every method below{close}."]
        half = load_run("gpt", "full-half-s1")
        best = load_run("gpt", long.lr_name(lr))
        double = load_run("gpt", "full-double-s1")
        short = _short_regime()
        if half and best:
            slope = _final(half) - _final(best)
            para += [f" Full training for half the steps ({half['meta']['steps']}, the same "
                    f"schedule shape) ends at {_final(half):.4f}: doubling the steps to the "
                    f"study's {best['meta']['steps']} bought {slope:.3f} nats"
                    + (f" (the short regime's doubling bought {short['doubling']:.2f})"
                       if short else "") + "."]
        if double and best:
            slope2 = _final(best) - _final(double)
            para += [f" Twice the study's steps ({double['meta']['steps']}) end at "
                    f"{_final(double):.4f}: the next doubling buys {slope2:.3f} nats, "
                    + ("within" if slope2 <= 0.1 else "more than")
                    + " the issue's target of about 0.1."]
        elif half and best:
            para += [" That is more than the issue's target of about 0.1 per doubling. On this "
                    "machine the issue's budget (about 3 hours for the whole study) allows about 20 "
                    "tokens per parameter at d 64; what a further doubling buys is measured by "
                    "full-double-s1 (twice the steps), which runs after the first seed of every "
                    "method." if slope > 0.1 else ""]
        out += ["".join(para), ""]

    # The main table.
    by = collections.defaultdict(list)
    for (obj, name), (meth, r) in stored.items():
        if obj != "gpt":
            continue
        if meth == "full-sweep":
            if lr is not None and abs(r["meta"]["spec"]["optimizer"]["lr"] - lr) < 1e-12:
                by["full"].append(r)
        elif meth in long.LABELS:
            by[meth].append(r)
    if lr is not None and by:
        out += _main_table(by)
        out += _separation(by)
        out += _verdict(by)
        out += _plots(by, figs)
    bert = [(meth, r) for (obj, _), (meth, r) in stored.items() if obj == "bert"]
    if bert:
        out += ["### BERT, same regime", "", "| method | final eval loss | FLOPs vs full |",
                "|---|---|---|"]
        full = next((r for meth, r in bert if meth == "full"), None)
        for meth, r in sorted(bert, key=lambda x: ORDER.index(x[0])):
            ratio = (f"{full['meta']['flops'] / r['meta']['flops']:.2f}x fewer"
                     if full and meth != "full" else "-")
            out.append(f"| {long.LABELS[meth]} | {_final(r):.4f} | {ratio} |")
        out.append("")
    if missing:
        out += [f"Not yet run ({len(missing)}, in the order `make paper` runs them): "
                f"{', '.join(missing)}.", ""]
    return out


def _main_table(by):
    full = by["full"]
    fm = statistics.mean(_final(r) for r in full) if full else None
    full_flops = statistics.mean(r["meta"]["flops"] for r in full) if full else None
    seeds_full = {r["meta"]["seed"]: _final(r) for r in full}
    # Wall time: quiet runs only, on the CPU model of full training's quiet runs.
    quiet_full = [r for r in full if _quiet(r)]
    cpu = quiet_full[0]["meta"]["cpu"] if quiet_full else None
    full_wall = (statistics.median(r["meta"]["wall_seconds"] for r in quiet_full)
                 if quiet_full else None)
    out = ["### GPT at the tuned learning rate", "",
           "| method | seeds | final eval loss | - full (same seeds) | FLOPs vs full | blocks "
           "vs full | wall time (s) | wall vs full |", "|---|---|---|---|---|---|---|---|"]
    for meth in [x for x in ORDER if by.get(x)]:
        rs = by[meth]
        finals = [_final(r) for r in rs]
        mine = {r["meta"]["seed"]: _final(r) for r in rs}
        common = sorted(set(mine) & set(seeds_full))
        diff = (f"{statistics.mean(mine[s] - seeds_full[s] for s in common):+.4f}"
                if common and meth != "full" else "-")
        flops = statistics.mean(r["meta"]["flops"] for r in rs)
        fr = f"{full_flops / flops:.3f}x fewer" if full_flops and meth != "full" else "-"
        share = statistics.mean(_block_share(r) for r in rs)
        # Full training at RaPTr's FLOPs trains every block, for fewer steps.
        if meth == "full-equal-flops" and full:
            share = share * rs[0]["meta"]["steps"] / full[0]["meta"]["steps"]
        br = f"{1 / share:.3f}x fewer" if meth != "full" else "-"
        # Without a quiet full-training run there is no ratio, but a quiet run's own time stands.
        quiet = [r for r in rs if _quiet(r) and (cpu is None or r["meta"].get("cpu") == cpu)]
        wall = statistics.median(r["meta"]["wall_seconds"] for r in quiet) if quiet else None
        wcell = f"{wall:.0f}" if wall else "(no quiet run)"
        wr = (f"{full_wall / wall:.2f}x less" if wall and full_wall and meth != "full" else "-")
        out.append(f"| {long.LABELS[meth]} | {len(rs)} | {_ms(finals)} | {diff} | {fr} | {br} | "
                   f"{wcell} | {wr} |")
    out += ["", "Loss: the final evaluation, mean ± sample sd over seeds where there are several; "
            "the difference from full training is over the seeds both have. FLOPs: every FLOP a "
            "step spends (blocks, attention, embeddings, head); blocks: the share of block-steps "
            "trained, what the paper's 1.33x for 6-8-10-12 counts. Wall time: the job's start to "
            "end in the coordinator (steps, evaluations, checkpoints), the median over the "
            f"method's runs whose mean load while training was at most {QUIET_LOAD}"
            + (f", on this CPU ({cpu})" if cpu else "") + ".", ""]
    return out


def _separation(by):
    """Why zero_grad hurts: the variants that change one thing about skipped blocks."""
    rows = [(m, by.get(m)) for m in ("raptr", "raptr-no-decay", "raptr-moments", "raptr-frozen")]
    base = {r["meta"]["seed"]: _final(r) for r in by.get("raptr", [])}
    full = {r["meta"]["seed"]: _final(r) for r in by.get("full", [])}
    if not base or sum(1 for _, rs in rows if rs) < 2:
        return []
    what = {"raptr": "`zero_grad`: AdamW steps on a zero gradient (moments decay, the block "
            "moves on its momentum, weight decay applies)",
            "raptr-no-decay": "`zero_grad_no_decay`: the same, without the weight decay on "
            "skipped steps",
            "raptr-moments": "`moments_only`: moments updated on the zero gradient, the block not "
            "moved",
            "raptr-frozen": "`frozen`: nothing touched, bias correction counts active steps"}
    out = ["### Why `zero_grad` costs what it does", "",
           "RaPTr with each treatment of a skipped block (seed 1 against seed 1):", "",
           "| treatment | final eval loss | - zero_grad | - full |", "|---|---|---|---|"]
    for m, rs in rows:
        if not rs:
            continue
        r = next((x for x in rs if x["meta"]["seed"] == 1), None)
        if r is None:
            continue
        v = _final(r)
        d0 = f"{v - base[1]:+.4f}" if m != "raptr" and 1 in base else "-"
        d1 = f"{v - full[1]:+.4f}" if 1 in full else "-"
        out.append(f"| {what[m]} | {v:.4f} | {d0} | {d1} |")
    return out + [""]


def _verdict(by):
    full = [_final(r) for r in by.get("full", [])]
    if not full or not any(by.get(m) for m in ORDER if m != "full"):
        return []
    fm = statistics.mean(full)
    fsd = statistics.stdev(full) if len(full) > 1 else None
    out = ["### Against the paper", "",
           "The paper's claims: RaPTr matches or beats full training at equal steps for 20-33% "
           "fewer FLOPs, beats full training at equal FLOPs, and beats PLD, LayerDrop and "
           "gradual stacking. Computed from the table:", ""]

    def compare(meth, label):
        rs = by.get(meth, [])
        if not rs:
            return
        v = [_final(r) for r in rs]
        m = statistics.mean(v)
        sds = [s for s in (fsd, statistics.stdev(v) if len(v) > 1 else None) if s is not None]
        sd = max(sds) if sds else None
        d = m - fm
        if sd is None:
            word = "one seed each, no spread to judge by"
        elif abs(d) <= 2 * sd:
            word = f"within two seed sds ({2 * sd:.4f}) of full training"
        else:
            word = "better than full training" if d < 0 else "worse than full training"
        out.append(f"- {label}: {m:.4f} against full training's {fm:.4f} ({d:+.4f}; {word}; "
                   f"{len(v)} and {len(full)} seeds).")
    compare("raptr", "RaPTr, `zero_grad`, equal steps")
    compare("raptr-frozen", "RaPTr, `frozen`, equal steps")
    r1 = next((r for r in by.get("raptr", []) if r["meta"]["seed"] == 1), None)
    for meth, label in (("full-equal-flops", "full training at RaPTr's FLOPs"),
                        ("pld", "PLD at RaPTr's block FLOPs"),
                        ("layerdrop", "LayerDrop with the same fixed layers and FLOPs"),
                        ("raptr-constant", "constant-rate RaPTr (no stages)"),
                        ("stacking", "gradual stacking 6-9-12")):
        o = next((r for r in by.get(meth, []) if r["meta"]["seed"] == 1), None)
        if o is None or r1 is None:
            continue
        for name, mine in (("RaPTr", r1), ("RaPTr frozen", next(
                (r for r in by.get("raptr-frozen", []) if r["meta"]["seed"] == 1), None))):
            if mine is None:
                continue
            d = _final(mine) - _final(o)
            out.append(f"- {name} against {label} (seed 1): {_final(mine):.4f} against "
                       f"{_final(o):.4f} ({d:+.4f}, {'better' if d < 0 else 'worse'}).")
    return out + ["", "One-seed comparisons are read against full training's seed sd"
                  + (f" ({fsd:.4f})" if fsd else "") + ".", ""]


def _plots(by, figs):
    out = []
    series, bands, times = [], [], []
    order = [m for m in ORDER if by.get(m)]
    for i, meth in enumerate(order):
        rs = by[meth]
        color = COLORS[i % len(COLORS)]
        dashed = meth not in ("full", "raptr", "raptr-frozen", "stacking")
        # Eval loss against cumulative FLOPs: the mean over seeds (same steps, same FLOPs up to
        # the path draws), with the seed range shaded.
        per = collections.defaultdict(list)
        flops_at = {}
        for r in rs:
            cum = 0.0
            for row in r["rows"]:
                cum += row["flops"] or 0
                if row.get("eval_loss") is not None:
                    per[int(row["step"])].append(row["eval_loss"])
                    flops_at.setdefault(int(row["step"]), []).append(cum)
        steps = sorted(s for s in per if len(per[s]) == len(rs))
        xs = [statistics.mean(flops_at[s]) for s in steps]
        series.append((f"{long.LABELS[meth]} ({len(rs)})", xs,
                       [statistics.mean(per[s]) for s in steps], color, dashed))
        if len(rs) > 1:
            bands.append((xs, [min(per[s]) for s in steps], [max(per[s]) for s in steps], color))
        quiet = sorted((r for r in rs if _quiet(r)), key=lambda r: r["meta"]["seed"])
        if quiet:
            q = quiet[0]
            cum, pts = 0.0, []
            for row in q["rows"]:
                cum += row["step_seconds"] or 0
                if row.get("eval_loss") is not None:
                    pts.append((cum, row["eval_loss"]))
            times.append((f"{long.LABELS[meth]} (seed {q['meta']['seed']})",
                          [a for a, _ in pts], [b for _, b in pts], color, dashed))
    finals = [s[2][-1] for s in series if s[2]]
    ylim = (min(finals) - 0.05, min(finals) + 0.8) if finals else None
    if line_chart(os.path.join(figs, "long-eval-vs-flops.svg"),
                  "Long regime, GPT: eval loss against FLOPs (mean over seeds, range shaded)",
                  "training FLOPs", "eval loss (full model)", series, ylim=ylim, bands=bands):
        out += ["![eval loss against FLOPs](results/long-eval-vs-flops.svg)", ""]
    if line_chart(os.path.join(figs, "long-eval-vs-time.svg"),
                  "Long regime, GPT: eval loss against training time (quiet runs only)",
                  "training time (s, sum of step times)", "eval loss (full model)", times,
                  ylim=ylim):
        out += ["![eval loss against time](results/long-eval-vs-time.svg)", ""]
    # RaPTr's gap to full training over the run, with its stage boundaries.
    full = _mean_evals(by.get("full", []))
    gap = []
    for i, meth in enumerate(order):
        if meth in ("full", "full-equal-flops") or not full:
            continue
        e = _mean_evals(by[meth])
        xs = [s for s in sorted(e) if s in full]
        if xs:
            gap.append((long.LABELS[meth], xs, [e[s] - full[s] for s in xs],
                        COLORS[i % len(COLORS)], meth not in ("raptr", "raptr-frozen",
                                                              "stacking")))
    quarter = long.STEPS // 4
    if line_chart(os.path.join(figs, "long-gap.svg"),
                  "Long regime, GPT: eval loss minus full training's (means over seeds)",
                  "step", "eval loss difference", gap,
                  vlines=(quarter, 2 * quarter, 3 * quarter)):
        out += ["![the gap to full training over the run](results/long-gap.svg)", ""]
    return out


def _mean_evals(runs):
    per = collections.defaultdict(list)
    for r in runs:
        for s, v in _evals(r).items():
            per[s].append(v)
    return {s: statistics.mean(v) for s, v in per.items() if len(v) == len(runs)}
