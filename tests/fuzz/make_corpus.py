#!/usr/bin/env python3
"""Writes the generated seed corpora of the fuzz targets (tests/fuzz/corpus/{shard,safetensors,
control}) and copies the example job specs into tests/fuzz/corpus/job_spec/. The hand-written job spec
seeds (edge-*.yaml) and tests/fuzz/regressions/ are committed as they are, not generated.

Deterministic: rerunning it rewrites the same bytes. Usage: tests/fuzz/make_corpus.py
"""
import json
import pathlib
import random
import shutil
import struct

ROOT = pathlib.Path(__file__).resolve().parent
CORPUS = ROOT / "corpus"
EXAMPLES = ROOT.parent.parent / "examples"

SHARD_MAGIC = 20240520
SHARD_VERSION = 1


def shard(tokens, magic=SHARD_MAGIC, version=SHARD_VERSION, count=None):
    """llm.c's format: 256 x int32 header (magic, version, token count), then uint16 tokens."""
    header = [0] * 256
    header[0], header[1] = magic, version
    header[2] = len(tokens) if count is None else count
    return struct.pack("<256i", *header) + struct.pack(f"<{len(tokens)}H", *tokens)


def safetensors(tensors, metadata=None, align=True, raw_header=None):
    """tensors: [(name, dtype, shape, bytes)], laid out back to back as our writer does."""
    header, data = {}, b""
    for name, dtype, shape, payload in tensors:
        header[name] = {"dtype": dtype, "shape": shape,
                        "data_offsets": [len(data), len(data) + len(payload)]}
        data += payload
    if metadata is not None:
        header["__metadata__"] = metadata
    text = raw_header if raw_header is not None else json.dumps(header, separators=(",", ":"))
    text = text.encode()
    if align:
        text += b" " * ((8 - len(text) % 8) % 8)
    return struct.pack("<Q", len(text)) + text + data


def write(folder, name, content):
    path = CORPUS / folder / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)



# --- fuzz_control: operation scripts (see tests/fuzz/fuzz_control.cc for the format) ------------

def varint(n):
    n &= (1 << 64) - 1
    out = b""
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out += bytes([b | 0x80])
        else:
            return out + bytes([b])


def pb(*fields):
    """Protobuf wire format of (number, value) pairs: int -> varint, bytes/str -> length-delimited,
    ("f64", x) -> fixed64, ("d", x) -> double."""
    out = b""
    for number, value in fields:
        if isinstance(value, tuple) and value[0] == "d":
            out += varint(number << 3 | 1) + struct.pack("<d", value[1])
        elif isinstance(value, tuple) and value[0] == "f64":
            out += varint(number << 3 | 1) + struct.pack("<Q", value[1])
        elif isinstance(value, (bytes, str)):
            data = value.encode() if isinstance(value, str) else value
            out += varint(number << 3 | 2) + varint(len(data)) + data
        else:
            out += varint(number << 3 | 0) + varint(value)
    return out


# Operation kinds (the op byte's low 4 bits).
CONNECT, RECEIVE, STEP, EVAL, CHECKPOINT, HEARTBEAT, ERROR, DISCONNECT = range(8)
TICK, ADVANCE, KV_SET, KV_GET, CANCEL, RESTART, METRICS, STALE = range(8, 16)
# Indexes into the harness's tables: kStepDelta[0] = 0, kClockSteps, kLosses, kTargets, kSeconds.
CLOCK = {0: 0, 0.1: 2, 0.6: 3, 1.1: 4, 2.5: 5, 5.5: 6, 11: 7, 31: 8, 61: 9, 130: 10}


def op(kind, slot=0, variant=0, *args):
    return bytes([kind | slot << 4 | variant << 6, *args])


def payload(data):
    assert len(data) < 256
    return bytes([len(data)]) + data


def hello(slot, variant=1, cuda=False):
    message = pb((1, f"host-{slot}/cpu0"), (2, 2 if cuda else 1), (4, 8 << 30), (5, 4),
                 (6, f"10.0.0.{slot + 1}"), (7, "0.1.0"), (8, f"proc-{slot}"))
    if cuda:
        message += pb((3, pb((1, 0), (2, "NVIDIA H100 80GB HBM3"), (3, 80 << 30), (4, 90))))
    return op(CONNECT, slot, variant) + payload(message)


