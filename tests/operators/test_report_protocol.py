"""The report protocol between trial pods and a launcher, on a real API server: a trial
reports with its own token only, other ranks get rank 0's decision, an outcome is answered
once the orchestrator handled it."""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from hypersweep._errors import ConfigError
from hypersweep.kube._client import TRAINJOBS, Kube
from hypersweep.kube._server import ReportServer
from hypersweep.launchers._base import SweepContext
from hypersweep.launchers._kubernetes import KubernetesLauncher
from hypersweep.operators._channel import HttpChannel, ReportRefused, TrialGone
from hypersweep.orchestrator._events import Completed, Reported, TrialAssignment
from hypersweep.orchestrator._objective import ObjectiveRef
from hypersweep.testing import LocalCluster, create_namespace


def template() -> dict[str, Any]:
    return {"spec": {"containers": [{"name": "pytorch", "image": "x", "command": ["train"]}]}}


@pytest.fixture
def launcher(cluster: LocalCluster) -> Iterator[KubernetesLauncher]:
    """A launcher on the real API server, in a namespace of its own; no operator runs, so its
    TrainJobs get no pods: the trials' messages are sent from the test."""
    namespace = f"proto-{uuid.uuid4().hex[:8]}"
    create_namespace(cluster.api_client(), namespace)
    server = ReportServer("127.0.0.1", 0).start()
    launcher = KubernetesLauncher(
        namespace,
        trial_template={
            "framework": "pytorch",
            "replicaSpecs": {"Master": {"template": template()}},
        },
        kube=Kube(cluster.api_client()),
        server=server,
        report_url=f"http://127.0.0.1:{server.port}",
        sweep="demo",
    )
    launcher.start(SweepContext("demo", ObjectiveRef("objective", reference="m:f"), "loss"))
    yield launcher
    launcher.detach()  # leave the objects; the namespace goes
    launcher.shutdown()
    server.stop()
    cluster.kubectl("delete", "namespace", namespace, "--wait=false")


def assignment(number: int) -> TrialAssignment:
    return TrialAssignment(number, {"lr": 0.1}, "demo", "/tmp/ckpt", None, 0, 2)


def channel(launcher: KubernetesLauncher, number: int, token: str, rank: int = 0) -> HttpChannel:
    return HttpChannel(
        launcher._report_url or "",
        token,
        namespace=launcher.namespace,
        sweep="demo",
        trial_number=number,
        rank=rank,
        timeout=2.0,
    )


def token_of(launcher: KubernetesLauncher, number: int) -> str:
    return launcher._trials[number].token


def in_thread(function: Any) -> tuple[threading.Thread, list[Any]]:
    out: list[Any] = []

    def target() -> None:
        try:
            out.append(function())
        except BaseException as error:  # noqa: BLE001 - handed to the test
            out.append(error)

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    return thread, out


def poll_until(launcher: KubernetesLauncher, kind: type) -> Any:
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        for event in launcher.poll(0.2):
            if isinstance(event, kind):
                return event
    raise AssertionError(f"no {kind.__name__} event")


def test_a_trial_reports_with_its_own_token_only(launcher: KubernetesLauncher) -> None:
    launcher.launch(assignment(0))
    launcher.launch(assignment(1))
    job = launcher.kube.get(TRAINJOBS, launcher.namespace, "demo-trial-0")
    assert job is not None and job["metadata"]["annotations"]["hypersweep.io/attempt"] == "0"
    env = job["spec"]["replicaSpecs"]["Master"]["template"]["spec"]["containers"][0]["env"]
    assert {
        "name": "HYPERSWEEP_TRIAL_TOKEN",
        "valueFrom": {"secretKeyRef": {"name": "demo-trial-0-trial", "key": "token"}},
    } in env
    assert token_of(launcher, 0) not in json.dumps(job)  # the token is in the Secret only

    with pytest.raises(ReportRefused):
        channel(launcher, 1, token_of(launcher, 0)).request(("report", 0, {"loss": 1.0}))

    thread, out = in_thread(
        lambda: channel(launcher, 0, token_of(launcher, 0)).request(("report", 3, {"loss": 0.5}))
    )
    event = poll_until(launcher, Reported)
    assert event == Reported(0, 3, {"loss": 0.5})
    launcher.respond(0, "stop")
    thread.join(5)
    assert out == ["stop"]


