"""The long-regime study (issue 14): RaPTr against FLOPs-matched baselines where full training is
near convergence, so that a schedule's loss is not just a measure of how many steps it took.

The regime (docs/RESULTS.md, "Setup"): the bundled corpus retokenized at a 1024-word vocabulary
(data/sotu-1k) so the tied head is a small share of a step, 12 blocks of d 64, T 128, batch 16, and
6500 steps: 13.3M tokens, 20 per parameter, 3.8 passes over the 3.5M training tokens. The learning
rate is tuned for full training first (three values, extended by one when the best is at an
edge), then given to every method; full training at half the steps measures how much loss a
doubling of steps still buys at the best learning rate.

Every run is a job through the service, stored as runs/long/<objective>/<run>.{csv,json}.
"""
import json
import os

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DATA = "data/sotu-1k"
STEPS = 6500
BASE = {
    "model": {"layers": 12, "d_model": 64, "heads": 4, "vocab_size": 1024, "max_seq": 128},
    "data": {"train_shards": [f"{DATA}/train.bin"], "val_shards": [f"{DATA}/val.bin"]},
    "training": {"batch": 16, "seq": 128, "steps": STEPS, "eval_every": 500, "eval_batches": 32,
                 "checkpoint_every": 2500},
    "optimizer": {"lr": 4e-3, "warmup_steps": STEPS // 10, "decay": "cosine",
                  "min_lr_ratio": 0.1, "weight_decay": 0.1, "grad_clip": 1.0},
    "resources": {"min_workers": 1, "max_workers": 1},
}
# The learning rates tried for full training (seed 1); one more is added past an edge that wins.
LRS = (2e-3, 4e-3, 8e-3)
SEEDS = (1, 2, 3)
L = BASE["model"]["layers"]
# Every skipping method is matched to the default RaPTr schedule's share of active blocks:
# paths 6-8-10-12 for a quarter each, mean 9 of 12 = 0.75.
MEAN_KEEP = 0.75
FIXED = [0, L - 1]
# LayerDrop and constant-rate RaPTr keep the first and last block always, as RaPTr does, and drop
# the other ten at the rate that leaves the same mean: 2 + 10 p = 9.
LAYERDROP_KEEP = (MEAN_KEEP * L - len(FIXED)) / (L - len(FIXED))
CONSTANT_PATH = round(MEAN_KEEP * L)
STACKING = [{"layers": 6, "fraction": 1 / 3}, {"layers": 9, "fraction": 1 / 3},
            {"layers": 12, "fraction": 1 / 3}]

LABELS = {
    "full": "full training",
    "raptr": "RaPTr (6-8-10-12)",
    "raptr-frozen": "RaPTr, frozen skipped",
    "stacking": "stacking (6-9-12)",
    "pld": "PLD, RaPTr's block FLOPs",
    "layerdrop": f"LayerDrop (keep {LAYERDROP_KEEP:.1f}, first and last fixed)",
    "raptr-constant": f"constant-rate RaPTr (path {CONSTANT_PATH})",
    "full-equal-flops": "full, RaPTr's FLOPs",
    "raptr-no-decay": "RaPTr, no decay while skipped",
    "raptr-moments": "RaPTr, moments only while skipped",
    "pld-frozen": "PLD, frozen skipped",
    "layerdrop-frozen": "LayerDrop, frozen skipped",
    "raptr-constant-frozen": "constant-rate RaPTr, frozen skipped",
}
SCHEDULES = {
    "full": {"full": {}},
    "raptr": {"raptr": {}},
    "stacking": {"stacking": {"stages": STACKING}},
    "pld": {"pld": {"mean_keep": MEAN_KEEP}},
    "layerdrop": {"layerdrop": {"keep_prob": LAYERDROP_KEEP, "fixed_layers": FIXED}},
    "raptr-constant": {"raptr": {"stages": [{"path_length": CONSTANT_PATH, "fraction": 1}]}},
}


def lr_name(lr):
    return f"full-lr{lr:g}-s1"


def params(model):
    """Trainable parameters of the GPT (tied head): blocks, embeddings, final LayerNorm."""
    d, v, t, n = model["d_model"], model["vocab_size"], model["max_seq"], model["layers"]
    ff = 4 * d
    block = 2 * 2 * d + (3 * d * d + 3 * d) + (d * d + d) + (d * ff + ff) + (ff * d + d)
    return n * block + v * d + t * d + 2 * d


