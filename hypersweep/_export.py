"""``hypersweep export``: a sweep's trials as CSV, JSON or Parquet, one row per trial.

CSV and JSON need nothing beyond the standard library; Parquet goes through pandas and pyarrow
(the ``parquet`` extra).
"""

from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

from hypersweep._errors import ConfigError

if TYPE_CHECKING:
    from hypersweep.orchestrator._result import SweepResult


def export_result(result: SweepResult, path: Path, format: str) -> None:
    """Write ``result.to_records()`` to ``path`` in ``format`` (csv, json or parquet)."""
    rows = result.to_records()
    if format == "csv":
        columns: dict[str, None] = {}  # every row's keys, in first-seen order
        for row in rows:
            columns.update(dict.fromkeys(row))
        with path.open("w", newline="") as file:
            writer = csv.DictWriter(file, fieldnames=list(columns))
            writer.writeheader()
            writer.writerows(rows)
    elif format == "json":
        path.write_text(json.dumps(rows, indent=1, default=str) + "\n")
    elif format == "parquet":
        try:
            import pyarrow  # noqa: F401 - pandas writes Parquet with it
        except ImportError:
            raise ConfigError(
                "format: parquet needs pyarrow; pip install 'hypersweep[parquet]', or use "
                "--format csv"
            ) from None
        result.to_dataframe().to_parquet(path, index=False)
    else:
        raise ConfigError(f"format: expected one of csv, json, parquet, got {format!r}")
