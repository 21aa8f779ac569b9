"""The Python client against the real coordinator and worker client_test.sh starts (mutual TLS,
bearer tokens). Run through client_test.sh, which sets RAPTR_TEST_* and PYTHONPATH."""
import glob
import json
import os
import subprocess
import unittest

import grpc

import raptr

WORK = os.environ["RAPTR_TEST_WORK"]
SRC = os.environ["RAPTR_TEST_SRC"]
CTL = os.environ["RAPTR_TEST_CTL"]
CA = os.environ["RAPTR_TEST_CA"]
TOKENS = os.environ["RAPTR_TEST_TOKENS"]
ADDRESS = os.environ["RAPTR_COORDINATOR"]


def client(who="alice", **kw):
    return raptr.Client(ADDRESS, token_file=os.path.join(TOKENS, who), tls=CA, **kw)


def small(name, steps, **over):
    spec = {
        "name": name,
        "model": {"kind": "gpt", "layers": 4, "d_model": 32, "heads": 2, "vocab_size": 300,
                  "max_seq": 32},
        "data": {"train_shards": [f"{WORK}/data/train.bin"],
                 "val_shards": [f"{WORK}/data/val.bin"]},
        "training": {"batch": 8, "seq": 32, "steps": steps, "seed": 3, "eval_every": 20,
                     "eval_batches": 2, "checkpoint_every": 30},
        "optimizer": {"lr": 3e-3, "warmup_steps": 5, "skipped": "frozen"},
        "schedule": {"raptr": {}},
        "resources": {"min_workers": 1, "max_workers": 1},
    }
    for key, value in over.items():
        spec[key] = dict(spec.get(key, {}), **value) if isinstance(value, dict) else value
    return spec


