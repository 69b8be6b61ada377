"""Katib's metrics collection, without a sidecar: lines in, reports and a final result out.

The trial entry point (:mod:`hypersweep.operators.katib_entrypoint`) runs the primary
container's command and feeds what it prints (StdOut), what it appends to a file (File) or what
it pushes (Push) through :class:`MetricsRelay`. Each observation of the objective metric is one
report (step 1, 2, ...) carrying the latest value of every collected metric, so early stopping
judges it; the final result follows Katib's metric strategies (the objective's best value in its
direction unless ``metricStrategies`` says otherwise, the other metrics' latest value).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Mapping
from typing import Any

from hypersweep._errors import ConfigError


def parse_value(text: Any) -> float | None:
    """A metric value as a finite-or-not float; None if it is no number (an empty match)."""
    try:
        return float(text)
    except (TypeError, ValueError):
        return None


class MetricsRelay:
    """Collect the metrics a trial reports, as Katib's collectors do.

    Args:
        filters: regular expressions with two groups, the metric's name and its value.
        strategies: metric name -> ``min``, ``max`` or ``latest``; the first is the objective.
    """

    def __init__(self, filters: Iterable[str], strategies: Mapping[str, str]) -> None:
        self.filters = [re.compile(pattern) for pattern in filters]
        self.strategies = dict(strategies)
        if not self.strategies:
            raise ConfigError("the metrics relay needs the objective metric's name")
        self.objective = next(iter(self.strategies))
        self.latest: dict[str, float] = {}
        self.values: dict[str, float] = {}
        self.step = 0
        self.lines = 0

    def parse(self, line: str) -> list[tuple[str, float]]:
        """The (name, value) pairs of the collected metrics in one line."""
        found: list[tuple[str, float]] = []
        for pattern in self.filters:
            for match in pattern.finditer(line):
                name, value = match.group(1).strip(), parse_value(match.group(2))
                if name in self.strategies and value is not None:
                    found.append((name, value))
        return found

    def observe(self, pairs: Iterable[tuple[str, float]]) -> dict[str, float] | None:
        """Record observed metrics; the metrics to report (with the step in ``self.step``)
        when the objective metric was among them, else None."""
        objective_seen = False
        for name, value in pairs:
            self.latest[name] = value
            strategy = self.strategies[name]
            current = self.values.get(name)
            if strategy == "latest" or current is None or not math.isfinite(current):
                self.values[name] = value
            elif math.isfinite(value):
                better = value < current if strategy == "min" else value > current
                if better:
                    self.values[name] = value
            objective_seen = objective_seen or name == self.objective
        if not objective_seen:
            return None
        self.step += 1
        return dict(self.latest)

    def feed_line(self, line: str) -> dict[str, float] | None:
        """One line of output (or of the metrics file): what to report, if anything."""
        self.lines += 1
        pairs = self.parse(line)
        return self.observe(pairs) if pairs else None

    def feed_pushed(self, metrics: Mapping[str, Any]) -> dict[str, float] | None:
        """One ``report_metrics`` call (Push): what to report, if anything."""
        pairs = []
        for name, value in metrics.items():
            number = parse_value(value)
            if name in self.strategies and number is not None:
                pairs.append((str(name), number))
        return self.observe(pairs) if pairs else None

    def metric_of_tag(self, tag: str) -> str | None:
        """The collected metric a TF-event tag records: the name itself or ``.../name``."""
        if tag in self.strategies:
            return tag
        last = tag.rsplit("/", 1)[-1]
        return last if last in self.strategies else None

    def feed_scalars(
        self, scalars: Iterable[tuple[int, str, float]]
    ) -> list[tuple[int, dict[str, float]]]:
        """TF-event scalars ``(step, tag, value)``: what to report, as (report step, metrics),
        one event step at a time."""
        by_step: dict[int, list[tuple[str, float]]] = {}
        for step, tag, value in scalars:
            name = self.metric_of_tag(tag)
            if name is not None:
                by_step.setdefault(step, []).append((name, value))
        reports = []
        for step in sorted(by_step):
            metrics = self.observe(by_step[step])
            if metrics is not None:
                reports.append((self.step, metrics))
        return reports

    def result(self) -> dict[str, float]:
        """The trial's final metrics; raises when the objective metric never appeared (Katib's
        MetricsUnavailable)."""
        if self.objective not in self.values:
            raise MetricsUnavailable(
                f"the objective metric {self.objective!r} never appeared in the trial's "
                "metrics (check the collector's filter and what the command prints)"
            )
        return dict(self.values)


class MetricsUnavailable(RuntimeError):
    """The trial ended without reporting its objective metric."""
