#!/usr/bin/python3
"""Minimal safetensors reader/writer (numpy in, numpy out).

File layout: u64 little-endian header length N, N bytes of JSON header
(padded with spaces to a multiple of 8), then the raw little-endian data.
Header: {name: {"dtype", "shape", "data_offsets": [begin, end]}, "__metadata__": {str: str}}
with offsets relative to the start of the data section.

Only the dtypes raptr uses (plus a few trivial ones) are supported.
"""
import json
import struct

import numpy as np

_DTYPES = {
    "F64": np.dtype("<f8"),
    "F32": np.dtype("<f4"),
    "F16": np.dtype("<f2"),
    "I64": np.dtype("<i8"),
    "I32": np.dtype("<i4"),
    "I16": np.dtype("<i2"),
    "I8": np.dtype("i1"),
    "U8": np.dtype("u1"),
    "BOOL": np.dtype("?"),
}


def _st_dtype(arr):
    key = (arr.dtype.kind, arr.dtype.itemsize)
    for k, v in _DTYPES.items():
        if (v.kind, v.itemsize) == key:
            return k
    raise ValueError("unsupported dtype for safetensors: %s" % arr.dtype)


def save(path, tensors, metadata=None):
    """Write dict name -> numpy array to `path`. Metadata values are stored as strings."""
    header = {}
    chunks = []
    offset = 0
    for name in sorted(tensors):
        arr = np.asarray(tensors[name])
        code = _st_dtype(arr)
        data = np.ascontiguousarray(arr, dtype=_DTYPES[code]).tobytes()
        header[name] = {
            "dtype": code,
            "shape": [int(s) for s in arr.shape],
            "data_offsets": [offset, offset + len(data)],
        }
        chunks.append(data)
        offset += len(data)
    if metadata:
        header["__metadata__"] = {str(k): str(v) for k, v in metadata.items()}
    hbytes = json.dumps(header, separators=(",", ":")).encode("utf-8")
    hbytes += b" " * ((8 - len(hbytes) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hbytes)))
        f.write(hbytes)
        for c in chunks:
            f.write(c)


def load(path):
    """Read `path`; returns (dict name -> numpy array (native order copy), metadata dict)."""
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        raise ValueError("%s: too short for a safetensors file" % path)
    (n,) = struct.unpack("<Q", raw[:8])
    if 8 + n > len(raw):
        raise ValueError("%s: header length %d exceeds file size %d" % (path, n, len(raw)))
    header = json.loads(raw[8:8 + n].decode("utf-8"))
    data = memoryview(raw)[8 + n:]
    metadata = header.pop("__metadata__", {}) or {}
    out = {}
    for name, info in header.items():
        code = info["dtype"]
        if code not in _DTYPES:
            raise ValueError("%s: tensor %s has unsupported dtype %s" % (path, name, code))
        dt = _DTYPES[code]
        shape = tuple(int(s) for s in info["shape"])
        b, e = info["data_offsets"]
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if e - b != count * dt.itemsize or e > len(data) or b < 0:
            raise ValueError("%s: tensor %s: bad offsets %s for shape %s dtype %s"
                             % (path, name, [b, e], list(shape), code))
        arr = np.frombuffer(data[b:e], dtype=dt, count=count).reshape(shape)
        out[name] = arr.astype(dt.newbyteorder("="), copy=True)
    return out, metadata


if __name__ == "__main__":
    import sys
    for p in sys.argv[1:]:
        ts, md = load(p)
        print("%s: %d tensors, metadata %s" % (p, len(ts), md))
        for k in sorted(ts):
            print("  %-60s %-8s %s" % (k, ts[k].dtype, list(ts[k].shape)))
