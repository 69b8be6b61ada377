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


def _write_event(directory: str, step: int, scalars: dict[str, float]) -> None:
    """One TF-event record (TFRecord framing) with ``scalars`` at ``step``, as a TensorFlow
    summary writer appends it (CRCs included; written without TensorFlow, which is slow to
    import)."""
    import struct

    from tensorboard.compat.proto import event_pb2, summary_pb2

    values = [summary_pb2.Summary.Value(tag=t, simple_value=v) for t, v in scalars.items()]
    event = event_pb2.Event(
        step=step, wall_time=time.time(), summary=summary_pb2.Summary(value=values)
    )
    data = event.SerializeToString()
    header = struct.pack("<Q", len(data))
    os.makedirs(directory, exist_ok=True)
    path = os.path.join(directory, "events.out.tfevents.trial")
    with open(path, "ab") as handle:
        handle.write(header + _masked_crc(header) + data + _masked_crc(data))


def _masked_crc(data: bytes) -> bytes:
    import struct

    crc = _crc32c(data)
    return struct.pack("<I", (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF)


def _crc32c(data: bytes) -> int:
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, required=True)
    parser.add_argument("--layers", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=5)
    parser.add_argument("--file")
    parser.add_argument("--push", action="store_true")
    parser.add_argument("--tfevents", help="a directory to write TF event files to")
    parser.add_argument("--fade-after", type=int)
    parser.add_argument("--name", default="")
    parser.add_argument("--sleep", type=float, default=0.0, help="seconds per epoch")
    parser.add_argument(
        "--budget-matters",
        action="store_true",
        help="a longer run ends better (as Hyperband's budgets assume)",
    )
    parser.add_argument(
        "--bare", action="store_true", help="fail if this interpreter can import hypersweep"
    )
    args = parser.parse_args()
    if args.bare:
        # The relay that runs this script must be this very interpreter, which must not be
        # able to import hypersweep (as in a Katib trial image).
        relay = os.path.realpath(f"/proc/{os.getppid()}/exe")
        if relay != os.path.realpath(sys.executable):
            print(f"the relay runs under {relay}, not {sys.executable}", flush=True)
            return 7
        try:
            import hypersweep
        except ImportError:
            print("hypersweep is not importable here", flush=True)
        else:
            print(f"hypersweep is importable from {hypersweep.__file__}", flush=True)
            return 7
    trial = int(os.environ.get("HYPERSWEEP_TRIAL_NUMBER", "0"))
    fade = 0.1 if args.fade_after is not None and trial >= args.fade_after else 1.0
    print(f"run {args.name} starts: lr={args.lr} layers={args.layers}", flush=True)
    for epoch in range(1, args.epochs + 1):
        value = accuracy(args.lr, args.layers, epoch, args.epochs) * fade
        if args.budget_matters:
            value = round(value * args.epochs / (args.epochs + 1), 6)
        train = min(value + 0.05, 1.0)
        line = f"epoch {epoch}: Train-accuracy={train:.6f} Validation-accuracy={value:.6f}"
        if args.push:
            from hypersweep.katib import report_metrics

            report_metrics({"Train-accuracy": train, "Validation-accuracy": value})
        elif args.tfevents:
            _write_event(
                args.tfevents, epoch, {"train/Train-accuracy": train, "Validation-accuracy": value}
            )
        elif args.file:
            with open(args.file, "a") as handle:
                handle.write(line + "\n")
        else:
            print(line, flush=True)
        time.sleep(args.sleep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
