#!/usr/bin/env python3
"""Trains RaPTr and full training side by side through a raptr coordinator and plots both.

    PYTHONPATH=build/python /usr/bin/python3 examples/compare.py            # the two examples
    PYTHONPATH=build/python /usr/bin/python3 examples/compare.py a.yaml b.yaml --out cmp.svg

Submits each job file (default examples/gpt-raptr.yaml and examples/gpt-full.yaml), waits for
both, and draws their eval loss against training FLOPs and their training loss against steps
into one figure (SVG or PNG, by the --out suffix). The coordinator, TLS and token come from
$RAPTR_COORDINATOR, $RAPTR_TLS_CA and $RAPTR_TOKEN_FILE, as `scripts/local-cluster.sh start`
prints them.
"""
import argparse
import os
import sys

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

import raptr  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("specs", nargs="*", default=[os.path.join(HERE, "gpt-raptr.yaml"),
                                                     os.path.join(HERE, "gpt-full.yaml")])
    parser.add_argument("--out", default="compare.svg", help="the figure (.svg or .png)")
    parser.add_argument("--steps", type=int, help="train this many steps instead")
    args = parser.parse_args()
    with raptr.Client() as client:
        jobs = []
        for path in args.specs:
            spec = raptr.to_job_spec(path)
            if args.steps:
                spec.training.steps = args.steps
                spec.optimizer.warmup_steps = min(spec.optimizer.warmup_steps, args.steps // 10)
                # Stages written for the old length: the coordinator fills in the paper's
                # default stages for the new one.
                if spec.schedule.HasField("raptr"):
                    del spec.schedule.raptr.stages[:]
                if spec.schedule.HasField("stacking"):
                    del spec.schedule.stacking.stages[:]
            job = client.submit(spec)
            print(f"{job}: {spec.name}, {spec.training.steps} steps", flush=True)
            jobs.append(job)
        fig, (by_flops, by_step) = plt.subplots(1, 2, figsize=(11, 4.2))
        for job in jobs:
            done = client.wait(job)
            if done.state != "SUCCEEDED":
                print(f"{job} ended {done.state}: {done.message}", file=sys.stderr)
                return 1
            rows = client.steps(job)
            flops, cum, evals = [], 0.0, []
            for r in rows:
                cum += r["flops"]
                flops.append(cum)
                if r["eval_loss"] is not None:
                    evals.append((cum, r["eval_loss"]))
            label = f"{done.name} ({done.flops:.3g} FLOPs)"
            by_flops.plot([x for x, _ in evals], [y for _, y in evals], marker="o", label=label)
            by_step.plot([r["step"] + 1 for r in rows], [r["loss"] for r in rows],
                         linewidth=0.8, label=done.name)
            print(f"{job}: {done.name} eval loss {done.eval_loss:.4f}, FLOPs {done.flops:.3g} "
                  f"({done.flops / done.flops_full:.2f} of full), {done.train_seconds:.1f} s")
        by_flops.set(xlabel="training FLOPs", ylabel="eval loss", title="eval loss by FLOPs")
        by_step.set(xlabel="step", ylabel="training loss", title="training loss by step")
        for ax in (by_flops, by_step):
            ax.grid(True, color="#e5e5e5")
            ax.legend(frameon=False)
        fig.tight_layout()
        fig.savefig(args.out, metadata={"Date": None} if args.out.endswith(".svg") else None)
        print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
