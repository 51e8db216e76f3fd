#!/usr/bin/env python3
"""Write tests/fixtures/optim_trajectories.json: PyTorch's torch.optim
trajectories of a small fixed MLP, which tests/optim_trajectories.rs replays
on wgtrain's CPU and GPU backends.

The network is 6-5-3 (Linear, ReLU, Linear) with CrossEntropyLoss (mean;
label smoothing in some cases, gradient clipping in others),
trained full-batch on 8 fixed examples for 100 steps. The initial weights
and the data come from closed-form expressions (no RNG), and are written
into the fixture, so the test needs nothing else.

Each case records the mean loss before every step (the loss of the step's
forward pass) and the parameters after steps 1, 10 and 100, from a float32
run (what wgtrain computes). The same run in float64 is recorded as
`spread_f32_f64`: the largest parameter difference between the two, a
measure of how far f32 rounding alone moves a trajectory of this length.

Usage: .venv/bin/python scripts/optim_fixtures.py [OUT]
"""

import json
import math
import sys

import torch

STEPS = 100
SNAPSHOTS = [1, 10, 100]
N, DIM, HIDDEN, CLASSES = 8, 6, 5, 3

# name, constructor, kwargs (lr is part of them), and regularization:
# label_smoothing (CrossEntropyLoss's) and clip_grad_norm
# (torch.nn.utils.clip_grad_norm_ between backward and step).
CASES = [
    ("sgd_momentum", "SGD", {"lr": 0.1, "momentum": 0.9}, {}),
    ("sgd_nesterov_wd", "SGD", {"lr": 0.1, "momentum": 0.9, "nesterov": True, "weight_decay": 0.01}, {}),
    ("sgd_wd", "SGD", {"lr": 0.2, "weight_decay": 0.05}, {}),
    ("adam", "Adam", {"lr": 0.01}, {}),
    ("adam_wd", "Adam", {"lr": 0.01, "betas": (0.8, 0.99), "eps": 1e-6, "weight_decay": 0.01}, {}),
    ("adamw", "AdamW", {"lr": 0.01, "weight_decay": 0.1}, {}),
    ("sgd_clip", "SGD", {"lr": 0.5}, {"clip_grad_norm": 0.1}),
    ("sgd_momentum_smoothing", "SGD", {"lr": 0.1, "momentum": 0.9}, {"label_smoothing": 0.2}),
    (
        "adam_wd_clip_smoothing",
        "Adam",
        {"lr": 0.01, "weight_decay": 0.05},
        {"clip_grad_norm": 0.05, "label_smoothing": 0.1},
    ),
]


def fixed_problem():
    """Closed-form initial parameters (nn.Linear layout) and data."""
    w1 = [[0.4 * math.sin(1.7 * o + 0.9 * i + 0.3) for i in range(DIM)] for o in range(HIDDEN)]
    b1 = [0.1 * math.cos(2.1 * o) for o in range(HIDDEN)]
    w2 = [[0.5 * math.cos(1.3 * o - 0.7 * i + 0.2) for i in range(HIDDEN)] for o in range(CLASSES)]
    b2 = [0.05 * (o - 1) for o in range(CLASSES)]
    x = [[math.sin(0.37 * (r * DIM + c) + 0.5 * r) for c in range(DIM)] for r in range(N)]
    y = [(3 * r + 1) % CLASSES for r in range(N)]
    return (w1, b1, w2, b2), x, y


def run(kind, kwargs, regular, dtype):
    (w1, b1, w2, b2), x, y = fixed_problem()
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(DIM, HIDDEN), torch.nn.ReLU(), torch.nn.Linear(HIDDEN, CLASSES))
    model = model.to(dtype)
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor(w1, dtype=dtype))
        model[0].bias.copy_(torch.tensor(b1, dtype=dtype))
        model[2].weight.copy_(torch.tensor(w2, dtype=dtype))
        model[2].bias.copy_(torch.tensor(b2, dtype=dtype))
    xs = torch.tensor(x, dtype=dtype)
    ys = torch.tensor(y, dtype=torch.long)
    # The single-tensor implementations, whose order of operations the
    # wgtrain kernels follow.
    opt = getattr(torch.optim, kind)(model.parameters(), foreach=False, **kwargs)
    loss_fn = torch.nn.CrossEntropyLoss(label_smoothing=regular.get("label_smoothing", 0.0))
    clip = regular.get("clip_grad_norm")
    losses, snaps = [], {}
    clipped = 0
    for step in range(1, STEPS + 1):
        opt.zero_grad()
        loss = loss_fn(model(xs), ys)
        loss.backward()
        if clip is not None:
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), clip, foreach=False)
            clipped += int(norm.item() > clip)
        opt.step()
        losses.append(loss.item())
        if step in SNAPSHOTS:
            snaps[str(step)] = params(model)
    if clip is not None:
        print(f"  {kind} {kwargs}: {clipped} of {STEPS} steps clipped")
    return losses, snaps


def params(model):
    return {
        "w1": model[0].weight.detach().double().flatten().tolist(),
        "b1": model[0].bias.detach().double().tolist(),
        "w2": model[2].weight.detach().double().flatten().tolist(),
        "b2": model[2].bias.detach().double().tolist(),
    }


def main():
    out = sys.argv[1] if len(sys.argv) > 1 else "tests/fixtures/optim_trajectories.json"
    (w1, b1, w2, b2), x, y = fixed_problem()
    cases = []
    for name, kind, kwargs, regular in CASES:
        losses, snaps = run(kind, kwargs, regular, torch.float32)
        _, snaps64 = run(kind, kwargs, regular, torch.float64)
        spread = max(
            abs(a - b)
            for s in snaps
            for t in snaps[s]
            for a, b in zip(snaps[s][t], snaps64[s][t])
        )
        opts = dict(kwargs, **regular)
        if "betas" in opts:
            opts["betas"] = list(opts["betas"])
        cases.append(
            {
                "name": name,
                "optimizer": kind.lower(),
                "options": opts,
                "losses": losses,
                "params": snaps,
                "spread_f32_f64": spread,
            }
        )
        print(f"{name}: loss {losses[0]:.4f} -> {losses[-1]:.4f}, f32/f64 spread {spread:.2e}")
    fixture = {
        "generator": "scripts/optim_fixtures.py",
        "torch": torch.__version__,
        "sizes": [DIM, HIDDEN, CLASSES],
        "steps": STEPS,
        "init": {
            "w1": [v for row in w1 for v in row],
            "b1": b1,
            "w2": [v for row in w2 for v in row],
            "b2": b2,
        },
        "features": [v for row in x for v in row],
        "labels": y,
        "cases": cases,
    }
    with open(out, "w") as f:
        json.dump(fixture, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
