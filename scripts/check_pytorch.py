#!/usr/bin/env python3
"""Load a wgtrain model file in PyTorch and check it gives the same test
accuracy as `wgtrain eval`.

    python3 scripts/check_pytorch.py --model model.safetensors \
        --data /usr/share/datasets/fashion-mnist

The model is loaded with safetensors.torch.load_file into plain nn.Linear
layers (weights are [out, in], as nn.Linear stores them); the preprocessing
recorded in the file's metadata (x * input_scale + input_offset) is applied
to the raw IDX pixels. Exits non-zero when the accuracies differ by more than
--tolerance.
"""

import argparse
import gzip
import json
import os
import struct
import subprocess
import sys

import torch
from safetensors import safe_open
from safetensors.torch import load_file


def read_idx(path):
    """An IDX file of unsigned bytes, plain or .gz, as a uint8 tensor."""
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    if magic >> 8 != 0x08:
        sys.exit(f"{path}: not an IDX file of unsigned bytes (magic {magic:#010x})")
    ndims = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndims, data[4 : 4 + 4 * ndims])
    body = torch.frombuffer(bytearray(data[4 + 4 * ndims :]), dtype=torch.uint8)
    return body[: int(torch.tensor(dims).prod())].reshape(dims)


def find(folder, stem, kind):
    for sep in ("-", "."):
        for gz in ("", ".gz"):
            p = os.path.join(folder, f"{stem}{sep}{kind}-ubyte{gz}")
            if os.path.exists(p):
                return p
    sys.exit(f"{folder}: no {stem}-{kind}-ubyte[.gz]")


def load_model(path):
    tensors = load_file(path)
    with safe_open(path, framework="pt") as f:
        meta = f.metadata()
    sizes = [int(s) for s in meta["layers"].split(",")]
    layers = []
    for i in range(len(sizes) - 1):
        lin = torch.nn.Linear(sizes[i], sizes[i + 1])
        lin.weight.data = tensors[f"fc{i + 1}.weight"]
        lin.bias.data = tensors[f"fc{i + 1}.bias"]
        layers.append(lin)
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).eval(), meta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--wgtrain", default="target/release/wgtrain")
    ap.add_argument("--tolerance", type=float, default=2e-4)
    args = ap.parse_args()

    net, meta = load_model(args.model)
    x = read_idx(find(args.data, "t10k-images", "idx3")).float()
    y = read_idx(find(args.data, "t10k-labels", "idx1")).long()
    x = x.reshape(x.shape[0], -1) * float(meta["input_scale"]) + float(meta["input_offset"])
    with torch.no_grad():
        logits = net(x)
    torch_acc = (logits.argmax(1) == y).float().mean().item()
    torch_loss = torch.nn.functional.cross_entropy(logits, y).item()

    out = subprocess.run(
        [args.wgtrain, "eval", "--model", args.model, "--data", args.data, "--device", "cpu", "--json", "-q"],
        check=True,
        capture_output=True,
        text=True,
    )
    ours = json.loads(out.stdout)
    print(f"pytorch {torch.__version__}: accuracy {torch_acc:.4f}  loss {torch_loss:.4f}")
    print(f"wgtrain eval:      accuracy {ours['accuracy']:.4f}  loss {ours['loss']:.4f}")
    if abs(torch_acc - ours["accuracy"]) > args.tolerance or abs(torch_loss - ours["loss"]) > 1e-3:
        sys.exit("MISMATCH")
    print("match")


if __name__ == "__main__":
    main()
