#!/usr/bin/env python3
"""The paper studies: RaPTr against full training, PLD, LayerDrop and gradual stacking, trained
through the service. Two regimes: the long one (issue 14, bench/paper/long.py: near convergence,
the learning rate tuned for full training first) and the short one (issue 4: 1500 steps, with
RaPTr's ablations, GPT and BERT).

  bench/paper/study.py                  run every missing run of the long regime, then the report
  bench/paper/study.py --regime short   the same for the short regime
  bench/paper/study.py --objective gpt  only the GPT runs
  bench/paper/study.py --only raptr-s1 full-s1
  bench/paper/study.py --max-runs 3     stop after three new runs
  bench/paper/study.py --report-only    rewrite docs/RESULTS.md (both regimes) from the stored runs
  bench/paper/study.py --list           the plan and which runs are stored

Each finished run is stored as bench/paper/runs/[long/]<objective>/<run>.csv (one row per step, from the
coordinator's step summaries) and <run>.json (spec, timings, totals), committed with the
repository, so the report regenerates without rerunning and a later session adds runs by running
this again: stored runs are skipped. Runs go one after another on a local cluster of one worker
with every core (scripts/local-cluster.sh), in an order that interleaves methods, so slow phases
of a shared machine spread over all of them.
"""
import argparse
import json
import os
import subprocess
import sys
import time
from datetime import datetime, timezone

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEFAULT_RUNS = os.path.join(ROOT, "bench", "paper", "runs")
RUNS = DEFAULT_RUNS
CTL = os.path.join(ROOT, "build", "cli", "raptrctl")
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import report  # noqa: E402  (bench/paper/report.py)
import long  # noqa: E402  (bench/paper/long.py)

# The short regime's sizes (docs/RESULTS.md, "The short regime"): 12 blocks of d 128 so that a
# run of 1500 steps takes about 3-4 minutes here, the whole study about 2 hours; 1500 steps of
# 16 x 64 tokens (1.536M tokens, 0.73 of a pass over the corpus, 0.65 tokens per non-embedding
# parameter) leave the loss still falling at the end. The long regime is bench/paper/long.py.
STEPS = 1500
BASE = {
    "model": {"layers": 12, "d_model": 128, "heads": 4, "vocab_size": 8192, "max_seq": 64},
    "data": {"train_shards": ["data/sotu-8k/train.bin"], "val_shards": ["data/sotu-8k/val.bin"]},
    "training": {"batch": 16, "seq": 64, "steps": STEPS, "eval_every": 100, "eval_batches": 16,
                 "checkpoint_every": 500},
    "optimizer": {"lr": 2e-3, "warmup_steps": 150, "decay": "cosine", "min_lr_ratio": 0.1,
                  "weight_decay": 0.1, "grad_clip": 1.0},
    "resources": {"min_workers": 1, "max_workers": 1},
}
SEEDS = (1, 2, 3)
BASE_LR = BASE["optimizer"]["lr"]


