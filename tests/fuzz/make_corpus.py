#!/usr/bin/env python3
"""Writes the generated seed corpora of the fuzz targets (tests/fuzz/corpus/{shard,safetensors})
and copies the example job specs into tests/fuzz/corpus/job_spec/. The hand-written job spec
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


if __name__ == "__main__":
    main()
