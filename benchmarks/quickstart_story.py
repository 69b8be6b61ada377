"""The quickstart from the CLI as a new user runs it, recorded for the README.

Runs ``hypersweep run examples/quickstart.yaml --no-live`` in a fresh folder, draws what
``hypersweep plot`` draws, and keeps what the README shows: the summary line, the counts behind it,
and the picture (``docs/plot-quickstart.png``, reduced to 128 colours to stay small).

    python benchmarks/quickstart_story.py

Writes benchmarks/results/quickstart_story.json.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
HYPERSWEEP = str(Path(sys.executable).with_name("hypersweep"))


def main() -> None:
    with tempfile.TemporaryDirectory() as folder:
        env = {**os.environ, "HYPERSWEEP_RUNS_DIR": str(Path(folder) / "runs")}
        started = time.monotonic()
        run = subprocess.run(
            [HYPERSWEEP, "run", str(ROOT / "examples" / "quickstart.yaml"), "--no-live"],
            capture_output=True,
            text=True,
            env=env,
            cwd=folder,
            check=True,
        )
        seconds = time.monotonic() - started
        os.environ["HYPERSWEEP_RUNS_DIR"] = env["HYPERSWEEP_RUNS_DIR"]
        from PIL import Image

        import hypersweep as hs
        from hypersweep._plots import plot_figure

        # What `hypersweep plot quickstart-cli` draws, at 72 dpi and 128 colours for the README.
        picture = Path(folder) / "plot.png"
        plot_figure(hs.load("quickstart-cli")).savefig(picture, dpi=72)
        target = ROOT / "docs" / "plot-quickstart.png"
        target.parent.mkdir(exist_ok=True)
        image = Image.open(picture).convert("RGB")
        image.quantize(colors=128, method=Image.Quantize.MEDIANCUT).save(target, optimize=True)

        result = hs.load("quickstart-cli")
        summary = next(line for line in run.stdout.splitlines() if line.startswith("sweep "))
        record = {
            "command": "hypersweep run examples/quickstart.yaml --no-live",
            "summary": summary,
            "counts": result.counts(),
            "stopped_at_step": {
                str(step): sum(1 for t in result.trials if t.state == "pruned" and t.step == step)
                for step in sorted({t.step for t in result.trials if t.state == "pruned"})
            },
            "promotions": sum(len(t.promoted_at) for t in result.trials),
            "best_value": result.best_value,
            "wall_seconds": round(seconds, 2),
            "picture": str(target.relative_to(ROOT)),
            "machine": f"{platform.machine()}, {os.cpu_count()} CPUs, "
            f"Python {platform.python_version()}",
        }
    out = ROOT / "benchmarks" / "results" / "quickstart_story.json"
    out.write_text(json.dumps(record, indent=2) + "\n")
    print(json.dumps(record, indent=2))


if __name__ == "__main__":
    main()
