#!/usr/bin/env python3
"""Run one training recipe in PyTorch and in wgtrain, in one run, and print
both test accuracies and wall times.

    .venv/bin/python scripts/compare_recipe.py            # the README's recipe
    .venv/bin/python scripts/compare_recipe.py --only torch --epochs 5

The recipe's flags are wgtrain's (`wgtrain train --help`), passed to both:
an MLP of --hidden ReLU layers with dropout after each, cross-entropy with
label smoothing, SGD (momentum, Nesterov) or AdamW, a cosine or one-cycle
schedule stepped per step with a linear warm-up, every training image
shifted by up to --shift pixels (background fill), a class-stratified
validation split that picks the epoch, and the test set evaluated once on
that epoch's weights. PyTorch runs on the CPU with --threads threads and
wgtrain with `--device cpu --threads`, so both use the same cores.

The two runs draw different initial weights, shuffles, masks and shifts
(same distributions), so their accuracies differ by run-to-run noise; the
note quotes both.
"""

import argparse
import copy
import gzip
import math
import os
import re
import struct
import subprocess
import sys
import time

import torch
import torch.nn as nn
import torch.nn.functional as F

# The README's Fashion-MNIST recipe.
RECIPE = dict(
    hidden="1024,1024",
    epochs=80,
    batch=128,
    optimizer="adamw",
    lr=1e-3,
    momentum=0.0,
    weight_decay=0.05,
    schedule="cosine",
    warmup_epochs=1,
    dropout=0.1,
    shift=1,
    label_smoothing=0.0,
    val_split=0.1,
    seed=0,
)


def read_idx(path):
    opener = gzip.open if path.endswith(".gz") else open
    with opener(path, "rb") as f:
        data = f.read()
    magic = struct.unpack(">I", data[:4])[0]
    ndims = magic & 0xFF
    dims = struct.unpack(">" + "I" * ndims, data[4 : 4 + 4 * ndims])
    body = torch.frombuffer(bytearray(data[4 + 4 * ndims :]), dtype=torch.uint8)
    n = math.prod(dims)
    return body[:n].reshape(dims)


def load(folder, split):
    stem = "train" if split == "train" else "t10k"
    for sep in ("-", "."):
        for gz in ("", ".gz"):
            xi = os.path.join(folder, f"{stem}-images{sep}idx3-ubyte{gz}")
            yi = os.path.join(folder, f"{stem}-labels{sep}idx1-ubyte{gz}")
            if os.path.exists(xi) and os.path.exists(yi):
                return read_idx(xi), read_idx(yi).long()
    sys.exit(f"no {stem} images and labels in IDX format under {folder}")


def stratified_split(y, fraction, seed):
    """Per class, round(fraction x its count) rows (at least 1, leaving at
    least 1) held out, chosen by a seeded permutation."""
    g = torch.Generator().manual_seed(seed)
    val = []
    for c in y.unique():
        rows = (y == c).nonzero().flatten()
        k = min(max(round(fraction * len(rows)), 1), len(rows) - 1)
        val.append(rows[torch.randperm(len(rows), generator=g)[:k]])
    val = torch.cat(val)
    keep = torch.ones(len(y), dtype=torch.bool)
    keep[val] = False
    return keep.nonzero().flatten(), val


def shifted(x, n, g):
    """Each image of x [b, h, w] translated by (dy, dx) uniform in [-n, n],
    vacated pixels 0."""
    if n == 0:
        return x
    b, h, w = x.shape
    pad = F.pad(x, (n, n, n, n))
    dy = torch.randint(-n, n + 1, (b,), generator=g)
    dx = torch.randint(-n, n + 1, (b,), generator=g)
    ys = (torch.arange(h)[None, :] - dy[:, None] + n)[:, :, None].expand(b, h, w)
    xs = (torch.arange(w)[None, :] - dx[:, None] + n)[:, None, :].expand(b, h, w)
    return pad[torch.arange(b)[:, None, None], ys, xs]


def lr_at(r, step, steps_per_epoch):
    """The learning rate of 0-based step `step`, as wgtrain's schedules
    compute it (src/optim/schedule.rs)."""
    total = r["epochs"] * steps_per_epoch
    warm = r["warmup_epochs"] * steps_per_epoch if r["schedule"] != "one-cycle" else 0
    step = min(step, total - 1)
    if step < warm:
        return r["lr"] * (step + 1) / (warm + 1)
    t, steps = step - warm, total - warm
    if r["schedule"] == "cosine":
        return r["lr"] * (1 + math.cos(math.pi * t / steps)) / 2
    if r["schedule"] == "one-cycle":
        lo = r["lr"] / 25
        end = lo / 1e4
        up, down = 0.3 * steps - 1, steps - 1

        def anneal(a, b, f):
            return b + (a - b) / 2 * (1 + math.cos(math.pi * f))

        return anneal(lo, r["lr"], t / up) if t <= up else anneal(r["lr"], end, (t - up) / (down - up))
    return r["lr"]


