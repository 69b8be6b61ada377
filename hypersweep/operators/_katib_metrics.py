"""Katib's metrics collection, without a sidecar: lines in, reports and a final result out.

The implementation lives in :mod:`hypersweep.operators._katib_relay`, which runs in the trial
pod from its source under a bare ``python3`` (standard library only); this module gives the
package's own code (the benchmark, the tests) the same names.
"""

from __future__ import annotations

from hypersweep.operators._katib_relay import MetricsRelay, MetricsUnavailable, parse_value

__all__ = ["MetricsRelay", "MetricsUnavailable", "parse_value"]
