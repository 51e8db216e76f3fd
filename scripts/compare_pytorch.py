#!/usr/bin/env python3
"""Time the same training recipe in PyTorch and in wgtrain, in one run, and
print the ratio wgtrain / PyTorch for each configuration.

    python3 scripts/compare_pytorch.py                 # CPU (and CUDA if present)
    python3 scripts/compare_pytorch.py --threads 2 --batch 64,256 --epochs 3
    python3 scripts/compare_pytorch.py --model 2048 --batch 64          # 784-2048-10
    python3 scripts/compare_pytorch.py --model 4096,4096,4096 --batch 1024 --max-steps 10 --amp

The recipe: a 784-500-10 MLP (nn.Linear, ReLU; --model gives other hidden
widths), cross-entropy, plain SGD at lr 0.1, every epoch a fresh permutation, the last partial batch kept. The
data (Fashion-MNIST when installed, else random 28x28 bytes) sits on the
device before timing starts, as uint8, and each batch is gathered and
scaled on the device, as wgtrain does. The first epoch is reported apart;
the steady figure is the median of the later ones. On CUDA it times eager
PyTorch and a CUDA-graph version of the same step. wgtrain is timed by
`wgtrain bench --epoch` (JSON lines), with the same threads, batches and
epochs. With --max-steps N each epoch runs N steps and its time is scaled
to a full epoch (for large models), on both sides. With --amp, CUDA rows
also time PyTorch under autocast(float16) with a GradScaler against
wgtrain --precision f16-mixed. TF32 is off throughout. With --matmul it also
compares 4096^3 fp32 products.
"""

import argparse
import gzip
import json
import os
import statistics
import struct
import subprocess
import sys
import time

import torch


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndims = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndims, data[4 : 4 + 4 * ndims])
    body = torch.frombuffer(bytearray(data[4 + 4 * ndims :]), dtype=torch.uint8)
    n = 1
    for d in dims:
        n *= d
    return body[:n].reshape(dims)


def load(folder):
    def find(stem, kind):
        for sep in ("-", "."):
            for gz in ("", ".gz"):
                p = os.path.join(folder, f"{stem}{sep}{kind}-ubyte{gz}")
                if os.path.exists(p):
                    return p
        return None

    xi, yi = find("train-images", "idx3"), find("train-labels", "idx1")
    if folder and xi and yi:
        x, y = read_idx(xi), read_idx(yi)
        return x.reshape(x.shape[0], -1), y.long(), folder
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 256, (60000, 784), dtype=torch.uint8, generator=g)
    y = torch.randint(0, 10, (60000,), generator=g)
    return x, y, "random 28x28 images"


def sync(dev):
    if dev.type == "cuda":
        torch.cuda.synchronize()


HIDDEN = [500]
MAX_STEPS = None


def make_model(dev):
    torch.manual_seed(0)
    widths = [784] + HIDDEN + [10]
    layers = []
    for i, (a, b) in enumerate(zip(widths, widths[1:])):
        layers.append(torch.nn.Linear(a, b))
        if i + 2 < len(widths):
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers).to(dev)


def epoch_batches(n, batch):
    """The batch starts an epoch times, and the factor to a full epoch."""
    starts = list(range(0, n, batch))
    if MAX_STEPS is None or MAX_STEPS >= len(starts):
        return starts, 1.0
    return starts[:MAX_STEPS], len(starts) / MAX_STEPS


def time_eager(x, y, dev, batch, epochs, lr, amp=False):
    model = make_model(dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    scaler = torch.amp.GradScaler("cuda") if amp else None
    n = x.shape[0]
    starts, scale = epoch_batches(n, batch)
    times = []
    for _ in range(epochs):
        sync(dev)
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev)
        for i in starts:
            idx = perm[i : i + batch]
            xb = x[idx].float().mul_(1.0 / 255.0)
            opt.zero_grad(set_to_none=True)
            if amp:
                with torch.autocast("cuda", dtype=torch.float16):
                    loss = loss_fn(model(xb), y[idx])
                scaler.scale(loss).backward()
                scaler.step(opt)
                scaler.update()
            else:
                loss = loss_fn(model(xb), y[idx])
                loss.backward()
                opt.step()
        sync(dev)
        times.append((time.perf_counter() - t0) * scale)
    return times


def time_amp(x, y, dev, batch, epochs, lr):
    return time_eager(x, y, dev, batch, epochs, lr, amp=True)


def time_cuda_graph(x, y, dev, batch, epochs, lr):
    """One captured graph per full batch; the partial last batch runs eagerly."""
    model = make_model(dev)
    opt = torch.optim.SGD(model.parameters(), lr=lr)
    loss_fn = torch.nn.CrossEntropyLoss()
    n = x.shape[0]
    static_idx = torch.zeros(batch, dtype=torch.long, device=dev)

    def step(idx):
        xb = x[idx].float().mul_(1.0 / 255.0)
        loss = loss_fn(model(xb), y[idx])
        opt.zero_grad(set_to_none=False)
        loss.backward()
        opt.step()
        return loss

    s = torch.cuda.Stream()
    s.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(s):
        for _ in range(3):
            step(static_idx)
    torch.cuda.current_stream().wait_stream(s)
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        step(static_idx)
    times = []
    full = n // batch * batch
    starts, scale = epoch_batches(full, batch)
    for _ in range(epochs):
        sync(dev)
        t0 = time.perf_counter()
        perm = torch.randperm(n, device=dev)
        for i in starts:
            static_idx.copy_(perm[i : i + batch])
            graph.replay()
        if full < n and scale == 1.0:
            step(perm[full:])
        sync(dev)
        times.append((time.perf_counter() - t0) * scale)
    return times