def step(slot, loss=0, targets=0, seconds=0, delta=0):
    return op(STEP, slot, 0, delta, loss, targets, seconds)


def tick(seconds=0.1):
    return op(TICK, 0, 0, CLOCK[seconds])


def run_job(slots, steps, eval_after, checkpoint_after, start=0, ticks=True):
    """Every rank of the group steps through the job, answering its evaluations and checkpoints."""
    out = b""
    for s in range(start, steps):
        for slot in slots:
            out += step(slot)
        for slot in slots:
            out += op(HEARTBEAT, slot, 1, 0)
        if s in eval_after:
            for slot in slots:
                out += op(EVAL, slot, 0, 0, 0, 0, 0)
        if s in checkpoint_after:
            for slot in slots:
                out += op(CHECKPOINT, slot, 0, 0, 0xEE)
        if ticks and s % 2 == 1:
            out += tick(0.6)
    return out


# The template's jobs (fuzz_control.cc kJobSpecs): solo 7 steps, evaluations after steps 1, 3, 5
# and 6, checkpoints after 2, 5 and 6; pair 5 steps, no evaluation but after the last step,
# checkpoints after 1, 3 and 4; gpu 3 steps, an evaluation and a checkpoint after each.
SOLO = (7, {1, 3, 5, 6}, {2, 5, 6})
PAIR = (5, {4}, {1, 3, 4})
GPU = (3, {0, 1, 2}, {0, 1, 2})


