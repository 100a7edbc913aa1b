#!/usr/bin/python3
"""safetensors interop with an independent implementation (json, struct, numpy only).

  safetensors_interop.py write OUT   write a file the way the reference
                                     implementation (huggingface/safetensors) does
  safetensors_interop.py check FILE  verify a file written by hanse's test
                                     (values, dtypes, metadata, header alignment)

Exit status 0 on success; a message on stderr and 1 on any mismatch.
"""
import json
import struct
import sys

import numpy as np

DTYPES = {"F32": np.dtype("<f4"), "F16": np.dtype("<f2"), "I64": np.dtype("<i8"),
          "I32": np.dtype("<i4"), "BF16": np.dtype("<u2")}  # numpy has no bfloat16: raw bits
# Order of the reference's Dtype enum: it sorts tensors by descending dtype, then by name.
DTYPE_RANK = {"F16": 7, "BF16": 8, "I32": 9, "F32": 11, "I64": 13}


def reference_tensors():
    """What `write` produces (and what the C++ side expects to read)."""
    return {
        "layer.weight": ("F32", np.arange(6, dtype="<f4").reshape(2, 3) * np.float32(0.5) - np.float32(1)),
        "layer.bias": ("F32", np.array([1.5, -2.25, 3e-8], dtype="<f4")),
        "half": ("F16", np.array([1.0, -2.0, 0.5, 65504.0, 0.0], dtype="<f2")),
        "steps": ("I64", np.array([[0, 1], [-1, 2**40]], dtype="<i8")),
        "empty": ("F32", np.zeros((0, 4), dtype="<f4")),
    }


REFERENCE_METADATA = {"format": "pt", "source": "numpy reference writer", "city": "L\u00fcbeck"}


def expected_from_hanse():
    """What the C++ test writes for `check` (keep in sync with safetensors_test.cc)."""
    return {
        "conv.weight": ("F32", np.array([[0.25, -1.0, 2.0], [3.5, 1e-3, -7.0]], dtype="<f4")),
        "conv.half": ("F16", np.array([0.5, -1.5, 1024.0], dtype="<f2")),
        "conv.bf16": ("BF16", np.array([0x3F80, 0xC000, 0x3F00], dtype="<u2")),  # 1, -2, 0.5
        "counts": ("I64", np.array([7, -3, 2**50], dtype="<i8")),
        "labels": ("I32", np.array([[1, 2], [3, -4]], dtype="<i4")),
    }


EXPECTED_HANSE_METADATA = {"writer": "hanse", "round": "3", "note": "quote \" and unicode \u00e9"}


def write(path):
    tensors = reference_tensors()
    order = sorted(tensors, key=lambda n: (-DTYPE_RANK[tensors[n][0]], n))
    header = {"__metadata__": REFERENCE_METADATA}
    offset = 0
    blobs = []
    for name in order:
        dtype, arr = tensors[name]
        data = np.ascontiguousarray(arr, dtype=DTYPES[dtype]).tobytes()
        header[name] = {"dtype": dtype, "shape": list(arr.shape), "data_offsets": [offset, offset + len(data)]}
        offset += len(data)
        blobs.append(data)
    text = json.dumps(header, separators=(",", ":"), ensure_ascii=False).encode("utf-8")
    text += b" " * ((8 - len(text) % 8) % 8)  # the reference pads the header to 8 bytes
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(text)))
        f.write(text)
        for b in blobs:
            f.write(b)


def fail(msg):
    print("safetensors_interop check: " + msg, file=sys.stderr)
    sys.exit(1)


def check(path):
    with open(path, "rb") as f:
        raw = f.read()
    if len(raw) < 8:
        fail("file shorter than 8 bytes")
    (n,) = struct.unpack("<Q", raw[:8])
    if n % 8 != 0:
        fail("header length %d is not a multiple of 8" % n)
    if 8 + n > len(raw):
        fail("header length %d beyond file size %d" % (n, len(raw)))
    header_text = raw[8:8 + n].decode("utf-8")
    if not header_text.rstrip(" ").endswith("}"):
        fail("header does not end with the JSON object plus space padding")

    def no_dups(pairs):
        keys = [k for k, _ in pairs]
        if len(keys) != len(set(keys)):
            fail("duplicate keys in header")
        return dict(pairs)

    header = json.loads(header_text, object_pairs_hook=no_dups)
    data = raw[8 + n:]
    meta = header.pop("__metadata__", None)
    if meta != EXPECTED_HANSE_METADATA:
        fail("metadata %r != %r" % (meta, EXPECTED_HANSE_METADATA))
    expected = expected_from_hanse()
    if set(header) != set(expected):
        fail("tensor names %s != %s" % (sorted(header), sorted(expected)))
    spans = []
    for name, (dtype, arr) in expected.items():
        info = header[name]
        if info["dtype"] != dtype:
            fail("%s: dtype %s != %s" % (name, info["dtype"], dtype))
        if info["shape"] != list(arr.shape):
            fail("%s: shape %s != %s" % (name, info["shape"], list(arr.shape)))
        b, e = info["data_offsets"]
        spans.append((b, e, name))
        got = np.frombuffer(data[b:e], dtype=DTYPES[dtype]).reshape(arr.shape)
        if not np.array_equal(got, arr):
            fail("%s: values %s != %s" % (name, got.tolist(), arr.tolist()))
    spans.sort()
    pos = 0
    for b, e, name in spans:
        if b != pos:
            fail("%s: data_offsets begin %d, expected %d (hole or overlap)" % (name, b, pos))
        pos = e
    if pos != len(data):
        fail("tensors cover %d bytes of a %d-byte data section" % (pos, len(data)))


def main():
    if len(sys.argv) != 3 or sys.argv[1] not in ("write", "check"):
        print(__doc__, file=sys.stderr)
        return 2
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        check(sys.argv[2])
    return 0


if __name__ == "__main__":
    sys.exit(main())
