#!/usr/bin/env python3
"""Compares the weights of two raptr checkpoints (model.safetensors, F32 tensors).

  compare_checkpoints.py A_DIR B_DIR --exact      every tensor bitwise equal
  compare_checkpoints.py A_DIR B_DIR --rtol 1e-5  max |a - b| <= rtol * max |a| over all tensors

Prints the largest difference; exit status 0 when within bounds, 1 otherwise.
"""
import argparse
import json
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


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("a")
    parser.add_argument("b")
    parser.add_argument("--exact", action="store_true")
    parser.add_argument("--rtol", type=float, default=1e-5)
    args = parser.parse_args()
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