class ClientTest(unittest.TestCase):
    def setUp(self):
        self.c = client()

    def tearDown(self):
        self.c.close()

    def test_submit_watch_to_succeeded_and_read_steps(self):
        job = self.c.submit(small("py-raptr", 60))
        self.assertRegex(job, r"^job-\d+$")
        events = list(self.c.watch(job))
        self.assertIsInstance(events[0], raptr.Snapshot)
        self.assertEqual(events[0].job.id, job)
        steps = [e for e in events if isinstance(e, raptr.Step)]
        self.assertEqual([s.step for s in steps], list(range(60)))
        self.assertTrue(all(s.loss > 0 and s.flops > 0 and s.tokens == 8 * 32 for s in steps))
        self.assertTrue(any(s.path_length < 4 for s in steps), "RaPTr trained no partial path")
        evals = [e for e in events if isinstance(e, raptr.Eval)]
        self.assertEqual([e.step for e in evals], [19, 39, 59])
        self.assertTrue(any(isinstance(e, raptr.Checkpoint) for e in events))
        last = events[-1]
        self.assertIsInstance(last, raptr.StateChanged)
        self.assertEqual(last.new_state, "SUCCEEDED")
        got = self.c.get(job)
        self.assertEqual((got.state, got.step, got.steps, got.owner), ("SUCCEEDED", 60, 60, "alice"))
        self.assertTrue(got.done)
        self.assertEqual(got.spec["optimizer"]["skipped"], "SKIPPED_LAYER_POLICY_FROZEN")
        self.assertAlmostEqual(got.eval_loss, evals[-1].eval_loss, places=9)
        rows = self.c.steps(job)
        self.assertEqual([r["step"] for r in rows], list(range(60)))
        self.assertEqual([r["loss"] for r in rows], [s.loss for s in steps])
        self.assertEqual([r["step"] for r in rows if r["eval_loss"] is not None], [19, 39, 59])
        self.assertAlmostEqual(sum(r["flops"] for r in rows), got.flops, delta=got.flops * 1e-9)
        history = list(self.c.watch(job, from_start=True, follow=False))
        self.assertEqual([e.step for e in history if isinstance(e, raptr.Step)], list(range(60)))
        self.assertEqual(history[-1].new_state, "SUCCEEDED")
        with self.assertRaises(raptr.FailedPrecondition) as e:
            self.c.retry(job)
        self.assertIn("only a FAILED job can be retried", e.exception.details)
        self.assertIn(job, [j.id for j in self.c.list(states="succeeded")])
        self.assertNotIn(job, [j.id for j in self.c.list(states=["PENDING", "RUNNING"])])
        checkpoints = got.proto.progress.checkpoint_path
        self.assertTrue(os.path.isdir(checkpoints))
        removed = self.c.delete(job)
        self.assertTrue(checkpoints.startswith(removed + os.sep), (removed, checkpoints))
        self.assertFalse(os.path.exists(removed))
        with self.assertRaises(raptr.NotFound):
            self.c.get(job)

    def test_cancel(self):
        # Two workers wanted, one connected: it stays PENDING until cancelled.
        job = self.c.submit(small("py-cancel", 100000, resources={"min_workers": 2,
                                                                   "max_workers": 2}))
        self.assertEqual(self.c.get(job).state, "PENDING")
        cancelled = self.c.cancel(job, reason="from python")
        self.assertEqual(cancelled.state, "CANCELLED")
        self.assertIn("from python", cancelled.message)
        self.assertEqual(self.c.cancel(job).state, "CANCELLED")  # idempotent
        events = list(self.c.watch(job))
        self.assertEqual(len(events), 1)
        self.assertEqual(events[0].job.state, "CANCELLED")

    def test_invalid_spec_is_refused_naming_the_field_and_nothing_is_stored(self):
        before = len(self.c.list())
        with self.assertRaises(raptr.InvalidSpec) as e:
            self.c.submit(small("py-bad", 10, optimizer={"lr": -1.0}))
        self.assertEqual(e.exception.code, grpc.StatusCode.INVALID_ARGUMENT)
        self.assertEqual(e.exception.field, "optimizer.lr")
        self.assertIn("optimizer.lr", str(e.exception))
        with self.assertRaises(raptr.InvalidSpec) as e:
            self.c.submit(small("py-bad", 10, schedule={"raptr": {"stages": [
                {"path_length": 9, "fraction": 1.0}]}}))
        self.assertEqual(e.exception.field, "schedule.raptr.stages[0].path_length")
        self.assertEqual(len(self.c.list()), before)

    def test_spec_errors_before_any_call(self):
        with self.assertRaises(raptr.SpecError) as e:
            raptr.to_job_spec({"optimizer": {"lrr": 1}})
        self.assertEqual(e.exception.field, "optimizer.lrr")
        self.assertIn("did you mean 'lr'", str(e.exception))
        with self.assertRaises(raptr.SpecError) as e:
            raptr.to_job_spec({"optimizer": {"skipped": "cold"}})
        self.assertIn("zero_grad, frozen", str(e.exception))
        with self.assertRaises(raptr.SpecError) as e:
            raptr.to_job_spec({"training": {"steps": "many"}})
        self.assertEqual(e.exception.field, "training.steps")
        with self.assertRaises(raptr.SpecError) as e:
            raptr.to_job_spec({"schedule": {"full": {}, "raptr": {}}})
        self.assertEqual(e.exception.field, "schedule.raptr")
        with self.assertRaises(raptr.SpecError):
            raptr.to_job_spec("missing-file.yaml")
        # YAML as raptrctl reads it: 1e-3 is a number, `yes` is not a boolean.
        spec = raptr.to_job_spec("name: yes\noptimizer: {lr: 1e-3, decay: COSINE}\n")
        self.assertEqual(spec.name, "yes")
        self.assertAlmostEqual(spec.optimizer.lr, 1e-3)

    def test_examples_convert_as_raptrctl_converts_them(self):
        examples = sorted(glob.glob(os.path.join(SRC, "examples", "*.yaml")))
        self.assertGreater(len(examples), 3)
        env = dict(os.environ, RAPTR_TLS_CA=CA, RAPTR_TOKEN_FILE=os.path.join(TOKENS, "alice"))
        for path in examples:
            with self.subTest(example=os.path.basename(path)):
                out = subprocess.run([CTL, "submit", "--validate-only", "--output", "json",
                                      "-f", path], capture_output=True, text=True, env=env,
                                     cwd=WORK)
                self.assertEqual(out.returncode, 0, out.stderr)
                want = json.loads(out.stdout)["spec"]
                self.assertEqual(self.c.validate(path), want)
                with open(path) as f:
                    self.assertEqual(self.c.validate(f.read()), want)  # a YAML string

    def test_not_found(self):
        with self.assertRaises(raptr.NotFound) as e:
            self.c.get("job-999999")
        self.assertEqual(e.exception.code, grpc.StatusCode.NOT_FOUND)
        with self.assertRaises(raptr.NotFound):
            list(self.c.watch("job-999999"))

    def test_credentials(self):
        with raptr.Client(ADDRESS, tls=CA) as anonymous:
            with self.assertRaises(raptr.Unauthenticated):
                anonymous.list()
        with client("viewer") as viewer:
            viewer.list()
            with self.assertRaises(raptr.PermissionDenied):
                viewer.submit(small("py-viewer", 10))
        with raptr.Client(ADDRESS, token_file=os.path.join(TOKENS, "alice"), tls=False) as plain:
            with self.assertRaises(raptr.Unavailable):  # the coordinator speaks TLS only
                plain.list()
        with self.assertRaisesRegex(ValueError, "plaintext"):
            raptr.Client("10.1.2.3:50051", token="secret", tls=False)
        with self.assertRaisesRegex(ValueError, "states"):
            self.c.list(states="sleeping")


if __name__ == "__main__":
    unittest.main()
