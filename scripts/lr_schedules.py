#!/usr/bin/env python3
"""Write tests/fixtures/lr_schedules.json: the learning rate of every step of
a few schedules, as torch.optim.lr_scheduler computes them, for the unit
tests of src/optim/schedule.rs.

Each schedule is stepped once per training step, as wgtrain steps its own:
StepLR with step_size = N epochs' worth of steps, CosineAnnealingLR with
T_max and OneCycleLR with total_steps = the steps after the warm-up, and the
warm-up as LinearLR(start_factor=1/(W+1), total_iters=W) chained to the
schedule by SequentialLR(milestones=[W]). torch computes most of these
recursively (each rate from the previous one), wgtrain in closed form, so
the two agree to rounding, not bit for bit.

    python3 -m venv .venv && .venv/bin/pip install torch
    .venv/bin/python scripts/lr_schedules.py
"""

import json
import math
import os
import warnings

import torch
from torch.optim.lr_scheduler import (
    ConstantLR,
    CosineAnnealingLR,
    LinearLR,
    OneCycleLR,
    SequentialLR,
    StepLR,
)

# Each case: the flags' values, and the run's length.
CASES = [
    {"schedule": "constant", "lr": 0.1, "steps_per_epoch": 7, "epochs": 3, "warmup_steps": 5},
    {"schedule": "step", "lr": 0.1, "lr_step_epochs": 1, "lr_gamma": 0.5, "steps_per_epoch": 7, "epochs": 4},
    {
        "schedule": "step",
        "lr": 0.05,
        "lr_step_epochs": 2,
        "lr_gamma": 0.3,
        "steps_per_epoch": 5,
        "epochs": 7,
        "warmup_epochs": 1,
    },
    {"schedule": "step", "lr": 0.2, "lr_step_epochs": 1, "lr_gamma": 0.7, "steps_per_epoch": 4, "epochs": 5, "warmup_steps": 3},
    {"schedule": "cosine", "lr": 0.1, "lr_min": 0.0, "steps_per_epoch": 9, "epochs": 3},
    {"schedule": "cosine", "lr": 0.1, "lr_min": 0.001, "steps_per_epoch": 23, "epochs": 2, "warmup_steps": 5},
    {"schedule": "one-cycle", "lr": 0.1, "steps_per_epoch": 10, "epochs": 3},
    {"schedule": "one-cycle", "lr": 0.3, "steps_per_epoch": 23, "epochs": 5, "warmup_steps": 7},
    {"schedule": "one-cycle", "lr": 0.01, "steps_per_epoch": 1, "epochs": 2},
]


def rates(case):
    spe, epochs = case["steps_per_epoch"], case["epochs"]
    total = spe * epochs
    warmup = case.get("warmup_steps", 0) + case.get("warmup_epochs", 0) * spe
    main_steps = total - warmup
    lr = case["lr"]
    kind = case["schedule"]
    # One-cycle starts from max_lr / div_factor and the warm-up climbs to
    # that rate, so the optimizer's own rate is set to it.
    p = torch.nn.Parameter(torch.zeros(1))
    opt = torch.optim.SGD([p], lr=lr / 25.0 if kind == "one-cycle" else lr)
    if kind == "constant":
        main = ConstantLR(opt, factor=1.0, total_iters=0)
    elif kind == "step":
        main = StepLR(opt, step_size=case["lr_step_epochs"] * spe, gamma=case["lr_gamma"])
    elif kind == "cosine":
        main = CosineAnnealingLR(opt, T_max=main_steps, eta_min=case["lr_min"])
    elif kind == "one-cycle":
        main = OneCycleLR(opt, max_lr=lr, total_steps=main_steps, cycle_momentum=False)
    else:
        raise ValueError(kind)
    if warmup:
        warm = LinearLR(opt, start_factor=1.0 / (warmup + 1), end_factor=1.0, total_iters=warmup)
        sched = SequentialLR(opt, [warm, main], milestones=[warmup])
    else:
        sched = main
    out = []
    for _ in range(total):
        out.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    return out


def main():
    warnings.simplefilter("ignore")
    cases = []
    for case in CASES:
        r = rates(case)
        assert all(math.isfinite(x) and x > 0 for x in r), case
        cases.append({**case, "rates": r})
    path = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "lr_schedules.json")
    with open(path, "w") as f:
        json.dump({"torch": torch.__version__, "cases": cases}, f, indent=1)
        f.write("\n")
    print(f"wrote {len(cases)} schedules to {os.path.normpath(path)}")


if __name__ == "__main__":
    main()
