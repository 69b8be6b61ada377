"""Chaos runs: SIGKILL the operator during an ASHA sweep, or replicas during a gang sweep, and
count what a fault could have broken.

* :func:`run_operator_chaos` applies one ASHA Sweep (pauses and promotions happen) and SIGKILLs
  the operator at random moments while it leads, starting it again each time. A watch on the
  namespace's TrainJobs and pods runs throughout. Afterwards it counts trials, TrainJobs per
  trial number (a second one would be a trial started twice), pods of one trial alive at once
  beyond its replicas, pods and Secrets left behind, and reports lost: a step whose
  ``hypersweep.report`` returned in the trial but that storage does not hold.
* :func:`run_gang_chaos` runs a local sweep of multi-replica trials twice, once without faults
  and once while a killer thread SIGKILLs random replica processes; with a deterministic
  objective every trial's final value must be the same in both.

``benchmarks/chaos.py`` runs both at size and saves the figures; the test suite runs smaller
versions (``tests/operators/test_chaos.py``, ``tests/test_chaos.py``).
"""

from __future__ import annotations

import json
import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Protocol

import hypersweep as hs
from hypersweep.orchestrator._reporting import TrialPaused

__all__ = [
    "GangChaosReport",
    "OperatorChaosReport",
    "OperatorControl",
    "chaos_curve",
    "chaos_sweep",
    "run_gang_chaos",
    "run_operator_chaos",
]

#: Environment variable naming the folder where trials write what they did.
MARKERS_ENV = "HYPERSWEEP_CHAOS_MARKERS"
_SWEEP_LABEL = "hypersweep.io/sweep"
_TRIAL_LABEL = "hypersweep.io/trial"


# --- the objective -------------------------------------------------------------------------


def chaos_curve(config: dict[str, Any]) -> float:
    """A deterministic learning curve, checkpointed every step, that records what it did.

    ``theta`` decays by ``(1 - lr)`` per step and the loss is ``theta + (lr - 0.3) ** 2``, so
    the value after the last step depends only on the config, however often the trial was
    interrupted and resumed from its checkpoints. Each process appends to
    ``$HYPERSWEEP_CHAOS_MARKERS``: its pid and start step (``start``), and each step whose report
    returned on rank 0 (``reported``) or paused the trial (``paused``), which storage must then
    hold.
    """
    context = hs.get_trial_context()
    assert context is not None
    markers = Path(os.environ[MARKERS_ENV])
    markers.mkdir(parents=True, exist_ok=True)
    state = hs.restore()
    start, theta = (0, 1.0) if state is None else (state["step"] + 1, state["theta"])
    log = markers / f"trial-{context.trial_number}.log"

    def mark(line: str) -> None:
        with open(log, "a") as handle:
            handle.write(line + "\n")

    mark(f"start rank={context.rank} pid={os.getpid()} step={start} attempt={context.attempt}")
    (markers / "pids").mkdir(exist_ok=True)
    (markers / "pids" / str(os.getpid())).write_text(f"{context.trial_number} {context.rank}")
    lr = float(config["lr"])
    loss = theta + (lr - 0.3) ** 2
    for step in range(start, int(config.get("steps", 9))):
        time.sleep(float(config.get("pause", 0.1)))
        theta *= 1.0 - lr
        loss = theta + (lr - 0.3) ** 2
        hs.checkpoint({"step": step, "theta": theta}, step=step)
        try:
            hs.report(step, loss=loss)
        except TrialPaused:
            if context.rank == 0:  # the report is stored; the trial may be promoted later
                mark(f"paused step={step} loss={loss!r}")
            raise
        if context.rank == 0:
            mark(f"reported step={step} loss={loss!r}")
    return loss


def _marks(markers: Path, number: int) -> list[dict[str, str]]:
    path = markers / f"trial-{number}.log"
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        kind, *fields = line.split()
        out.append({"kind": kind, **dict(f.split("=", 1) for f in fields)})
    return out


# --- the operator under SIGKILL ------------------------------------------------------------


class OperatorControl(Protocol):
    """The operator process a chaos run kills and starts (:class:`OperatorProcess`)."""

    def start(self, wait: bool = True) -> None: ...

    def kill(self) -> None: ...

    def ready(self) -> bool: ...