def run_torch(r, folder, threads):
    torch.set_num_threads(threads)
    torch.manual_seed(r["seed"])
    x, y = load(folder, "train")
    xt, yt = load(folder, "test")
    tr, va = stratified_split(y, r["val_split"], r["seed"])
    xs = x.float() / 255.0
    xv, yv = xs[va].reshape(len(va), -1), y[va]
    xtr, ytr = xs[tr], y[tr]
    xte = (xt.float() / 255.0).reshape(len(yt), -1)
    sizes = [784] + [int(h) for h in r["hidden"].split(",")] + [10]
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        if i + 2 < len(sizes):
            layers += [nn.ReLU(), nn.Dropout(r["dropout"])]
    model = nn.Sequential(*layers)
    if r["optimizer"] == "adamw":
        opt = torch.optim.AdamW(model.parameters(), lr=r["lr"], weight_decay=r["weight_decay"])
    else:
        opt = torch.optim.SGD(
            model.parameters(), lr=r["lr"], momentum=r["momentum"], nesterov=r["momentum"] > 0,
            weight_decay=r["weight_decay"],
        )
    loss_fn = nn.CrossEntropyLoss(label_smoothing=r["label_smoothing"])
    g = torch.Generator().manual_seed(r["seed"] + 1)
    n, batch = len(ytr), r["batch"]
    spe = math.ceil(n / batch)
    best = (math.inf, None, 0)
    start = time.perf_counter()
    step = 0
    for epoch in range(1, r["epochs"] + 1):
        model.train()
        perm = torch.randperm(n, generator=g)
        for i in range(spe):
            idx = perm[i * batch : (i + 1) * batch]
            xb = shifted(xtr[idx], r["shift"], g).reshape(len(idx), -1)
            for group in opt.param_groups:
                group["lr"] = lr_at(r, step, spe)
            opt.zero_grad(set_to_none=True)
            loss_fn(model(xb), ytr[idx]).backward()
            opt.step()
            step += 1
        model.eval()
        with torch.no_grad():
            zv = model(xv)
            vloss = F.cross_entropy(zv, yv).item()
            vacc = (zv.argmax(1) == yv).float().mean().item()
        if vloss < best[0]:
            best = (vloss, copy.deepcopy(model.state_dict()), epoch)
        print(f"  torch epoch {epoch}: validation loss {vloss:.4f} acc {vacc:.4f}", file=sys.stderr)
    model.load_state_dict(best[1])
    model.eval()
    with torch.no_grad():
        acc = (model(xte).argmax(1) == yt).float().mean().item()
    return acc, best[2], time.perf_counter() - start


def run_wgtrain(r, folder, threads, binary):
    args = [
        binary, "train", "--device", "cpu", "--threads", str(threads), "--data", folder,
        "--hidden", r["hidden"], "--epochs", str(r["epochs"]), "--batch", str(r["batch"]),
        "--optimizer", r["optimizer"], "--lr", str(r["lr"]), "--weight-decay", str(r["weight_decay"]),
        "--schedule", r["schedule"], "--dropout", str(r["dropout"]), "--shift", str(r["shift"]),
        "--label-smoothing", str(r["label_smoothing"]), "--val-split", str(r["val_split"]),
        "--seed", str(r["seed"]), "--log-every", "0",
    ]
    if r["schedule"] != "one-cycle" and r["warmup_epochs"] > 0:
        args += ["--warmup-epochs", str(r["warmup_epochs"])]
    if r["optimizer"] == "sgd" and r["momentum"] > 0:
        args += ["--momentum", str(r["momentum"]), "--nesterov"]
    print("  " + " ".join(args), file=sys.stderr)
    start = time.perf_counter()
    out = subprocess.run(args, capture_output=True, text=True)
    secs = time.perf_counter() - start
    if out.returncode != 0:
        sys.exit(f"wgtrain failed:\n{out.stderr}")
    m = re.search(r"test accuracy ([0-9.]+)%.*model of epoch (\d+)", out.stderr)
    if not m:
        sys.exit(f"no test accuracy in wgtrain's log:\n{out.stderr}")
    return float(m.group(1)) / 100, int(m.group(2)), secs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--wgtrain", default="target/release/wgtrain")
    p.add_argument("--only", choices=["torch", "wgtrain"])
    for k, v in RECIPE.items():
        p.add_argument("--" + k.replace("_", "-"), type=type(v), default=v)
    a = p.parse_args()
    r = {k: getattr(a, k) for k in RECIPE}
    print("recipe: " + " ".join(f"{k}={v}" for k, v in r.items()))
    if a.only != "torch":
        acc, epoch, secs = run_wgtrain(r, a.data, a.threads, a.wgtrain)
        print(f"wgtrain: test accuracy {acc:.4f} (epoch {epoch}, chosen on validation), {secs:.0f} s")
    if a.only != "wgtrain":
        acc, epoch, secs = run_torch(r, a.data, a.threads)
        print(f"pytorch {torch.__version__}: test accuracy {acc:.4f} (epoch {epoch}, chosen on validation), {secs:.0f} s")


if __name__ == "__main__":
    main()
