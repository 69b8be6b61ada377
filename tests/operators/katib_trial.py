"""A training script as a Katib trial image runs it: parameters on the command line, metrics
printed (StdOut), appended to a file (File) or pushed (Push); nothing of hypersweep's API used
unless pushing.

The accuracy peaks at lr = 0.01 and grows over the epochs; ``--fade-after N`` makes trials
numbered N and later learn ten times worse (how the early-stopping test gets trials that the
median rule must stop, whatever order the sampler draws parameters in).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time


def accuracy(lr: float, layers: int, epoch: int, epochs: int) -> float:
    quality = 1.0 - abs(math.log10(lr) + 2.0) / 3.0 - 0.02 * (layers - 2) ** 2
    return round(max(quality, 0.01) * (0.5 + 0.5 * epoch / epochs), 6)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--file")
    parser.add_argument("--push", action="store_true")
    parser.add_argument("--fade-after", type=int)
    parser.add_argument("--name", default="")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per epoch")
    args = parser.parse_args()
    trial = int(os.environ.get("HYPERSWEEP_TRIAL_NUMBER", "0"))
    fade = 0.1 if args.fade_after is not None and trial >= args.fade_after else 1.0
    print(f"run {args.name} starts: lr={args.lr} layers={args.layers}", flush=True)
    for epoch in range(1, args.epochs + 1):
        value = accuracy(args.lr, args.layers, epoch, args.epochs) * fade
        train = min(value + 0.05, 1.0)
        line = f"epoch {epoch}: Train-accuracy={train:.6f} Validation-accuracy={value:.6f}"
        if args.push:
            from hypersweep.katib import report_metrics

            report_metrics({"Train-accuracy": train, "Validation-accuracy": value})
        elif args.file:
            with open(args.file, "a") as handle:
                handle.write(line + "\n")
        else:
            print(line, flush=True)
        time.sleep(args.sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