@dataclass
class OperatorChaosReport:
    """What a run of :func:`run_operator_chaos` found."""

    kills: int
    max_trials: int
    trials: int
    trial_states: dict[str, int]
    pauses: int
    promotions: int
    trainjobs_created: int
    duplicate_trainjobs: int
    extra_starts: int
    pods_beyond_gang: int
    orphaned_pods: int
    orphaned_secrets: int
    lost_reports: int
    restarted_from_scratch: int
    orphans: list[str] = field(default_factory=list)
    kill_delays_s: list[float] = field(default_factory=list)
    seconds: float = 0.0
    succeeded: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def chaos_sweep(
    name: str,
    command: list[str],
    markers: Path,
    *,
    max_trials: int,
    parallelism: int,
    steps: int = 9,
    pause: float = 0.15,
    seed: int = 0,
) -> dict[str, Any]:
    """An ASHA Sweep of ``chaos_curve`` trials (one replica each) run by ``command``."""
    container = {
        "name": "pytorch",
        "image": "hypersweep:test",
        "command": command,
        "env": [{"name": MARKERS_ENV, "value": str(markers)}],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
    }
    return {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": {
            "space": {
                "lr": {"type": "float", "low": 0.01, "high": 0.9},
                "steps": {"type": "constant", "value": steps},
                "pause": {"type": "constant", "value": pause},
            },
            "objective": {"metric": "loss", "mode": "min"},
            "strategy": {"name": "random", "settings": {"seed": seed}},
            "earlyStopping": {
                "name": "asha",
                "settings": {"min_resource": 1, "max_resource": steps - 1, "reduction_factor": 3},
            },
            "maxTrials": max_trials,
            "parallelism": parallelism,
            "trialTemplate": {
                "framework": "pytorch",
                "replicaSpecs": {
                    "Master": {"replicas": 1, "template": {"spec": {"containers": [container]}}}
                },
            },
        },
    }


class _Watcher:
    """TrainJob UIDs per trial and the live pods of each trial, from API watches."""

    def __init__(self, api_client: Any, namespace: str) -> None:
        from kubernetes import client

        self.namespace = namespace
        self.core = client.CoreV1Api(api_client)
        self.custom = client.CustomObjectsApi(api_client)
        self.job_uids: dict[int, set[str]] = {}
        self.live_pods: dict[int, set[str]] = {}
        self.most_live: dict[int, int] = {}
        self.errors: list[BaseException] = []
        self._done = threading.Event()
        self._threads = [
            threading.Thread(target=self._guard, args=(self._jobs,), daemon=True),
            threading.Thread(target=self._guard, args=(self._pods,), daemon=True),
        ]

    def start(self) -> None:
        for thread in self._threads:
            thread.start()

    def stop(self) -> None:
        self._done.set()
        for thread in self._threads:
            thread.join(10)

    def _guard(self, follow: Callable[[], None]) -> None:
        try:
            follow()
        except BaseException as error:  # noqa: BLE001 - reported by the run
            self.errors.append(error)

    def _stream(self, list_call: Any, *args: Any) -> Iterator[tuple[str, dict[str, Any]]]:
        from kubernetes import watch

        version = ""
        while not self._done.is_set():
            stream = watch.Watch()
            for event in stream.stream(
                list_call, *args, resource_version=version, timeout_seconds=2
            ):
                obj = event["object"]
                obj = obj if isinstance(obj, dict) else obj.to_dict()
                meta = obj.get("metadata") or {}
                version = meta.get("resourceVersion") or meta.get("resource_version") or version
                yield str(event["type"]), obj

    def _jobs(self) -> None:
        stream = self._stream(
            self.custom.list_namespaced_custom_object,
            "hypersweep.io",
            "v1alpha1",
            self.namespace,
            "trainjobs",
        )
        for _, job in stream:
            labels = job["metadata"].get("labels") or {}
            if _TRIAL_LABEL in labels:
                number = int(labels[_TRIAL_LABEL])
                self.job_uids.setdefault(number, set()).add(job["metadata"]["uid"])

    def _pods(self) -> None:
        for kind, pod in self._stream(self.core.list_namespaced_pod, self.namespace):
            meta = pod["metadata"]
            labels = meta.get("labels") or {}
            if _TRIAL_LABEL not in labels:
                continue
            number = int(labels[_TRIAL_LABEL])
            live = self.live_pods.setdefault(number, set())
            phase = (pod.get("status") or {}).get("phase")
            if kind == "DELETED" or phase in ("Succeeded", "Failed"):
                live.discard(meta["uid"])
            else:
                live.add(meta["uid"])
            self.most_live[number] = max(self.most_live.get(number, 0), len(live))


