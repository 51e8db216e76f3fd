#!/usr/bin/env python3
"""Check an exported ONNX model with the onnx checker and ONNX Runtime
against `wgtrain predict` on the same model and images.

    wgtrain export --model model.safetensors --format onnx -o model.onnx
    python3 scripts/check_onnx.py --model model.safetensors --onnx model.onnx \
        --data /usr/share/datasets/fashion-mnist

It runs onnx.checker.check_model(full_check=True), runs the graph in ONNX
Runtime on the raw test images (0..255, the graph preprocesses them itself),
runs `wgtrain predict --json` on the same IDX file, and prints the share of
images given the same class and the largest |difference| of a probability
(the softmax of the logits when the graph outputs logits). Exits non-zero
when the agreement is below --min-agreement or the difference above
--max-diff. Needs `pip install onnx onnxruntime numpy`.
"""

import argparse
import gzip
import json
import os
import struct
import subprocess
import sys

import numpy as np
import onnx
import onnxruntime as ort


def read_idx_images(path):
    """An IDX image file of unsigned bytes, plain or .gz, as [n, values] f32."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic, n = struct.unpack(">II", data[:8])
    dims = magic & 0xFF
    shape = struct.unpack(">" + "I" * dims, data[4 : 4 + 4 * dims])
    values = int(np.prod(shape[1:]))
    start = 4 + 4 * dims
    return np.frombuffer(data[start:], np.uint8).reshape(n, values).astype(np.float32)


def softmax(z):
    z = z.astype(np.float64)
    z = z - z.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="the wgtrain model file (comma-separated: an ensemble)")
    ap.add_argument("--onnx", required=True, help="the file written by `wgtrain export`")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist", help="folder of IDX files")
    ap.add_argument("--wgtrain", default=os.environ.get("WGTRAIN", "wgtrain"), help="the wgtrain binary")
    ap.add_argument("--min-agreement", type=float, default=0.999)
    ap.add_argument("--max-diff", type=float, default=1e-5)
    a = ap.parse_args()

    m = onnx.load(a.onnx)
    onnx.checker.check_model(m, full_check=True)
    print(f"onnx checker: ok (opset {m.opset_import[0].version}, ir {m.ir_version})")

    images = None
    for name in ("t10k-images-idx3-ubyte.gz", "t10k-images-idx3-ubyte"):
        p = os.path.join(a.data, name)
        if os.path.exists(p):
            images = p
            break
    if images is None:
        sys.exit(f"no t10k-images-idx3-ubyte[.gz] in {a.data}")
    x = read_idx_images(images)

    sess = ort.InferenceSession(a.onnx, providers=["CPUExecutionProvider"])
    out = sess.get_outputs()[0].name
    y = sess.run([out], {sess.get_inputs()[0].name: x})[0]
    ours = y.astype(np.float64) if out == "probabilities" else softmax(y)

    run = subprocess.run(
        [a.wgtrain, "predict", "--model", a.model, "--json", "--top-k", "1", "--device", "cpu", images],
        check=True,
        capture_output=True,
        text=True,
    )
    theirs = np.array([json.loads(l)["probabilities"] for l in run.stdout.splitlines()], np.float64)
    if theirs.shape != ours.shape:
        sys.exit(f"shapes differ: onnxruntime {ours.shape}, wgtrain predict {theirs.shape}")
    agreement = float((ours.argmax(axis=1) == theirs.argmax(axis=1)).mean())
    diff = float(np.abs(ours - theirs).max())
    print(f"{a.onnx}: {len(x)} images, output `{out}`, same class {agreement * 100:.3f}%, max |diff| {diff:.3e}")
    if agreement < a.min_agreement or diff > a.max_diff:
        sys.exit(f"outside the bounds: agreement >= {a.min_agreement}, max |diff| <= {a.max_diff}")


if __name__ == "__main__":
    main()