def test_an_outcome_is_answered_once_the_orchestrator_handled_it(
    launcher: KubernetesLauncher,
) -> None:
    launcher.launch(assignment(0))
    thread, out = in_thread(
        lambda: channel(launcher, 0, token_of(launcher, 0)).send(("result", 0.25))
    )
    assert poll_until(launcher, Completed) == Completed(0, 0.25)
    assert thread.is_alive()  # not yet handled
    launcher.poll(0.0)  # the orchestrator polls again only after handling the event
    thread.join(5)
    assert out == [None]
    assert launcher.free_slots() == launcher.max_concurrent
    with pytest.raises(TrialGone):  # a new message after the outcome
        channel(launcher, 0, launcher._ended[0].token).request(("report", 9, {"loss": 0.1}))


def test_other_ranks_get_rank_zeros_decision(launcher: KubernetesLauncher) -> None:
    launcher.launch(assignment(0))
    token = token_of(launcher, 0)
    worker, worker_out = in_thread(
        lambda: channel(launcher, 0, token, rank=1).request(("report", 1, {"loss": 1.0}))
    )
    master, master_out = in_thread(
        lambda: channel(launcher, 0, token).request(("report", 1, {"loss": 1.0}))
    )
    poll_until(launcher, Reported)
    launcher.respond(0, "pause")
    master.join(5)
    worker.join(5)
    assert master_out == ["pause"] and worker_out == ["pause"]


def test_an_unknown_trial_is_retried_until_the_timeout(launcher: KubernetesLauncher) -> None:
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        channel(launcher, 7, "whatever").request(("report", 0, {"loss": 1.0}))
    assert time.monotonic() - started >= 2.0


def test_a_launcher_needs_a_reachable_report_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_IP", raising=False)
    server = ReportServer("127.0.0.1", 0).start()
    try:
        launcher = KubernetesLauncher("ns", image="trial:1", server=server)
        with pytest.raises(ConfigError, match="report_url"):
            launcher.start(SweepContext("demo", ObjectiveRef("f", reference="m:f"), "loss"))
    finally:
        server.stop()


def test_a_running_value_is_written_from_a_trials_first_report_on_not_its_launch(
    launcher: KubernetesLauncher, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A trial whose pods waited longer than VALUE_INTERVAL to start (a busy cluster) and then
    reports for less than that writes no value on its TrainJob before its outcome: one write
    per trial less. One that reports for longer still shows its latest value meanwhile."""
    from hypersweep.kube._names import VALUE_ANNOTATION
    from hypersweep.launchers import _kubernetes

    monkeypatch.setattr(_kubernetes, "VALUE_INTERVAL", 3.0)
    launcher.sync_interval = 0.1
    launcher.launch(assignment(0))
    token = token_of(launcher, 0)
    launched = time.monotonic()

    def shown() -> str | None:
        job = launcher.kube.get(TRAINJOBS, launcher.namespace, "demo-trial-0") or {}
        return ((job.get("metadata") or {}).get("annotations") or {}).get(VALUE_ANNOTATION)

    def report(step: int, loss: float) -> None:
        thread, out = in_thread(
            lambda: channel(launcher, 0, token).request(("report", step, {"loss": loss}))
        )
        assert poll_until(launcher, Reported) == Reported(0, step, {"loss": loss})
        launcher.respond(0, "continue")
        thread.join(5)
        assert out == ["continue"], out

    # The pods "start" after more than VALUE_INTERVAL: the first report comes then.
    while time.monotonic() - launched < 3.5:
        launcher.poll(0.1)
    report(0, 0.5)
    first = time.monotonic()
    while time.monotonic() - first < 1.0:  # checks run every 0.1 s meanwhile
        launcher.poll(0.1)
    assert shown() is None  # not VALUE_INTERVAL since its first report yet (2 s margin)
    # Reporting for longer than VALUE_INTERVAL: its latest value is shown while it runs.
    while time.monotonic() - first < 3.1:
        launcher.poll(0.1)
    report(1, 0.25)
    deadline = time.monotonic() + 10
    while shown() != "0.25" and time.monotonic() < deadline:
        launcher.poll(0.1)
    assert shown() == "0.25"