def run_operator_chaos(
    cluster: Any,
    namespace: str,
    study_journal: Callable[[str], Path],
    operator: OperatorControl,
    sweep: dict[str, Any],
    markers: Path,
    *,
    kills: int,
    seed: int = 0,
    delay: tuple[float, float] = (0.3, 3.0),
    timeout: float = 900.0,
    log: Callable[[str], None] = lambda _: None,
) -> OperatorChaosReport:
    """Apply ``sweep`` in ``namespace`` and SIGKILL ``operator`` ``kills`` times, each after a
    random delay in ``delay`` (seconds) from the moment it leads, starting it again each time.

    ``study_journal(study_name)`` is where the sweep's journal lies (on the data volume);
    ``sweep`` comes from :func:`chaos_sweep` (one replica per trial).
    """
    import optuna

    from hypersweep.orchestrator._storage import open_storage

    rng = random.Random(seed)
    name = sweep["metadata"]["name"]
    max_trials = int(sweep["spec"]["maxTrials"])
    watcher = _Watcher(cluster.api_client(), namespace)
    watcher.start()
    began = time.monotonic()
    cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(sweep))

    def status() -> dict[str, Any]:
        out = cluster.kubectl("get", "sweep", name, "-n", namespace, "-o", "json").stdout
        found: dict[str, Any] = json.loads(out).get("status") or {}
        return found

    def finished() -> bool:
        return any(
            c["type"] in ("Succeeded", "Failed") and c["status"] == "True"
            for c in status().get("conditions") or []
        )

    delays: list[float] = []
    try:
        while len(delays) < kills and not finished():
            wait = rng.uniform(*delay)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline and not finished():
                time.sleep(0.05)
            if finished():
                break
            operator.kill()
            delays.append(round(wait, 3))
            log(f"kill {len(delays)}/{kills} after {wait:.2f} s ({status().get('trials')})")
            operator.start(wait=True)
        deadline = time.monotonic() + timeout
        while not finished():
            if time.monotonic() > deadline:
                raise TimeoutError(f"sweep {name} did not finish: {status()}")
            time.sleep(0.2)
        # Trial pods and Secrets go once their trials end: let the last ones go.
        _wait_quiet(cluster, namespace, name, timeout=60)
    finally:
        watcher.stop()
    if watcher.errors:
        raise RuntimeError(f"watching the namespace failed: {watcher.errors!r}")
    final = status()
    study = final["studyName"]
    trials = optuna.load_study(
        study_name=study, storage=open_storage(str(study_journal(study)), study)
    ).trials
    states: dict[str, int] = {}
    for trial in trials:
        states[trial.state.name.lower()] = states.get(trial.state.name.lower(), 0) + 1
    lost = from_scratch = pauses = promotions = duplicates = extra_starts = 0
    for trial in trials:
        marks = _marks(markers, trial.number)
        reported = {int(m["step"]) for m in marks if m["kind"] in ("reported", "paused")}
        lost += len(reported - set(trial.intermediate_values))
        starts = [int(m["step"]) for m in marks if m["kind"] == "start"]
        paused = sum(1 for m in marks if m["kind"] == "paused")
        pauses += paused
        promotions += sum(1 for s in starts if s > 0)
        from_scratch += max(0, starts.count(0) - 1)
        # A trial's TrainJob is made once, and again for each promotion after a pause (the
        # paused one is replaced); any other one, or any other start, ran the trial twice.
        duplicates += max(0, len(watcher.job_uids.get(trial.number, ())) - 1 - paused)
        extra_starts += max(0, len(starts) - 1 - paused)
    pods, secrets = _leftovers(cluster, namespace, name)
    return OperatorChaosReport(
        kills=len(delays),
        max_trials=max_trials,
        trials=len(trials),
        trial_states=states,
        pauses=pauses,
        promotions=promotions,
        trainjobs_created=sum(len(u) for u in watcher.job_uids.values()),
        duplicate_trainjobs=duplicates,
        extra_starts=extra_starts,
        pods_beyond_gang=sum(max(0, n - 1) for n in watcher.most_live.values()),
        orphaned_pods=len(pods),
        orphaned_secrets=len(secrets),
        lost_reports=lost,
        restarted_from_scratch=from_scratch,
        orphans=sorted(pods + secrets),
        kill_delays_s=delays,
        seconds=round(time.monotonic() - began, 1),
        succeeded=any(
            c["type"] == "Succeeded" and c["status"] == "True"
            for c in final.get("conditions") or []
        ),
    )