def torch_matmul(dev, size, seconds=1.0):
    torch.backends.cuda.matmul.allow_tf32 = False
    a = torch.randn(size, size, device=dev)
    b = torch.randn(size, size, device=dev)
    a @ b
    sync(dev)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        sync(dev)
    dt = (time.perf_counter() - t0) / reps
    return 2 * size**3 / dt / 1e9


def run_wgtrain(args, device, batches, precision="f32"):
    cmd = [
        args.wgtrain, "bench", "--epoch", "--device", device, "--batch", ",".join(map(str, batches)),
        "--epochs", str(args.epochs), "--threads", str(args.threads), "-q",
        "--model", ",".join(map(str, HIDDEN)), "--precision", precision,
    ]
    if MAX_STEPS is not None:
        cmd += ["--max-steps", str(MAX_STEPS)]
    if args.data:
        cmd += ["--data", args.data]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return {r["batch"]: r for r in map(json.loads, out.splitlines()) if r.get("bench") == "epoch"}


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--wgtrain", default="target/release/wgtrain")
    ap.add_argument("--batch", default="64,256")
    ap.add_argument("--epochs", type=int, default=3, help="first + steady epochs (at least 2)")
    ap.add_argument("--threads", type=int, default=2, help="CPU threads for both")
    ap.add_argument("--devices", default="auto", help="cpu, cuda, or auto (cpu plus cuda if present)")
    ap.add_argument("--wgtrain-gpu", default="gpu", help="--device given to wgtrain for the GPU rows")
    ap.add_argument("--model", default="500", help="hidden widths of the one model, comma-separated")
    ap.add_argument("--max-steps", type=int, help="time N steps an epoch, scaled to a full epoch")
    ap.add_argument("--amp", action="store_true", help="also autocast(float16) vs --precision f16-mixed on CUDA")
    ap.add_argument("--matmul", action="store_true", help="also compare 4096^3 matmul on CUDA")
    args = ap.parse_args()
    global HIDDEN, MAX_STEPS
    HIDDEN = [int(w) for w in args.model.split(",")]
    MAX_STEPS = args.max_steps
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    args.epochs = max(args.epochs, 2)
    batches = [int(b) for b in args.batch.split(",")]
    devices = args.devices.split(",") if args.devices != "auto" else ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    torch.set_num_threads(args.threads)

    x_cpu, y_cpu, source = load(args.data)
    if not os.path.isdir(args.data or ""):
        args.data = None
    print(f"torch {torch.__version__}, {args.threads} CPU threads, data: {source}, "
          f"model {'-'.join(map(str, [784] + HIDDEN + [10]))}", file=sys.stderr)
    rows = []
    for devname in devices:
        dev = torch.device(devname)
        x, y = x_cpu.to(dev), y_cpu.to(dev)
        wdev = "cpu" if devname == "cpu" else args.wgtrain_gpu
        ours = run_wgtrain(args, wdev, batches)
        ours16 = run_wgtrain(args, wdev, batches, "f16-mixed") if args.amp and dev.type == "cuda" else {}
        for batch in batches:
            variants = [("eager", time_eager, ours)]
            if dev.type == "cuda":
                variants.append(("cuda graph", time_cuda_graph, ours))
                if args.amp:
                    variants.append(("amp f16", time_amp, ours16))
            for vname, fn, theirs in variants:
                t = fn(x, y, dev, batch, args.epochs, 0.1)
                steady = statistics.median(t[1:])
                w = theirs.get(batch)
                rows.append(
                    {
                        "model": "-".join(map(str, [784] + HIDDEN + [10])),
                        "device": devname,
                        "batch": batch,
                        "pytorch": vname,
                        "pytorch_first_s": t[0],
                        "pytorch_steady_s": steady,
                        "wgtrain_device": w["device"] if w else None,
                        "wgtrain_first_s": w["first_epoch_s"] if w else None,
                        "wgtrain_steady_s": w["steady_epoch_s"] if w else None,
                        "ratio": (w["steady_epoch_s"] / steady) if w else None,
                    }
                )
    print(f"{'device':<6} {'batch':>5} {'pytorch':<11} {'torch first':>11} {'torch steady':>12} "
          f"{'wgtrain first':>13} {'wgtrain steady':>14} {'wgtrain/torch':>13}")
    for r in rows:
        fmt = lambda v: f"{v:.3f}" if v is not None else "-"
        print(f"{r['device']:<6} {r['batch']:>5} {r['pytorch']:<11} {fmt(r['pytorch_first_s']):>11} "
              f"{fmt(r['pytorch_steady_s']):>12} {fmt(r['wgtrain_first_s']):>13} {fmt(r['wgtrain_steady_s']):>14} "
              f"{fmt(r['ratio']):>13}")
    if args.matmul and torch.cuda.is_available():
        g = torch_matmul(torch.device("cuda"), 4096)
        out = subprocess.run(
            [args.wgtrain, "bench", "--matmul", "--device", args.wgtrain_gpu, "--square", "4096", "-q"],
            check=True, capture_output=True, text=True,
        ).stdout
        ours = [r for r in map(json.loads, out.splitlines()) if r.get("m") == 4096]
        w = ours[0]["gflops"] if ours else float("nan")
        print(f"matmul 4096^3 fp32: cuBLAS (TF32 off) {g:.0f} GFLOP/s, wgtrain {w:.0f} GFLOP/s, ratio {w / g:.2f}")
    with open(os.environ.get("COMPARE_JSON", os.devnull), "w") as f:
        json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