def control_seeds():
    seeds = {}
    idle = lambda slot: op(HEARTBEAT, slot, 0, 0)
    # One worker runs "solo" from start to end, then says it is idle.
    seeds["session-solo.bin"] = (hello(0) + op(HEARTBEAT, 0, 0, 0) + run_job([0], *SOLO) +
                                 idle(0) + tick(1.1) + op(METRICS))
    # A second and third worker run "pair" beside it.
    seeds["session-pair.bin"] = (hello(0) + hello(1) + hello(2) + run_job([1, 2], *PAIR) +
                                 idle(1) + idle(2) + op(METRICS) + tick(0.6))
    # A CUDA worker runs "gpu".
    seeds["session-gpu.bin"] = hello(3, 3, cuda=True) + run_job([3], *GPU) + idle(3) + op(METRICS)
    # "solo" runs on the first of two workers; cancelled, it frees that one, and "pair" runs on
    # both once the first says it is idle.
    seeds["cancel-regroup.bin"] = (hello(0) + hello(1) + step(0) + op(CANCEL, 0) + idle(0) +
                                   tick(0.1) + run_job([0, 1], *PAIR) + op(METRICS))
    # A worker fails (retryable); after its idle heartbeat and the regroup delay the job resumes
    # from its checkpoint on it.
    seeds["error-recover.bin"] = (hello(0) + run_job([0], 4, {1, 3}, {2}) +
                                  op(ERROR, 0, 1, 0, 13) + idle(0) + tick(1.1) +
                                  run_job([0], *SOLO, start=3) + idle(0))
    # The resume checkpoint is unusable: rejected, the job starts over.
    seeds["error-checkpoint-unusable.bin"] = (
        hello(0) + run_job([0], 4, {1, 3}, {2}) + op(ERROR, 0, 1, 0, 13) + idle(0) + tick(1.1) +
        op(ERROR, 0, 3, 0, 15) + idle(0) + tick(1.1) + step(0) + op(METRICS))
    # The worker goes silent: its lease expires, it reconnects (same process) and the job resumes.
    seeds["lease-expiry.bin"] = (hello(0) + run_job([0], 4, {1, 3}, {2}, ticks=False) +
                                 tick(2.5) * 5 + hello(0) + run_job([0], *SOLO, start=3))
    # A rank that heartbeats but makes no progress: the watchdog fails its group.
    seeds["watchdog-stall.bin"] = (hello(0) + step(0) + (op(HEARTBEAT, 0, 1, 0) + tick(2.5)) * 9 +
                                   op(HEARTBEAT, 0, 2, 0) + idle(0) + tick(1.1) + step(0))
    # The coordinator restarts mid-job; the worker reconnects and resumes from the checkpoint.
    seeds["restart-resume.bin"] = (hello(0) + run_job([0], 4, {1, 3}, {2}) + op(RESTART) +
                                   hello(0) + run_job([0], *SOLO, start=3) + op(METRICS))
    # Replicas disagree on the checkpoint digest (non-retryable), and another process claims a
    # connected worker's id.
    seeds["diverged-duplicate-id.bin"] = (
        hello(0) + hello(1) + hello(2) + step(1) + step(2) + op(HEARTBEAT, 1, 1, 0) + step(1) +
        step(2) + op(CHECKPOINT, 1, 0, 0, 0xEE) + op(CHECKPOINT, 2, 0, 0, 3) + hello(1, 2) +
        op(DISCONNECT, 2) + op(STALE, 0, 0, 1) + op(STALE, 0, 0, 0) + op(METRICS))
    # The rendezvous store: rank 0 sets a key, rank 1 reads it, waits for a missing one, a stale
    # generation is refused.
    kv_set = pb((4, "gloo/rank0"), (5, b"10.0.0.1:5000"))
    kv_get = pb((4, "gloo/rank0"), (5, 1), (6, ("d", 0.5)))
    kv_missing = pb((4, "nccl/unique_id"), (5, 1), (6, ("d", 2.0)))
    seeds["rendezvous.bin"] = (
        hello(0) + hello(1) + hello(2) + op(KV_SET, 1, 1) + payload(kv_set) +
        op(KV_GET, 2, 1) + payload(kv_get) + op(KV_GET, 2, 1) + payload(kv_missing) +
        op(KV_GET, 2, 0) + payload(kv_get) + op(KV_SET, 1, 3, 20) + payload(kv_set) +
        op(ERROR, 1, 1, 0, 14) + op(KV_GET, 2, 1) + payload(kv_get))
    # Messages as a worker would serialize them, patched to the assignment (Receive variants).
    report = pb((3, pb((4, 0), (5, ("d", 3.1)), (6, 256), (7, 1024), (8, ("d", 1e9)),
                       (9, ("d", 2e9)), (10, ("d", 0.7)), (11, ("d", 0.2)), (12, ("d", 0.05)),
                       (13, ("d", 0.1)), (14, ("d", 0.01)), (15, ("d", 0.01)))))
    heartbeat = pb((2, pb((3, 0))))
    evaluation = pb((5, pb((5, ("d", 3.3)), (6, 512), (7, 2), (8, ("d", 0.3)))))
    written = pb((4, pb((6, ("f64", 0xFEEDFACE)))))
    failure = pb((6, pb((3, 2), (4, 13), (5, "CUDA error: an illegal memory access"), (6, 1))))
    raw = lambda message, variant=3: op(RECEIVE, 0, variant) + payload(message)
    seeds["raw-messages.bin"] = (
        hello(0) + raw(heartbeat, 1) + raw(report) + raw(report) + raw(evaluation) + raw(report) +
        raw(report) + raw(written) + raw(report) + raw(evaluation) + tick(0.6) + raw(failure, 1) +
        raw(pb((2, b""))) + tick(1.1) + raw(pb((1, pb((1, "host-0/cpu0"))))))
    # Invalid Hellos: a bad id, no backend, no instance.
    seeds["bad-hellos.bin"] = (
        op(CONNECT) + payload(pb((1, "bad id!"), (2, 1), (8, "p"))) +
        op(CONNECT) + payload(pb((1, "w"), (8, "p"))) +
        op(CONNECT) + payload(pb((1, "w"), (2, 1))) +
        op(CONNECT) + payload(pb((1, "w" * 129), (2, 1), (8, "p"))) +
        op(CONNECT) + payload(pb((1, "ok"), (2, 1), (8, "p"))) + raw(pb((1, pb((1, "x")))), 0))
    return seeds

