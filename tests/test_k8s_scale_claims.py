"""The README's Kubernetes scale section quotes benchmarks/results/ as it is saved.

The table is rendered from the saved runs by the benchmark's own ``readme_table``, and each
target the text calls met or missed is checked against the figure it names.
"""

from __future__ import annotations

import importlib.util
import re
from pathlib import Path
from types import ModuleType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def _benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location("k8s_scale", ROOT / "benchmarks" / "k8s_scale.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _section() -> tuple[str, str]:
    """The table block, and the text of the scale section around it (one line)."""
    readme = (ROOT / "README.md").read_text()
    block = re.search(r"<!-- k8s-scale -->\n(.*?)\n<!-- /k8s-scale -->", readme, re.S)
    assert block is not None, "README.md: no <!-- k8s-scale --> block"
    start = readme.rindex("`benchmarks/k8s_scale.py` measures", 0, block.start())
    end = readme.index("\n## ", block.end())
    return block.group(1), " ".join(readme[start:end].split())


def test_the_readme_scale_table_is_the_saved_runs() -> None:
    bench = _benchmark()
    table, _ = _section()
    assert table == bench.readme_table(bench.load_readme_runs())


def test_each_target_the_readme_calls_met_or_missed_is_so_in_the_saved_runs() -> None:
    bench = _benchmark()
    small, thousand, large = bench.load_readme_runs()
    _, text = _section()

    def verdict(name: str, met: bool) -> None:
        said = f"{name}: **{'met' if met else 'missed'}**"
        assert said in text, f"README.md should say '{said}'"

    # Per-trial figures of a run stopped early count what its unfinished trials cost so far:
    # only the runs that ended are held to the per-trial targets.
    ended: list[dict[str, Any]] = [r for r in (small, thousand, large) if r["completed"]]
    assert small["completed"] and thousand["completed"]
    verdict("requests", all(r["operator_requests_per_trial"] <= 12 for r in ended))
    verdict("first pod", all(r["first_pod_s"] <= 1 for r in (small, thousand, large)))
    verdict("CPU", all(r["operator_cpu_ms_per_trial"] <= 15 for r in ended))
    verdict("memory at 1,000 trials", thousand["operator_peak_rss_mib"] <= 300)
    ratio = large["operator_peak_rss_mib"] / thousand["operator_peak_rss_mib"]
    verdict("memory at 10,000 trials", ratio <= 1.5 and large["completed"])
    assert f"{ratio:.2f} times" in text
    verdict("10,000 trials", large["completed"] and large["trials"] == 10000)
    # Every figure of the 10,000-trial column the text repeats is the saved one.
    assert f"{large['operator_peak_rss_mib']:.1f} MiB" in text
    assert f"{large['sweep_s']:,} s" in text


def _saved(name: str) -> dict[str, Any]:
    import json

    return dict(json.loads((ROOT / "benchmarks" / "results" / name).read_text()))


def test_the_figures_the_text_quotes_beside_the_table_are_the_saved_ones() -> None:
    """The machine comparison (the code before, on the same machine as the table's runs) and
    where the 200-trial run's CPU goes."""
    bench = _benchmark()
    small, _, _ = bench.load_readme_runs()
    before = _saved("k8s_scale_200_eb13cc4_same_machine.json")
    earlier = _saved("k8s_scale_200_e3e1770.json")
    _, text = _section()
    reads = before["operator_requests_by_kind"]["get trainjobs"]
    assert (
        f"made {before['operator_requests_per_trial']:.2f} requests per trial at 200 trials, "
        f"{reads} of them single TrainJob reads" in text
    )
    assert f"measured {before['operator_cpu_ms_per_trial']:.1f} ms per trial" in text
    assert f"against {earlier['operator_cpu_ms_per_trial']:.1f} ms on the earlier machine" in text
    rates = small["raw_pods_per_s"]["trial_like"], earlier["raw_pods_per_s"]["trial_like"]
    assert "made {:.1f} trial-like pods a second, against {:.1f}".format(*rates) in text

    shares = small["profile_shares"]
    watches = shares["Informer._run (hypersweep/kube/_informer.py)"]
    requests = shares["Kube.request (hypersweep/kube/_client.py)"]
    assert f"{watches:.1%} of the operator's Python samples are in its watches" in text
    assert f"{requests:.1%} in HTTP requests" in text
    watched = small["operator_watched_per_trial"]
    events = sum(v for k, v in watched.items() if k.startswith("watch events "))
    kib = sum(v for k, v in watched.items() if k.startswith("watch KiB "))
    assert f"deliver {events:.1f} events and {kib:.0f} KiB of JSON" in text


def test_the_simulated_cluster_the_text_describes_is_the_one_the_runs_used() -> None:
    bench = _benchmark()
    _, text = _section()
    lease = bench.NODE_LEASE_SECONDS
    (grace,) = bench.CONTROLLER_MANAGER_ARGS
    assert f"each simulated node's lease lasts {lease} s (renewed every {lease // 4} s" in text
    assert f"{bench.KWOK_NODE_LEASE_PARALLELISM} at once" in text
    assert f"node-monitor grace is {grace.split('=')[1].rstrip('s')} s" in text
    for run in bench.load_readme_runs()[:2]:
        assert run["simulated_cluster"]["node_lease_seconds"] == lease
        assert run["simulated_cluster"]["controller_manager_args"] == [grace]