def tuned_lr(load_run):
    """The learning rate of the best full-training run of the sweep, with the sweep's runs; None
    while a run of the sweep (or the extension an edge winner asks for) is missing."""
    lrs = list(LRS)
    while True:
        runs = {lr: load_run("gpt", lr_name(lr)) for lr in lrs}
        if any(r is None for r in runs.values()):
            return None, lrs
        best = min(lrs, key=lambda lr: runs[lr]["meta"]["final_eval_loss"])
        if best == max(lrs) and len(lrs) < 6:
            lrs.append(best * 2)
        elif best == min(lrs) and len(lrs) < 6:
            lrs.insert(0, best / 2)
        else:
            return best, lrs


def plan(load_run):
    """(objective, run, method, schedule, seed, extra) in run order. Until the sweep is done the
    plan is the sweep; after it, everything at the tuned lr, most telling first: seed 1 of every
    method, the separation runs, seeds 2 and 3 of the four the issue asks three seeds of, the
    frozen treatment given to the other skipping methods, then BERT."""
    lr, lrs = tuned_lr(load_run)
    runs = [("gpt", lr_name(x), "full-sweep", SCHEDULES["full"], 1, {"lr": x}) for x in lrs]
    if lr is None:
        return runs, None
    at = lambda **kw: dict({"lr": lr}, **kw)
    runs.append(("gpt", "full-half-s1", "full-half", SCHEDULES["full"], 1,
                 at(steps=STEPS // 2)))
    first = [
        ("raptr", SCHEDULES["raptr"], at()),
        ("raptr-frozen", SCHEDULES["raptr"], at(skipped="frozen")),
        ("stacking", SCHEDULES["stacking"], at()),
        ("pld", SCHEDULES["pld"], at()),
        ("layerdrop", SCHEDULES["layerdrop"], at()),
        ("raptr-constant", SCHEDULES["raptr-constant"], at()),
        ("full-equal-flops", SCHEDULES["full"], at(equal_flops="raptr-s1")),
        ("raptr-no-decay", SCHEDULES["raptr"], at(skipped="zero_grad_no_decay")),
        ("raptr-moments", SCHEDULES["raptr"], at(skipped="moments_only")),
    ]
    for method, schedule, extra in first:
        runs.append(("gpt", f"{method}-s1", method, schedule, 1, extra))
    # What a doubling still buys at the study's length: full training for twice the steps (the
    # half-length run measures the doubling before it).
    runs.append(("gpt", "full-double-s1", "full-double", SCHEDULES["full"], 1,
                 at(steps=2 * STEPS)))
    for seed in SEEDS[1:]:
        runs.append(("gpt", f"full-s{seed}", "full", SCHEDULES["full"], seed, at()))
        for method in ("raptr", "raptr-frozen", "stacking"):
            extra = at(skipped="frozen") if method == "raptr-frozen" else at()
            schedule = SCHEDULES["stacking" if method == "stacking" else "raptr"]
            runs.append(("gpt", f"{method}-s{seed}", method, schedule, seed, extra))
    for method in ("pld", "layerdrop", "raptr-constant"):
        runs.append(("gpt", f"{method}-frozen-s1", f"{method}-frozen", SCHEDULES[method], 1,
                     at(skipped="frozen")))
    for method in ("full", "raptr", "raptr-frozen", "stacking"):
        extra = at(skipped="frozen") if method == "raptr-frozen" else at()
        schedule = SCHEDULES["stacking" if method == "stacking" else
                             "full" if method == "full" else "raptr"]
        runs.append(("bert", f"{method}-s1", method, schedule, 1, extra))
    return runs, lr


def spec_for(objective, name, method, schedule, seed, extra, load_run):
    spec = json.loads(json.dumps(BASE))
    spec["name"] = f"paper-long-{objective}-{name}"
    spec["model"]["kind"] = objective
    if objective == "bert":
        with open(os.path.join(ROOT, DATA, "meta.json")) as f:
            spec["data"]["mask_id"] = json.load(f)["mask_id"]
    spec["training"]["seed"] = seed
    spec["schedule"] = json.loads(json.dumps(schedule))
    spec["optimizer"]["lr"] = extra["lr"]
    if "skipped" in extra:
        spec["optimizer"]["skipped"] = extra["skipped"]
    steps = extra.get("steps")
    if "equal_flops" in extra:
        # Full training for the steps that spend the FLOPs of the named run (same seed, all
        # FLOPs: blocks, attention and head); evaluations stay every eval_every steps.
        other = load_run(objective, extra["equal_flops"])
        if other is None:
            raise RuntimeError(f"{name} needs {extra['equal_flops']} first")
        steps = int(round(STEPS * other["meta"]["flops"] / other["meta"]["flops_full"]))
    if steps:
        spec["training"]["steps"] = steps
        spec["optimizer"]["warmup_steps"] = steps // 10
        spec["training"]["checkpoint_every"] = max(1, steps // 3 + 1)
    return spec
