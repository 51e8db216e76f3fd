#!/usr/bin/env python3
"""Knowledge distillation in PyTorch from wgtrain teacher files: an
independent replication of `wgtrain distill` (issue 13).

    python3 scripts/distill_torch.py --teacher teacher.safetensors \
        --data /usr/share/datasets/fashion-mnist --runs alone,4:0.7,2:0.5

Trains a student (784-128-10 by default) once per run of --runs: `alone`
(plain cross-entropy) or `T:ALPHA` (distilled at temperature T with weight
ALPHA on the soft targets), every run with the same seed, so the same
initialisation, validation split and shuffles. The recipe is wgtrain's
`--optimizer adamw --lr 0.001 --schedule cosine --epochs 20 --val-split 0.1`
with its defaults: batch 64 (the last, partial batch kept), no weight decay,
betas (0.9, 0.999), eps 1e-8, the cosine stepped per update to 0, inputs
scaled by 1/255, torch's nn.Linear initialisation (Kaiming-uniform, as
wgtrain's).

The distillation loss is written with torch's own functions and autograd,
not from wgtrain's formula or gradient:

    alpha * T^2 * F.kl_div(log_softmax(z / T), p_T, 'batchmean')
        + (1 - alpha) * F.cross_entropy(z, y)

where p_T is the mean over the --teacher files of softmax(teacher(x) / T),
each teacher applying the preprocessing recorded in its file
(x * input_scale + input_offset) to the raw pixels of the student's batch
(the same shifted images with --shift). Each run prints the test accuracy
of the epoch with the best validation loss (wgtrain's default choice) and
of the last epoch.
"""

import argparse
import math
import os
import sys
import time

import torch
import torch.nn.functional as F

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from check_pytorch import find, load_model, read_idx  # noqa: E402


def load_split(folder, stem):
    x = read_idx(find(folder, f"{stem}-images", "idx3")).float()
    y = read_idx(find(folder, f"{stem}-labels", "idx1")).long()
    return x.reshape(x.shape[0], -1), y


def stratified_holdout(y, fraction, gen):
    """Indices (train, validation): `fraction` of each class held out."""
    train, val = [], []
    for c in range(int(y.max()) + 1):
        idx = (y == c).nonzero().flatten()
        idx = idx[torch.randperm(len(idx), generator=gen)]
        k = round(len(idx) * fraction)
        val.append(idx[:k])
        train.append(idx[k:])
    return torch.cat(train).sort().values, torch.cat(val).sort().values


def shift_images(x, max_shift, side, gen):
    """Each row (raw pixels of a side x side image) translated by a random
    (dx, dy) in [-max_shift, max_shift]^2, filled with zeros."""
    if max_shift == 0:
        return x
    n = x.shape[0]
    img = x.reshape(n, side, side)
    pad = F.pad(img, (max_shift, max_shift, max_shift, max_shift))
    d = torch.randint(0, 2 * max_shift + 1, (n, 2), generator=gen)
    rows = torch.arange(side)
    ys = (rows[None, :] + d[:, 1:2])[:, :, None]  # [n, side, 1]
    xs = (rows[None, :] + d[:, 0:1])[:, None, :]  # [n, 1, side]
    out = pad[torch.arange(n)[:, None, None], ys, xs]
    return out.reshape(n, -1)


def mlp(sizes):
    layers = []
    for i in range(len(sizes) - 1):
        layers.append(torch.nn.Linear(sizes[i], sizes[i + 1]))
        if i < len(sizes) - 2:
            layers.append(torch.nn.ReLU())
    return torch.nn.Sequential(*layers)


def evaluate(net, x, y, scale):
    with torch.no_grad():
        z = torch.cat([net(x[i : i + 4096] * scale) for i in range(0, len(x), 4096)])
    return F.cross_entropy(z, y).item(), (z.argmax(1) == y).float().mean().item()


def teacher_probs(teachers, raw, temperature):
    """Mean over the teachers of softmax(teacher(preprocessed raw) / T)."""
    p = 0
    with torch.no_grad():
        for net, meta in teachers:
            x = raw * float(meta["input_scale"]) + float(meta["input_offset"])
            p = p + F.softmax(net(x) / temperature, dim=1)
    return p / len(teachers)


