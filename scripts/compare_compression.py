#!/usr/bin/env python3
"""Compress the same trained model in PyTorch and in wgtrain and print test
accuracy, file size and CPU throughput side by side.

    target/release/wgtrain train --hidden 500 --epochs 10 --batch 64 --lr 0.1 \\
        --device cpu --save base.safetensors
    .venv/bin/python scripts/compare_compression.py --model base.safetensors

The steps, on both sides, from the same f32 weights (a wgtrain model file):
  prune90   global magnitude (L1) pruning of 90% of the weights (biases kept),
            then 2 epochs of SGD fine-tuning (lr 0.05, batch 64) with the
            masks held (torch.nn.utils.prune.global_unstructured);
  int8      post-training int8 weights (PyTorch:
            torch.ao.quantization.quantize_dynamic on the Linear layers, i.e.
            per-tensor weight scales and activations quantized per batch at
            run time; wgtrain: per-output-channel scales, activations per row);
  both      prune90 then int8.
Sizes are the bytes of the saved files (PyTorch: torch.save of the state
dict, which keeps pruned weights as dense zeros; wgtrain: the compressed
safetensors file). Throughput: forward passes at batch 256 on the CPU with
the same thread count, f32 against int8.
"""

import argparse
import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_pytorch import read_idx  # noqa: E402


def load_wgtrain_model(path):
    """A wgtrain f32 model file as an nn.Sequential plus its input scale/offset."""
    with open(path, "rb") as f:
        raw = f.read()
    n = struct.unpack("<Q", raw[:8])[0]
    header = json.loads(raw[8 : 8 + n])
    meta = header.pop("__metadata__", {})
    if meta.get("wgtrain.format") != "mlp-f32-v1":
        sys.exit(f"{path}: not a wgtrain f32 model (format {meta.get('wgtrain.format')!r})")
    body = raw[8 + n :]

    def tensor(name):
        t = header[name]
        a, b = t["data_offsets"]
        return torch.frombuffer(bytearray(body[a:b]), dtype=torch.float32).reshape(t["shape"]).clone()

    sizes = [int(s) for s in meta["layers"].split(",")]
    layers = []
    for i in range(len(sizes) - 1):
        lin = torch.nn.Linear(sizes[i], sizes[i + 1])
        with torch.no_grad():
            lin.weight.copy_(tensor(f"fc{i + 1}.weight"))
            lin.bias.copy_(tensor(f"fc{i + 1}.bias"))
        layers.append(lin)
        if i + 2 < len(sizes):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers), float(meta["input_scale"]), float(meta["input_offset"])


def load_split(folder, split):
    stem = "train" if split == "train" else "t10k"
    for gz in (".gz", ""):
        xi = os.path.join(folder, f"{stem}-images-idx3-ubyte{gz}")
        yi = os.path.join(folder, f"{stem}-labels-idx1-ubyte{gz}")
        if os.path.exists(xi):
            x = read_idx(xi)
            return x.reshape(x.shape[0], -1), read_idx(yi).long()
    sys.exit(f"no {split} IDX files in {folder}")


def accuracy(model, x, y, scale, offset):
    with torch.no_grad():
        pred = model(x.float() * scale + offset).argmax(1)
    return (pred == y).float().mean().item()


def saved_bytes(model):
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    return buf.getbuffer().nbytes


def throughput(model, dim, batch=256, seconds=1.0):
    x = torch.rand(batch, dim)
    with torch.no_grad():
        for _ in range(5):
            model(x)
        n, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            model(x)
            n += 1
    return batch * n / (time.perf_counter() - t0)