def scale_to(spec, steps, evaluations=True):
    """Sets a spec's steps, with warmup (a tenth), and unless told otherwise evaluations (15) and
    checkpoints (3) scaled to them."""
    spec["training"]["steps"] = steps
    spec["optimizer"]["warmup_steps"] = steps // 10
    if evaluations:
        spec["training"]["eval_every"] = max(1, steps // 15)
        spec["training"]["checkpoint_every"] = max(1, steps // 3)


def configure(steps, runs_dir):
    global STEPS, RUNS
    STEPS, RUNS = steps, runs_dir
    scale_to(BASE, steps)


def plan():
    """(objective, run name, method, schedule, seed, extra) in run order: the study, then the
    investigation of where RaPTr loses ground (docs/RESULTS.md, "Investigation"). `extra` changes
    one thing from BASE: "steps" (a longer horizon, warmup and evaluations scaled with it), "lr"
    (given to full training and RaPTr alike), "skipped" (the optimizer's treatment of skipped
    blocks, given to every method that skips blocks)."""
    runs = []
    for objective in ("gpt", "bert"):
        first = [("full", {"full": {}}), ("raptr", {"raptr": {}})]
        others = [
            ("pld", {"pld": {}}, {}),  # DeepSpeed's defaults: theta_bar 0.5, gamma 0.001
            ("layerdrop", {"layerdrop": {}}, {}),  # keep 0.75: the default RaPTr's mean path
            ("stacking", {"stacking": {"stages": STACKING}}, {}),
            ("full-equal-flops", {"full": {}}, {}),
            ("raptr-exact", {"raptr": {"sampling": "exact"}}, {}),
            ("raptr-frozen", {"raptr": {}}, FROZEN),
            ("raptr-no-fixed", {"raptr": {"no_fixed_layers": True}}, {}),
            ("raptr-scaled", {"raptr": {"scaling": "inverse_keep_prob"}}, {}),
            ("raptr-warmup", {"raptr": {"full_warmup_steps": STEPS // 10}}, {}),
        ]
        for method, schedule in first:
            runs.append((objective, f"{method}-s1", method, schedule, 1, {}))
        for method, schedule, extra in others:
            runs.append((objective, f"{method}-s1", method, schedule, 1, extra))
        for seed in SEEDS[1:]:
            for method, schedule in first:
                runs.append((objective, f"{method}-s{seed}", method, schedule, seed, {}))
    runs += investigation()
    return runs


FROZEN = {"skipped": "frozen"}
STACKING = [{"layers": 6, "fraction": 1 / 3}, {"layers": 9, "fraction": 1 / 3},
            {"layers": 12, "fraction": 1 / 3}]


def investigation():
    """The runs that test why RaPTr trails full training here, most telling first."""
    long = 2 * STEPS
    frozen = FROZEN
    runs = [
        # Does a longer horizon close the gap? Twice the steps, same schedule shape.
        ("gpt", f"full-{long}-s1", "full-long", {"full": {}}, 1, {"steps": long}),
        ("gpt", f"raptr-{long}-s1", "raptr-long", {"raptr": {}}, 1, {"steps": long}),
        # Is frozen's lead over zero_grad more than seed noise? (BERT's below, after its runs.)
        ("gpt", "raptr-frozen-s2", "raptr-frozen", {"raptr": {}}, 2, frozen),
        ("gpt", "raptr-frozen-s3", "raptr-frozen", {"raptr": {}}, 3, frozen),
        # BERT sees 15% of the tokens as targets: does it leave the unigram plateau if longer?
        ("bert", f"full-{long}-s1", "full-long", {"full": {}}, 1, {"steps": long}),
        ("bert", f"raptr-{long}-s1", "raptr-long", {"raptr": {}}, 1, {"steps": long}),
        ("bert", "raptr-frozen-s2", "raptr-frozen", {"raptr": {}}, 2, frozen),
        ("bert", "raptr-frozen-s3", "raptr-frozen", {"raptr": {}}, 3, frozen),
        ("gpt", f"raptr-frozen-{long}-s1", "raptr-frozen-long", {"raptr": {}}, 1,
         dict(frozen, steps=long)),
        # Learning rate: twice the study's, for both (more below).
        ("gpt", "full-lr2x-s1", "full-lr2x", {"full": {}}, 1, {"lr": 2 * BASE_LR}),
        ("gpt", "raptr-lr2x-s1", "raptr-lr2x", {"raptr": {}}, 1, {"lr": 2 * BASE_LR}),
        # The frozen treatment given to the other methods that skip blocks.
        ("gpt", "pld-frozen-s1", "pld-frozen", {"pld": {}}, 1, frozen),
        ("gpt", "layerdrop-frozen-s1", "layerdrop-frozen", {"layerdrop": {}}, 1, frozen),
        # Twice the study's lr helped both, so: four times, and frozen at both.
        ("gpt", "full-lr4x-s1", "full-lr4x", {"full": {}}, 1, {"lr": 4 * BASE_LR}),
        ("gpt", "raptr-lr4x-s1", "raptr-lr4x", {"raptr": {}}, 1, {"lr": 4 * BASE_LR}),
        ("gpt", "raptr-frozen-lr2x-s1", "raptr-frozen-lr2x", {"raptr": {}}, 1,
         dict(frozen, lr=2 * BASE_LR)),
        ("gpt", "raptr-frozen-lr4x-s1", "raptr-frozen-lr4x", {"raptr": {}}, 1,
         dict(frozen, lr=4 * BASE_LR)),
        # A second seed at 2x, where full training and frozen RaPTr are best.
        ("gpt", "full-lr2x-s2", "full-lr2x", {"full": {}}, 2, {"lr": 2 * BASE_LR}),
        ("gpt", "raptr-frozen-lr2x-s2", "raptr-frozen-lr2x", {"raptr": {}}, 2,
         dict(frozen, lr=2 * BASE_LR)),
    ]
    return runs


def spec_for(objective, name, method, schedule, seed, extra):
    spec = json.loads(json.dumps(BASE))
    spec["name"] = f"paper-{objective}-{name}"
    spec["model"]["kind"] = objective
    if objective == "bert":
        with open(os.path.join(ROOT, "data", "sotu-8k", "meta.json")) as f:
            spec["data"]["mask_id"] = json.load(f)["mask_id"]
    spec["training"]["seed"] = seed
    spec["schedule"] = schedule
    if "skipped" in extra:
        spec["optimizer"]["skipped"] = extra["skipped"]
    if "lr" in extra:
        spec["optimizer"]["lr"] = extra["lr"]
    if "steps" in extra:
        scale_to(spec, extra["steps"])
    if method == "full-equal-flops":
        # Full training for the steps that spend the FLOPs of RaPTr's (seed 1) run.
        raptr = load_run(objective, "raptr-s1")
        if raptr is None:
            raise RuntimeError("full-equal-flops needs raptr-s1 first")
        # Evaluations stay every eval_every steps, as in the run it is compared with.
        scale_to(spec, int(round(STEPS * raptr["meta"]["flops"] / raptr["meta"]["flops_full"])),
                 evaluations=False)
    return spec


def load_run(objective, name):
    path = os.path.join(RUNS, objective, name)
    if not os.path.exists(path + ".json"):
        return None
    with open(path + ".json") as f:
        meta = json.load(f)
    rows = report.read_csv(path + ".csv")
    return {"meta": meta, "rows": rows}


def ctl(*args, check=True):
    out = subprocess.run([CTL, *args], capture_output=True, text=True)
    if check and out.returncode != 0:
        raise RuntimeError(f"raptrctl {' '.join(args)}: {out.stderr.strip()}")
    return out.stdout


def cpu_model():
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return "unknown"


def run_one(objective, name, method, schedule, seed, extra, spec=None, runs_dir=None):
    spec = spec or spec_for(objective, name, method, schedule, seed, extra)
    runs_dir = runs_dir or RUNS
    os.makedirs(os.path.join(runs_dir, objective), exist_ok=True)
    spec_path = os.path.join(runs_dir, objective, name + ".spec.json")
    with open(spec_path, "w") as f:
        json.dump(spec, f, indent=1)
    # YAML is a superset of JSON: the spec file is a valid job file.
    job = ctl("submit", "-f", spec_path).strip()
    print(f"[study] {objective}/{name}: {job}, {spec['training']['steps']} steps", flush=True)
    watch = subprocess.Popen([CTL, "watch", job, "--output", "json"], stdout=subprocess.PIPE,
                             text=True)
    rows, evals = {}, {}
    # The 1-minute load average, sampled every 20 s while the run trains: the study alone keeps
    # it near 2 (two training threads); more means other work shared the cores.
    loads, sampled = [], 0.0
    for line in watch.stdout:
        if time.monotonic() - sampled >= 20:
            sampled = time.monotonic()
            loads.append(os.getloadavg()[0])
        event = json.loads(line)
        if "step" in event:
            s = event["step"]
            step = int(s.get("step", 0)) + 1
            rows[step] = {"step": step, "stage": s.get("stage", 0),
                          "path_length": s.get("path_length", 0), "loss": s["loss"],
                          "lr": s.get("learning_rate", 0), "tokens": int(s.get("tokens", 0)),
                          "flops": float(s.get("flops", 0)),
                          "flops_full": float(s.get("flops_full", 0)),
                          "step_seconds": s.get("step_seconds", 0)}
            if step % 100 == 0:
                print(f"[study]   step {step} loss {s['loss']:.4f}", flush=True)
        elif "eval" in event:
            evals[int(event["eval"].get("step", 0)) + 1] = event["eval"]["eval_loss"]
    if watch.wait() != 0:
        raise RuntimeError(f"watch {job} failed")
    got = json.loads(ctl("get", job, "--output", "json"))
    if got["state"] != "JOB_STATE_SUCCEEDED":
        raise RuntimeError(f"{job} ended {got['state']}: {got.get('message', '')}")
    steps = spec["training"]["steps"]
    if sorted(rows) != list(range(1, steps + 1)):
        raise RuntimeError(f"{job}: got {len(rows)} step summaries of {steps}")
    for step, loss in evals.items():
        rows[step]["eval_loss"] = loss
    parse = lambda t: datetime.fromisoformat(t.replace("Z", "+00:00"))
    p = got["progress"]
    meta = {
        "objective": objective, "run": name, "method": method, "seed": seed, "extra": extra,
        "job": job,
        "steps": steps, "spec": spec,
        "final_eval_loss": p["eval_loss"], "flops": float(p["flops"]),
        "flops_full": float(p["flops_full"]), "tokens": int(p["tokens"]),
        "wall_seconds": (parse(got["end_time"]) - parse(got["start_time"])).total_seconds(),
        "train_seconds": p.get("train_seconds", 0),
        "date": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "load_average_after": os.getloadavg()[0],
        "load_average_during": {"mean": sum(loads) / max(1, len(loads)),
                                "max": max(loads, default=0.0), "samples": len(loads)},
        "cpu": cpu_model(), "cpus": os.cpu_count(),
    }
    path = os.path.join(runs_dir, objective, name)
    # The long regime's runs are 6500 rows each: committed compressed.
    suffix = ".csv.gz" if runs_dir == LONG_RUNS else ".csv"
    report.write_csv(path + suffix, [rows[s] for s in sorted(rows)])
    with open(path + ".json", "w") as f:
        json.dump(meta, f, indent=1)
    os.remove(spec_path)
    print(f"[study] {objective}/{name}: eval {meta['final_eval_loss']:.4f}, "
          f"{meta['wall_seconds']:.0f} s", flush=True)


def cancel_stale_jobs():
    """An interrupted study leaves its job in the coordinator's store, which recovers it and runs
    it to the end ahead of the next one; nobody watches it and its run is redone, so cancel it."""
    for job in json.loads(ctl("list", "--output", "json")).get("jobs", []):
        if job["spec"]["name"].startswith("paper-") and job["state"] in (
                "JOB_STATE_PENDING", "JOB_STATE_RUNNING"):
            ctl("cancel", job["id"], check=False)
            print(f"[study] cancelled {job['id']} ({job['spec']['name']}), left by an "
                  "interrupted study", flush=True)


DOCS = None  # where the report goes: docs/ for the study's runs, <runs-dir>/docs for others


def write_report():
    docs = DOCS or (None if RUNS == DEFAULT_RUNS else os.path.join(RUNS, "docs"))
    report.write_report(plan(), load_run, BASE, docs=docs, load_long=load_long)


LONG_RUNS = os.path.join(DEFAULT_RUNS, "long")


def load_long(objective, name):
    path = os.path.join(LONG_RUNS, objective, name)
    if not os.path.exists(path + ".json"):
        return None
    with open(path + ".json") as f:
        meta = json.load(f)
    csv_path = path + ".csv.gz" if os.path.exists(path + ".csv.gz") else path + ".csv"
    return {"meta": meta, "rows": report.read_csv(csv_path)}


def start_cluster(port):
    cluster_dir = os.path.join(ROOT, "runs", "paper")
    script = os.path.join(ROOT, "scripts", "local-cluster.sh")
    subprocess.run([script, "stop", "--dir", cluster_dir], capture_output=True)
    out = subprocess.run([script, "start", "--workers", "1", "--port", str(port),
                          "--metrics-port", "0", "--dir", cluster_dir],
                         capture_output=True, text=True, check=True)
    for line in out.stdout.splitlines():
        if line.startswith("export "):
            for pair in line[len("export "):].split():
                key, value = pair.split("=", 1)
                os.environ[key] = value
    time.sleep(1)
    cancel_stale_jobs()
    return lambda: subprocess.run([script, "stop", "--dir", cluster_dir], capture_output=True)


def run_long(args):
    """The long regime: the plan grows once the learning-rate sweep is stored, so it is read
    again after every run."""
    if not os.path.exists(os.path.join(ROOT, long.DATA, "meta.json")):
        print(f"[study] {long.DATA} is missing: build/cli/raptrctl data prepare --input data/sotu "
              f"--out {long.DATA} --vocab-size 1024", file=sys.stderr)
        return 1
    # Every run of the study must see the same tokens: the tokenizer is trained on the corpus
    # when the data is prepared, so a different build of it would silently change the data.
    with open(os.path.join(ROOT, long.DATA, "meta.json")) as f:
        meta = json.load(f)
    stored = os.path.join(LONG_RUNS, "corpus.json")
    if os.path.exists(stored):
        with open(stored) as f:
            want = json.load(f)
        got = (meta["train"]["tokens"], meta["val"]["tokens"])
        if got != (want["train_tokens"], want["val_tokens"]):
            print(f"[study] {long.DATA} has {got[0]} train and {got[1]} val tokens; the stored "
                  f"runs used {want['train_tokens']} and {want['val_tokens']} (runs/long/"
                  "corpus.json): prepare it again from the pinned corpus", file=sys.stderr)
            return 1
    if args.list:
        for objective, name, *_ in long.plan(load_long)[0]:
            state = "stored" if load_long(objective, name) else "missing"
            print(f"{objective:5} {name:24} {state}")
        return 0
    stop, done = None, 0
    try:
        while True:
            runs, _ = long.plan(load_long)
            missing = [r for r in runs if load_long(r[0], r[1]) is None
                       and (args.objective in ("all", r[0]))
                       and (not args.only or r[1] in args.only)]
            if not missing or (args.max_runs and done >= args.max_runs):
                break
            if stop is None:
                stop = start_cluster(args.port)
            r = missing[0]
            run_one(*r, spec=long.spec_for(*r, load_long), runs_dir=LONG_RUNS)
            done += 1
            # After every run, so an interrupted study still leaves a current report.
            write_report()
    finally:
        if stop is not None:
            stop()
    write_report()
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--objective", choices=("gpt", "bert", "all"), default="all")
    parser.add_argument("--only", nargs="*", help="run names, e.g. raptr-s1 full-s2")
    parser.add_argument("--report-only", action="store_true")
    parser.add_argument("--list", action="store_true")
    parser.add_argument("--max-runs", type=int, default=0, help="stop after this many new runs")
    parser.add_argument("--port", type=int, default=50061)
    parser.add_argument("--steps", type=int, default=STEPS,
                        help="steps per run (smoke tests; the study's runs use the default)")
    parser.add_argument("--runs-dir", default=RUNS, help="where runs are stored (smoke tests)")
    parser.add_argument("--docs", help="write RESULTS.md and its figures here instead")
    parser.add_argument("--regime", choices=("long", "short"), default="long",
                        help="which study to run: long (issue 14, the default) or short (the "
                        "first study, issue 4); the report always covers both")
    args = parser.parse_args()
    if args.regime == "long" and not args.report_only:
        return run_long(args)
    configure(args.steps, args.runs_dir)
    global DOCS
    DOCS = args.docs
    todo = [r for r in plan() if args.objective in ("all", r[0])
            and (not args.only or r[1] in args.only)]
    if args.list:
        for objective, name, *_ in todo:
            state = "stored" if load_run(objective, name) else "missing"
            print(f"{objective:5} {name:20} {state}")
        return 0
    if not args.report_only:
        missing = [r for r in todo if load_run(r[0], r[1]) is None]
        if args.max_runs:
            missing = missing[:args.max_runs]
        if missing:
            stop = start_cluster(args.port)
            try:
                for r in missing:
                    run_one(*r)
                    # After every run, so an interrupted study still leaves a current report.
                    write_report()
            finally:
                stop()
    write_report()
    return 0


if __name__ == "__main__":
    sys.exit(main())