def train_run(args, run, data, teachers):
    (xtr, ytr), (xva, yva), (xte, yte) = data
    scale = 1.0 / 255.0
    torch.manual_seed(args.seed)
    sizes = [xtr.shape[1]] + [int(h) for h in args.hidden.split(",")] + [10]
    net = mlp(sizes)
    opt = torch.optim.AdamW(net.parameters(), lr=args.lr, weight_decay=0.0, betas=(0.9, 0.999), eps=1e-8)
    n = len(xtr)
    steps_per_epoch = math.ceil(n / args.batch)
    total = steps_per_epoch * args.epochs
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: (1 + math.cos(math.pi * t / total)) / 2)
    if run == "alone":
        temperature, alpha = 1.0, 0.0
    else:
        temperature, alpha = (float(v) for v in run.split(":"))
    cached = None
    if alpha > 0 and args.shift == 0:
        # No shift: the teachers see fixed images, so compute their
        # probabilities once (the same values a per-batch pass gives).
        cached = torch.cat([teacher_probs(teachers, xtr[i : i + 4096], temperature) for i in range(0, n, 4096)])
    gen = torch.Generator().manual_seed(args.seed + 1)
    side = int(math.isqrt(xtr.shape[1]))
    best = (math.inf, None, None)
    for epoch in range(1, args.epochs + 1):
        net.train()
        perm = torch.randperm(n, generator=gen)
        t0 = time.time()
        for b in range(steps_per_epoch):
            idx = perm[b * args.batch : (b + 1) * args.batch]
            raw = shift_images(xtr[idx], args.shift, side, gen)
            z = net(raw * scale)
            loss = F.cross_entropy(z, ytr[idx])
            if alpha > 0:
                p = cached[idx] if cached is not None else teacher_probs(teachers, raw, temperature)
                kl = F.kl_div(F.log_softmax(z / temperature, dim=1), p, reduction="batchmean")
                loss = alpha * temperature**2 * kl + (1 - alpha) * loss
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
        net.eval()
        vl, va = evaluate(net, xva, yva, scale)
        tl, ta = evaluate(net, xte, yte, scale)
        if vl < best[0]:
            best = (vl, epoch, ta)
        if args.verbose:
            print(f"  {run} epoch {epoch}: val loss {vl:.4f} acc {va:.4f}  test acc {ta:.4f}  ({time.time() - t0:.1f}s)")
    return best[2], best[1], ta


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--teacher", default="", help="teacher model files, comma-separated")
    ap.add_argument("--data", default="/usr/share/datasets/fashion-mnist")
    ap.add_argument("--runs", default="alone,4:0.7", help="comma-separated: alone or T:ALPHA")
    ap.add_argument("--hidden", default="128")
    ap.add_argument("--epochs", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--val-split", type=float, default=0.1)
    ap.add_argument("--shift", type=int, default=0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--verbose", action="store_true")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    xtr, ytr = load_split(args.data, "train")
    xte, yte = load_split(args.data, "t10k")
    tr, va = stratified_holdout(ytr, args.val_split, torch.Generator().manual_seed(args.seed))
    data = ((xtr[tr], ytr[tr]), (xtr[va], ytr[va]), (xte, yte))
    paths = [p for p in args.teacher.split(",") if p]
    teachers = [load_model(p) for p in paths]
    for (net, meta), p in zip(teachers, paths):
        with torch.no_grad():
            z = net(xte * float(meta["input_scale"]) + float(meta["input_offset"]))
        print(f"teacher {p}: test accuracy {(z.argmax(1) == yte).float().mean().item():.4f}")
    if any(r != "alone" for r in args.runs.split(",")) and not teachers:
        sys.exit("--teacher: a distilled run needs at least one teacher")
    print(
        f"student {xtr.shape[1]}-{args.hidden.replace(',', '-')}-10, adamw lr {args.lr} cosine, "
        f"{args.epochs} epochs, batch {args.batch}, val split {args.val_split}, shift {args.shift}, seed {args.seed}"
    )
    for run in args.runs.split(","):
        t0 = time.time()
        best_acc, best_epoch, last_acc = train_run(args, run, data, teachers)
        print(
            f"{run:>8}: test accuracy {best_acc:.4f} (best validation loss, epoch {best_epoch})  "
            f"{last_acc:.4f} (last epoch)  [{time.time() - t0:.0f}s]",
            flush=True,
        )


if __name__ == "__main__":
    main()