def prune_finetune(model, x, y, scale, offset, sparsity, epochs, lr, batch, seed):
    import torch.nn.utils.prune as prune

    linears = [m for m in model if isinstance(m, torch.nn.Linear)]
    prune.global_unstructured(
        [(m, "weight") for m in linears], pruning_method=prune.L1Unstructured, amount=sparsity
    )
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    g = torch.Generator().manual_seed(seed)
    n = x.shape[0]
    for _ in range(epochs):
        perm = torch.randperm(n, generator=g)
        for i in range(0, n, batch):
            idx = perm[i : i + batch]
            loss = loss_fn(model(x[idx].float() * scale + offset), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    for m in linears:
        prune.remove(m, "weight")
    return model


def run_wgtrain(exe, model, out, extra, data):
    cmd = [exe, "compress", "--model", model, "--out", out, "--data", data, "--device", "cpu", "--json"] + extra
    r = subprocess.run(cmd, capture_output=True, text=True)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return json.loads(r.stdout)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="wgtrain f32 model (train --save)")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--wgtrain", default="target/release/wgtrain")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--sparsity", type=float, default=0.9)
    ap.add_argument("--finetune-epochs", type=int, default=2)
    ap.add_argument("--lr", type=float, default=0.05)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", action="store_true", help="print one JSON object instead of the table")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    base, scale, offset = load_wgtrain_model(args.model)
    xtr, ytr = load_split(args.data, "train")
    xte, yte = load_split(args.data, "test")
    dim = xte.shape[1]
    f32_file = os.path.getsize(args.model)
    rows = []

    def torch_row(step, model, nbytes, base_bytes):
        rows.append(
            {
                "side": "pytorch",
                "step": step,
                "accuracy": accuracy(model, xte, yte, scale, offset),
                "bytes": nbytes,
                "size_ratio": nbytes / base_bytes,
            }
        )

    torch_base_bytes = saved_bytes(base)
    torch_row("f32", base, torch_base_bytes, torch_base_bytes)
    pruned = prune_finetune(
        load_wgtrain_model(args.model)[0], xtr, ytr, scale, offset,
        args.sparsity, args.finetune_epochs, args.lr, 64, args.seed,
    )
    torch_row("prune90", pruned, saved_bytes(pruned), torch_base_bytes)
    qdyn = torch.ao.quantization.quantize_dynamic(base, {torch.nn.Linear}, dtype=torch.qint8)
    torch_row("int8", qdyn, saved_bytes(qdyn), torch_base_bytes)
    both = torch.ao.quantization.quantize_dynamic(pruned, {torch.nn.Linear}, dtype=torch.qint8)
    torch_row("both", both, saved_bytes(both), torch_base_bytes)
    torch_tp = {"f32": throughput(base, dim), "int8": throughput(qdyn, dim)}

    env_threads = {"RAYON_NUM_THREADS": str(args.threads)}
    os.environ.update(env_threads)
    with tempfile.TemporaryDirectory() as d:
        out = os.path.join(d, "c.safetensors")
        ft = ["--finetune-epochs", str(args.finetune_epochs), "--lr", str(args.lr), "--seed", str(args.seed)]
        prune = ["--prune", str(args.sparsity)]
        configs = {
            "prune90": prune + ft,
            "int8": ["--quantize", "int8", "--bench"],
            "both": prune + ft + ["--quantize", "int8"],
        }
        wg = {k: run_wgtrain(args.wgtrain, args.model, out, v + ["--threads", str(args.threads)], args.data)
              for k, v in configs.items()}
    first = wg["int8"]
    rows.insert(
        0,
        {"side": "wgtrain", "step": "f32", "accuracy": first["before"]["accuracy"], "bytes": f32_file, "size_ratio": 1.0},
    )
    for k, v in wg.items():
        rows.insert(
            list(wg).index(k) + 1,
            {
                "side": "wgtrain",
                "step": k,
                "accuracy": v["after"]["accuracy"],
                "bytes": v["after"]["bytes"],
                "size_ratio": v["total"]["size_ratio"],
            },
        )
    # The faster of wgtrain's two f32 paths (training gemm, inference predictor).
    wg_tp = {
        "f32": max(b["rows_per_second"] for b in first["bench"] if b["path"].startswith("f32")),
        "int8": max(b["rows_per_second"] for b in first["bench"] if b["path"].startswith("int8")),
    }

    if args.json:
        print(json.dumps({"rows": rows, "throughput_rows_per_s": {"pytorch": torch_tp, "wgtrain": wg_tp}}))
        return
    print(f"{'side':<8} {'step':<8} {'test acc':>9} {'drop (pts)':>10} {'bytes':>10} {'of f32':>7}")
    base_acc = {r["side"]: r["accuracy"] for r in rows if r["step"] == "f32"}
    for r in rows:
        print(
            f"{r['side']:<8} {r['step']:<8} {r['accuracy'] * 100:>8.2f}% "
            f"{(base_acc[r['side']] - r['accuracy']) * 100:>10.2f} {r['bytes']:>10} {r['size_ratio'] * 100:>6.1f}%"
        )
    print(f"\nCPU forward throughput at batch 256, {args.threads} threads (rows/s):")
    for side, tp in (("pytorch", torch_tp), ("wgtrain", wg_tp)):
        print(f"  {side:<8} f32 {tp.get('f32', 0):>10.0f}   int8 {tp.get('int8', 0):>10.0f}   "
              f"int8/f32 {tp.get('int8', 0) / max(tp.get('f32', 1), 1):.2f}")


if __name__ == "__main__":
    main()