def _leftovers(cluster: Any, namespace: str, sweep: str) -> tuple[list[str], list[str]]:
    """Trial pods still active and trial Secrets still there once the sweep ended."""
    selector = f"{_SWEEP_LABEL}={sweep}"

    def items(kind: str, *extra: str) -> list[dict[str, Any]]:
        out = cluster.kubectl("get", kind, "-n", namespace, *extra, "-o", "json").stdout
        found: list[dict[str, Any]] = json.loads(out)["items"]
        return found

    jobs = {j["metadata"]["name"] for j in items("trainjobs", "-l", selector)}
    pods = [
        p["metadata"]["name"]
        for p in items("pods")
        if p["status"].get("phase") in ("Pending", "Running")
        or p["metadata"].get("labels", {}).get("hypersweep.io/job-name") not in jobs
    ]
    secrets = [s["metadata"]["name"] for s in items("secrets", "-l", selector)]
    return pods, secrets


def _wait_quiet(cluster: Any, namespace: str, sweep: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pods, secrets = _leftovers(cluster, namespace, sweep)
        if not pods and not secrets:
            return
        time.sleep(0.5)


# --- replicas under SIGKILL ----------------------------------------------------------------


@dataclass
class GangChaosReport:
    """What a run of :func:`run_gang_chaos` found."""

    kills: int
    trials: int
    replicas: int
    completed: int
    lost_trials: int
    values_equal: bool
    max_abs_difference: float
    gang_restarts: int
    seconds_fault_free: float
    seconds_with_kills: float
    kill_delays_s: list[float] = field(default_factory=list)

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def compare(
        cls,
        values: dict[str, dict[float, float | None]],
        seconds: dict[str, float],
        *,
        delays: list[float],
        trials: int,
        replicas: int,
        completed: int,
        restarts: int,
        every_trial_seen: bool = True,
    ) -> GangChaosReport:
        """The report of a fault-free run and a run with kills: trial values by config."""
        clean, faulty = values["fault-free"], values["with-kills"]
        differences = [
            abs(clean[n] - faulty[n])  # type: ignore[operator]
            for n in clean
            if clean[n] is not None and faulty.get(n) is not None
        ]
        return cls(
            kills=len(delays),
            trials=trials,
            replicas=replicas,
            completed=completed,
            lost_trials=trials - completed,
            values_equal=clean == faulty and every_trial_seen,
            max_abs_difference=max(differences, default=float("nan")),
            gang_restarts=restarts,
            seconds_fault_free=seconds["fault-free"],
            seconds_with_kills=seconds["with-kills"],
            kill_delays_s=delays,
        )


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split()[2] != "Z"
    except (FileNotFoundError, ProcessLookupError):
        return False


def run_gang_chaos(
    workdir: Path,
    *,
    kills: int,
    trials: int = 4,
    replicas: int = 4,
    steps: int = 12,
    pause: float = 0.1,
    seed: int = 0,
    delay: tuple[float, float] = (0.2, 1.0),
    log: Callable[[str], None] = lambda _: None,
) -> GangChaosReport:
    """A sweep of ``replicas``-replica trials without faults, then the same with ``kills`` random
    replica SIGKILLs (each restarts its gang from the checkpoint, counting toward
    ``max_retries``); the final values must be equal."""
    import signal

    # A grid: both runs try the same configs, whatever order the trials finish in.
    grid = [round(0.05 + 0.4 * i / max(1, trials - 1), 4) for i in range(trials)]
    space = {"lr": hs.grid(grid), "steps": steps, "pause": pause}
    common: dict[str, Any] = dict(
        metric="loss",
        n_trials=trials,
        max_concurrent=2,
        strategy="grid",
        seed=seed,
        replicas=hs.Replicas(n=replicas),
        max_retries=kills + 1,
        verbose=False,
    )
    values: dict[str, dict[float, float | None]] = {}
    seconds: dict[str, float] = {}
    restarts = 0
    delays: list[float] = []
    completed = 0
    for run in ("fault-free", "with-kills"):
        markers = workdir / run / "markers"
        os.environ[MARKERS_ENV] = str(markers)
        stop = threading.Event()
        rng = random.Random(seed)

        def killer(
            markers: Path = markers, stop: threading.Event = stop, rng: random.Random = rng
        ) -> None:
            while len(delays) < kills and not stop.is_set():
                wait = rng.uniform(*delay)
                if stop.wait(wait):
                    return
                pids = [
                    int(p.name) for p in sorted((markers / "pids").glob("*")) if _alive(int(p.name))
                ]
                if not pids:
                    continue
                victim = rng.choice(pids)
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                delays.append(round(wait, 3))
                log(f"killed replica pid {victim} ({len(delays)}/{kills})")

        thread = threading.Thread(target=killer, daemon=True)
        if run == "with-kills":
            thread.start()
        began = time.monotonic()
        try:
            result = hs.tune(
                space,
                "hypersweep.testing._chaos:chaos_curve",
                name=f"gang-chaos-{run}-{os.getpid()}",
                **common,
            )
        finally:
            stop.set()
            if thread.is_alive():
                thread.join(10)
        seconds[run] = round(time.monotonic() - began, 1)
        values[run] = {float(t.config["lr"]): t.value for t in result.trials}
        if run == "with-kills":
            completed = result.counts().get("completed", 0)
            restarts = sum(max(0, t.attempts - 1) for t in result.trials)
    return GangChaosReport.compare(
        values,
        seconds,
        delays=delays,
        trials=trials,
        replicas=replicas,
        completed=completed,
        restarts=restarts,
    )


# --- replicas of TrainJobs under SIGKILL ---------------------------------------------------


def gang_chaos_sweep(
    name: str,
    command: list[str],
    markers: Path,
    *,
    lrs: list[float],
    replicas: int,
    parallelism: int,
    backoff_limit: int,
    steps: int = 12,
    pause: float = 0.2,
) -> dict[str, Any]:
    """A grid Sweep of ``chaos_curve`` trials, each a gang of ``replicas`` pods (a PyTorch
    master and ``replicas - 1`` workers) that restarts from its checkpoint when one fails."""
    container = {
        "name": "pytorch",
        "image": "hypersweep:test",
        "command": command,
        "env": [{"name": MARKERS_ENV, "value": str(markers)}],
        "resources": {"requests": {"cpu": "10m", "memory": "64Mi"}},
    }

    def group(count: int) -> dict[str, Any]:
        return {
            "replicas": count,
            "restartPolicy": "OnFailure",
            "template": {"spec": {"containers": [container]}},
        }

    specs = {"Master": group(1)}
    if replicas > 1:
        specs["Worker"] = group(replicas - 1)
    return {
        "apiVersion": "hypersweep.io/v1alpha1",
        "kind": "Sweep",
        "metadata": {"name": name},
        "spec": {
            "space": {
                "lr": {"type": "grid", "values": lrs},
                "steps": {"type": "constant", "value": steps},
                "pause": {"type": "constant", "value": pause},
            },
            "objective": {"metric": "loss", "mode": "min"},
            "strategy": {"name": "grid"},
            "maxTrials": len(lrs),
            "parallelism": parallelism,
            "trialTemplate": {
                "framework": "pytorch",
                "replicaSpecs": specs,
                "runPolicy": {"backoffLimit": backoff_limit},
            },
        },
    }


def run_trainjob_gang_chaos(
    cluster: Any,
    namespace: str,
    study_journal: Callable[[str], Path],
    command: list[str],
    workdir: Path,
    *,
    kills: int,
    trials: int = 4,
    replicas: int = 4,
    parallelism: int = 2,
    steps: int = 12,
    pause: float = 0.2,
    seed: int = 0,
    delay: tuple[float, float] = (0.5, 2.0),
    timeout: float = 900.0,
    log: Callable[[str], None] = lambda _: None,
) -> GangChaosReport:
    """:func:`run_gang_chaos` as TrainJobs on a cluster: one Sweep of ``replicas``-pod trials
    without faults, then the same Sweep while ``kills`` random replica processes (the pods'
    processes on the node agent) are SIGKILLed; each kill fails a pod, and the TrainJob
    controller restarts the whole gang from the trial's checkpoint.

    An operator must be running for ``namespace``; ``command`` runs ``chaos_curve`` through the
    trial entrypoint; ``study_journal(study_name)`` is where a sweep's journal lies.
    """
    import signal

    import optuna

    from hypersweep.orchestrator._storage import open_storage

    lrs = [round(0.05 + 0.4 * i / max(1, trials - 1), 4) for i in range(trials)]
    values: dict[str, dict[float, float | None]] = {}
    seconds: dict[str, float] = {}
    delays: list[float] = []
    completed = restarts = 0
    for run in ("fault-free", "with-kills"):
        markers = workdir / run
        markers.mkdir(parents=True, exist_ok=True)
        name = f"gang-chaos-{run}"
        sweep = gang_chaos_sweep(
            name,
            command,
            markers,
            lrs=lrs,
            replicas=replicas,
            parallelism=parallelism,
            backoff_limit=kills + 1,
            steps=steps,
            pause=pause,
        )
        stop = threading.Event()
        rng = random.Random(seed)

        def killer(
            markers: Path = markers, stop: threading.Event = stop, rng: random.Random = rng
        ) -> None:
            # Replicas of a gang already hit are being stopped for its restart: a kill there
            # would restart nothing, so only replicas started since are victims.
            doomed: set[int] = set()
            # Each restart backs off twice as long as the last: spread the kills over the
            # trials (at most their share each, the least-hit running ones first) rather than
            # restart the first gangs 20 times.
            hits: dict[str, int] = {}
            share = -(-kills // trials)
            while len(delays) < kills and not stop.is_set():
                wait = rng.uniform(*delay)
                if stop.wait(wait):
                    return
                trial_of = {
                    int(p.name): words[0]
                    for p in sorted((markers / "pids").glob("*"))
                    if int(p.name) not in doomed and _alive(int(p.name))
                    # (empty while the replica is writing it)
                    for words in [p.read_text().split()]
                    if words and hits.get(words[0], 0) < share
                }
                if not trial_of:
                    continue
                fewest = min(hits.get(t, 0) for t in trial_of.values())
                victim = rng.choice(
                    sorted(p for p, t in trial_of.items() if hits.get(t, 0) == fewest)
                )
                try:
                    os.kill(victim, signal.SIGKILL)
                except ProcessLookupError:
                    continue
                doomed.update(p for p, t in trial_of.items() if t == trial_of[victim])
                hits[trial_of[victim]] = fewest + 1
                delays.append(round(wait, 3))
                log(f"killed replica pid {victim} ({len(delays)}/{kills})")

        def status(name: str = name) -> dict[str, Any]:
            out = cluster.kubectl("get", "sweep", name, "-n", namespace, "-o", "json").stdout
            found: dict[str, Any] = json.loads(out).get("status") or {}
            return found

        thread = threading.Thread(target=killer, daemon=True)
        began = time.monotonic()
        cluster.kubectl("apply", "-n", namespace, "-f", "-", input=json.dumps(sweep))
        if run == "with-kills":
            thread.start()
        try:
            deadline = time.monotonic() + timeout
            while not any(
                c["type"] in ("Succeeded", "Failed") and c["status"] == "True"
                for c in status().get("conditions") or []
            ):
                if time.monotonic() > deadline:
                    raise TimeoutError(f"sweep {name} did not finish: {status()}")
                time.sleep(0.5)
        finally:
            stop.set()
            if thread.is_alive():
                thread.join(10)
        seconds[run] = round(time.monotonic() - began, 1)
        study = status()["studyName"]
        found = optuna.load_study(
            study_name=study, storage=open_storage(str(study_journal(study)), study)
        ).trials
        values[run] = {float(t.params["lr"]): t.value for t in found}
        if run == "with-kills":
            completed = sum(1 for t in found if t.state == optuna.trial.TrialState.COMPLETE)
            # Rank 0 starts once per trial, and once more each time its gang restarts.
            restarts = sum(
                max(
                    0,
                    sum(
                        1
                        for m in _marks(markers, t.number)
                        if m["kind"] == "start" and m.get("rank") == "0"
                    )
                    - 1,
                )
                for t in found
            )
    return GangChaosReport.compare(
        values,
        seconds,
        delays=delays,
        trials=trials,
        replicas=replicas,
        completed=completed,
        restarts=restarts,
        every_trial_seen=len(values["fault-free"]) == trials,
    )