def main():
    rng = random.Random(20240520)

    for example in sorted(EXAMPLES.glob("*.yaml")):
        shutil.copyfile(example, CORPUS / "job_spec" / f"example-{example.name}")

    # Token shards: valid ones of a few lengths, then one of each header/size error.
    write("shard", "valid-empty.bin", shard([]))
    write("shard", "valid-1.bin", shard([7]))
    write("shard", "valid-8.bin", shard([0, 1, 2, 3, 65535, 50256, 8191, 42]))
    write("shard", "valid-64.bin", shard([rng.randrange(8192) for _ in range(64)]))
    write("shard", "truncated.bin", shard([1, 2, 3], count=4))
    write("shard", "trailing.bin", shard([1, 2, 3], count=2))
    write("shard", "odd-size.bin", shard([1, 2]) + b"\x00")
    write("shard", "bad-magic.bin", shard([1], magic=20240521))
    write("shard", "bad-version.bin", shard([1], version=2))
    write("shard", "negative-count.bin", shard([], count=-1))
    write("shard", "max-count.bin", shard([], count=2**31 - 1))
    write("shard", "short-header.bin", shard([])[:1023])

    # safetensors: valid files as our writer lays them out, files other writers may produce
    # (unaligned, unpadded, unsorted, empty tensors), and one of each kind of malformed header.
    f32 = lambda *v: struct.pack(f"<{len(v)}f", *v)
    write("safetensors", "valid-empty.safetensors", safetensors([]))
    write("safetensors", "valid-one-f32.safetensors",
          safetensors([("w", "F32", [2, 3], f32(1, 2, 3, 4, 5, 6))]))
    write("safetensors", "valid-dtypes-metadata.safetensors", safetensors(
        [("a.bf16", "BF16", [2], b"\x80\x3f\x00\x40"),
         ("b.i64", "I64", [1], struct.pack("<q", -5)),
         ("c.bool", "BOOL", [3], b"\x01\x00\x01"),
         ("d.f64", "F64", [], struct.pack("<d", 3.5)),
         ("e.u8", "U8", [0, 4], b""),
         ("f.f8", "F8_E4M3", [2, 1], b"\x38\x40")],
        metadata={"format": "pt", "step": "12"}))
    write("safetensors", "valid-gpt2-names.safetensors", safetensors(
        [("wte.weight", "F32", [4, 2], f32(*range(8))),
         ("h.0.ln_1.weight", "F32", [2], f32(1, 1)),
         ("h.0.attn.c_attn.bias", "F32", [6], f32(*range(6)))],
        metadata={"raptr_model": "gpt"}))
    write("safetensors", "valid-unaligned.safetensors",
          safetensors([("x", "U8", [3], b"abc"), ("y", "F32", [1], f32(2))], align=False))
    write("safetensors", "header-length-huge.safetensors",
          struct.pack("<Q", 2**64 - 1) + b"{}")
    write("safetensors", "header-past-end.safetensors", struct.pack("<Q", 64) + b"{}")
    write("safetensors", "offsets-overlap.safetensors", safetensors([], raw_header=json.dumps(
        {"a": {"dtype": "U8", "shape": [2], "data_offsets": [0, 2]},
         "b": {"dtype": "U8", "shape": [2], "data_offsets": [1, 3]}})) + b"xyz")
    write("safetensors", "offsets-past-end.safetensors", safetensors([], raw_header=json.dumps(
        {"a": {"dtype": "F32", "shape": [4], "data_offsets": [0, 16]}})) + b"\x00" * 8)
    write("safetensors", "shape-mismatch.safetensors", safetensors([], raw_header=json.dumps(
        {"a": {"dtype": "F32", "shape": [4611686018427387904, 4], "data_offsets": [0, 0]}})))
    write("safetensors", "duplicate-name.safetensors", safetensors([], raw_header=(
        '{"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]},'
        '"a":{"dtype":"U8","shape":[1],"data_offsets":[0,1]}}')) + b"z")
    write("safetensors", "deep-nesting.safetensors",
          safetensors([], raw_header='{"__metadata__":' + "[" * 80 + "]" * 80 + "}"))
    write("safetensors", "bad-json.safetensors", safetensors([], raw_header='{"a": {"dtype": "F3'))

    for name, content in control_seeds().items():
        write("control", name, content)


if __name__ == "__main__":
    main()
