"""Ray Tune search algorithms as strategies: an Optuna sampler that asks a Ray Tune searcher.

``tune(..., strategy=HyperOptSearch())`` (or any ``ray.tune.search.Searcher``, a
``ConcurrencyLimiter`` around one, or ``BasicVariantGenerator``) runs the sweep through the same
loop, storage and launchers as Optuna's strategies. :class:`RaySearcherSampler` is an
``optuna.samplers.BaseSampler`` that maps Optuna's ask/tell onto the searcher's callbacks:

- the sweep's space becomes Ray Tune domains (``tune.uniform``, ``tune.randint``...), given to
  the searcher once with ``set_search_properties(metric, mode, config)``;
- ``sample_relative`` asks ``searcher.suggest(trial_id)`` and turns the config into values of
  the trial's Optuna distributions (snapped onto their ranges and steps), so trials proposed by
  Ray Tune are stored like any other and results, resume and dashboards work the same;
- each report reaches ``searcher.on_trial_result`` (the orchestrator calls
  :meth:`RaySearcherSampler.on_trial_result`), and ``after_trial`` (Optuna's tell) reaches
  ``searcher.on_trial_complete`` with the trial's final metrics, or ``error=True``;
- ``suggest`` returning None (a ``ConcurrencyLimiter`` at its limit) or ``FINISHED`` raises
  :class:`~hypersweep.strategies._samplers.StrategyNotReady`: the trial goes back to the queue
  until a running trial ends, or for good.

Resume. Storage holds every trial, not the searcher's model, so the sampler keeps the searcher's
own state (its ``save``/``get_state``) in ``searcher-state.pkl`` beside the sweep, written after
each proposal (always: a proposal missing from the saved state could never be told to the
restored searcher) and each result (throttled to ~10% of the time once a write takes over 20 ms:
a result missing from it is replayed from storage).
A driver that resumes the sweep restores that state into the fresh searcher it was given: the
model, its random state and the trials it had proposed, so that interrupted trials, resumed
with their stored parameters, are told to the searcher under their old ids when they end.
Trials that ended after the last write are replayed from storage: told under their ids if the
restored searcher proposed them, else passed to ``add_evaluated_point`` where the searcher has
it (Optuna, HEBO). Nothing is rerun.

Ray is imported only when a Ray Tune object is passed (the user imported it already).
"""

from __future__ import annotations

import logging
import math
import os
import secrets
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from optuna.distributions import (
    BaseDistribution,
    CategoricalDistribution,
    FloatDistribution,
    IntDistribution,
)
from optuna.samplers import BaseSampler, RandomSampler
from optuna.study import Study
from optuna.trial import FrozenTrial, TrialState

from hypersweep._errors import ConfigError
from hypersweep.strategies._not_ready import StrategyNotReady
from hypersweep.strategies._space import (
    Categorical,
    Domain,
    Float,
    Grid,
    Int,
    flatten_config,
    flatten_space,
    from_ray_domain,
    unflatten_params,
)

__all__ = ["RaySearcherSampler", "from_ray_domain", "is_ray_search_algorithm", "to_ray_space"]

logger = logging.getLogger("hypersweep")

STATE_FILE = "searcher-state.pkl"
TOKEN_ATTR = "hypersweep:searcher_token"  # ties a state file to the sweep that wrote it
_STATE_VERSION = 1
_UNBOUNDED_SAMPLES = 2**31 - 1
_CHEAP_SAVE = 0.02  # seconds: a state that saves faster is saved after every change
_SAVE_OVERHEAD = 0.1  # otherwise at most this share of the time goes into saving it


def is_ray_search_algorithm(strategy: Any) -> bool:
    """Whether ``strategy`` is a Ray Tune ``Searcher`` or ``SearchAlgorithm``.

    Checked without importing Ray: a Ray Tune object exists only if Ray Tune was imported.
    """
    if "ray.tune.search" not in sys.modules:
        return False
    from ray.tune.search import SearchAlgorithm, Searcher

    return isinstance(strategy, (Searcher, SearchAlgorithm))


# --- spaces ---------------------------------------------------------------------------------


def _ray_domain(domain: Domain, grid_search: bool) -> Any:
    from ray import tune

    if isinstance(domain, Grid) and grid_search:
        return tune.grid_search(list(domain.values))
    if isinstance(domain, Categorical):
        return tune.choice(list(domain.values))
    # Ray Tune quantizes to multiples of the step, Optuna counts steps from ``low``: the two
    # grids agree when both bounds are multiples of the step; otherwise the searcher sees the
    # plain range and its values are snapped onto the step (``_snap``).
    if isinstance(domain, Float):
        if domain.log:
            return tune.loguniform(domain.low, domain.high)
        if domain.step is not None and _on_grid(domain.step, domain.low, domain.high):
            return tune.quniform(domain.low, domain.high, domain.step)
        return tune.uniform(domain.low, domain.high)
    if isinstance(domain, Int):
        if domain.log:
            return tune.lograndint(domain.low, domain.high + 1)
        if domain.step != 1 and _on_grid(domain.step, domain.low, domain.high):
            return tune.qrandint(domain.low, domain.high, domain.step)  # upper bound included
        return tune.randint(domain.low, domain.high + 1)  # upper bound excluded
    raise ConfigError(f"strategy: Ray Tune searchers cannot search a {type(domain).__name__}")


def _on_grid(step: float, *bounds: float) -> bool:
    return all(math.isclose(bound / step, round(bound / step)) for bound in bounds)


def to_ray_space(space: Mapping[str, Any], *, grid_search: bool = False) -> dict[str, Any]:
    """``space`` with Ray Tune domains for leaves; constants and nesting kept.

    Ranges keep their meaning: hypersweep's integer ranges include ``high``, so ``Int(1, 4)``
    becomes ``tune.randint(1, 5)``. ``grid`` domains become ``tune.grid_search`` when
    ``grid_search`` is set (for ``BasicVariantGenerator``), a ``tune.choice`` otherwise.
    """
    converted: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, Domain):
            converted[key] = _ray_domain(value, grid_search)
        elif isinstance(value, Mapping):
            converted[key] = to_ray_space(value, grid_search=grid_search)
        else:
            converted[key] = value
    return converted


def _distribution(domain: Domain) -> BaseDistribution:
    """The Optuna distribution that ``domain.suggest`` records (they must match exactly)."""
    if isinstance(domain, Float):
        return FloatDistribution(domain.low, domain.high, log=domain.log, step=domain.step)
    if isinstance(domain, Int):
        return IntDistribution(domain.low, domain.high, log=domain.log, step=domain.step)
    if isinstance(domain, Categorical):
        return CategoricalDistribution(domain.values)
    raise ConfigError(f"strategy: Ray Tune searchers cannot search a {type(domain).__name__}")


def _snap(domain: Domain, value: Any) -> Any:
    """``value`` as a member of ``domain``'s distribution, or None if it cannot be one.

    Searchers quantize differently from Optuna (``tune.quniform`` rounds to multiples of
    ``q``, Optuna counts steps from ``low``) and may return numpy numbers or floats for ints.
    """
    if isinstance(domain, Categorical):
        for choice in domain.values:
            if type(choice) is type(value) and choice == value:
                return choice
        for choice in domain.values:
            if choice == value:
                return choice
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    if not math.isfinite(number):
        return None
    if isinstance(domain, Float):
        if domain.step is not None:
            steps = math.floor((domain.high - domain.low) / domain.step + 1e-9)
            k = min(max(round((number - domain.low) / domain.step), 0), steps)
            return domain.low + k * domain.step
        return min(max(number, domain.low), domain.high)
    if isinstance(domain, Int):
        steps = (domain.high - domain.low) // domain.step
        k = min(max(round((number - domain.low) / domain.step), 0), steps)
        return int(domain.low + k * domain.step)
    return None


def _lookup(config: Mapping[str, Any], name: str) -> tuple[bool, Any]:
    """The value of dotted ``name`` in a searcher's config: nested, or flat with '/' or '.'."""
    node: Any = config
    for part in name.split("."):
        if not isinstance(node, Mapping) or part not in node:
            break
        node = node[part]
    else:
        return True, node
    for flat in (name.replace(".", "/"), name):
        if flat in config:
            return True, config[flat]
    return False, None


# --- search algorithms behind one interface -------------------------------------------------


class _SearchAlgorithmSearcher:
    """A Ray Tune ``SearchAlgorithm`` (``BasicVariantGenerator``) behind ``Searcher``'s calls.

    A search algorithm hands out ``Trial`` objects with ids of its own; this keeps the map
    from the sweep's trial ids to them.
    """

    def __init__(self, algorithm: Any) -> None:
        self.algorithm = algorithm
        self.ids: dict[str, str] = {}

    def suggest(self, trial_id: str) -> dict[str, Any] | str | None:
        from ray.tune.search import Searcher

        trial = self.algorithm.next_trial()
        if trial is None:
            return Searcher.FINISHED if self.algorithm.is_finished() else None
        self.ids[trial_id] = trial.trial_id
        return dict(trial.config)

    def on_trial_result(self, trial_id: str, result: dict[str, Any]) -> None:
        if trial_id in self.ids:
            self.algorithm.on_trial_result(self.ids[trial_id], result)

    def on_trial_complete(
        self, trial_id: str, result: dict[str, Any] | None = None, error: bool = False
    ) -> None:
        inner = self.ids.pop(trial_id, None)
        if inner is not None:
            self.algorithm.on_trial_complete(inner, result=result, error=error)

    def add_evaluated_point(self, *args: Any, **kwargs: Any) -> None:
        raise NotImplementedError  # variants do not learn from results

    def get_state(self) -> dict[str, Any]:
        state = self.algorithm.get_state()
        if state is False:  # a grid too large to save (Ray Tune's own limit)
            raise NotImplementedError
        return {"algorithm": state, "ids": dict(self.ids)}

    def set_state(self, state: dict[str, Any]) -> None:
        self.algorithm.set_state(state["algorithm"])
        self.ids = dict(state["ids"])


def _check_searcher_goal(searcher: Any, metric: str | None, mode: str | None) -> None:
    """Refuse a searcher created for another metric or mode than the sweep's.

    Ray Tune lets ``HyperOptSearch(metric=..., mode="max")`` carry the goal; the sweep's
    ``metric``/``mode`` would otherwise override it silently and optimize the wrong way.
    """
    layers = [searcher]
    while getattr(layers[-1], "searcher", None) is not None:  # ConcurrencyLimiter, Repeater
        layers.append(layers[-1].searcher)
    for layer in reversed(layers):  # the searcher the user created names the culprit
        own_mode = getattr(layer, "_mode", None)
        own_metric = getattr(layer, "_metric", None)
        name = type(layer).__name__
        if mode is not None and own_mode is not None and own_mode != mode:
            raise ConfigError(
                f"strategy: {name}(mode={own_mode!r}) disagrees with the sweep's mode={mode!r}; "
                f"pass mode={own_mode!r} to the sweep, or create the searcher without a mode"
            )
        if metric is not None and own_metric is not None and own_metric != metric:
            raise ConfigError(
                f"strategy: {name}(metric={own_metric!r}) disagrees with the sweep's metric="
                f"{metric!r}; create the searcher without a metric or for {metric!r}"
            )


# --- the sampler ----------------------------------------------------------------------------


class RaySearcherSampler(BaseSampler):
    """An Optuna sampler whose configs come from a Ray Tune search algorithm.

    Args:
        searcher: a ``ray.tune.search.Searcher`` (``HyperOptSearch``, ``OptunaSearch``...,
            possibly in a ``ConcurrencyLimiter`` or ``Repeater``) or ``BasicVariantGenerator``,
            created without a search space: the sweep's space is given to it.
        space: the sweep's search space.
        metric: the sweep's metric (what the searcher optimizes).
        mode: ``"min"`` or ``"max"``.
        seed: seed of the random fallback for parameters the searcher does not propose.
        state_dir: where the searcher's state is kept for resume (the orchestrator gives the
            sweep's folder); None keeps no state, and a resumed sweep starts the searcher afresh.
    """

    def __init__(
        self,
        searcher: Any,
        space: Mapping[str, Any],
        *,
        metric: str | None,
        mode: str | None,
        seed: int | None = None,
        state_dir: str | os.PathLike[str] | None = None,
    ) -> None:
        from ray.tune.search import SearchAlgorithm, Searcher

        self.searcher = searcher
        self._space = dict(space)
        self._domains = flatten_space(space)
        self._distributions = {name: _distribution(d) for name, d in self._domains.items()}
        _check_searcher_goal(searcher, metric, mode)
        self._metric = metric or getattr(searcher, "metric", None) or "value"
        self._mode = mode or getattr(searcher, "mode", None) or "min"
        self._fallback = RandomSampler(seed=seed)
        self._state_dir = Path(state_dir) if state_dir is not None else None
        self._finished_marker = Searcher.FINISHED
        if isinstance(searcher, SearchAlgorithm):
            self._calls: Any = _SearchAlgorithmSearcher(searcher)
        else:
            self._calls = searcher
        self._ids: dict[int, str] = {}  # trial number -> id the searcher proposed it under
        self._told: set[int] = set()  # trials whose outcome the searcher has
        self._latest: dict[int, dict[str, float]] = {}  # each live trial's last report
        self._iterations: dict[int, int] = {}
        self._proposed: dict[int, dict[str, Any]] = {}
        self._exhausted = False
        self._started = False
        self._token: str | None = None
        self._save_cost = 0.0
        self._saved_at = 0.0
        self._warned: set[str] = set()
        self.restored_trials = 0  # trials the restored state knew (for tests and logs)
        self.replayed_trials = 0
        self.skipped_trials = 0
        self._configure()

    # --- setup -----------------------------------------------------------------------

    def _configure(self) -> None:
        """Give the searcher the sweep's space, metric and mode (Ray Tune's own call)."""
        from ray.tune.search import SearchAlgorithm

        if isinstance(self.searcher, SearchAlgorithm):
            grids = any(isinstance(d, Grid) for d in self._domains.values())
            config = to_ray_space(self._space, grid_search=True)
            self.searcher.set_search_properties(self._metric, self._mode, config)
            # One pass over hs.grid domains, as Ray Tune's num_samples=1; without grids,
            # variants are drawn until the sweep's budget is used.
            samples = 1 if grids else _UNBOUNDED_SAMPLES
            self.searcher.add_configurations(
                {"hypersweep": {"run": _no_trainable, "config": config, "num_samples": samples}}
            )
            return
        config = to_ray_space(self._space)
        if not self.searcher.set_search_properties(self._metric, self._mode, config):
            raise ConfigError(
                f"strategy: {type(self.searcher).__name__} did not accept the sweep's search "
                "space; create it without a space (and use a new instance per sweep): "
                "hypersweep gives it the space, metric and mode"
            )

    def _start(self, study: Study) -> None:
        """Once per driver: restore the searcher's saved state and replay what it missed."""
        if self._started:
            return
        self._started = True
        storage, study_id = study._storage, study._study_id
        attrs = storage.get_study_system_attrs(study_id)
        self._token = attrs.get(TOKEN_ATTR)
        if self._token is None:
            self._token = secrets.token_hex(8)
            storage.set_study_system_attr(study_id, TOKEN_ATTR, self._token)
        else:
            self._restore(study)
        self._replay(study)

    def _state_path(self) -> Path | None:
        return self._state_dir / STATE_FILE if self._state_dir is not None else None

    def _restore(self, study: Study) -> None:
        import cloudpickle

        path = self._state_path()
        if path is None or not path.is_file():
            return
        try:
            state = cloudpickle.loads(path.read_bytes())
            if state.get("token") != self._token or state.get("version") != _STATE_VERSION:
                return
            if state.get("searcher_class") != type(self.searcher).__name__:
                logger.warning(
                    "The saved state of this sweep's strategy is a %s's, not a %s's: the new "
                    "searcher starts afresh",
                    state.get("searcher_class"),
                    type(self.searcher).__name__,
                )
                return
            self._load_searcher(state["searcher"])
        except Exception as error:  # noqa: BLE001 - a stale or foreign file must not stop a sweep
            logger.warning("Could not restore the strategy's state from %s: %s", path, error)
            return
        self._ids = {int(k): v for k, v in state["ids"].items()}
        self._told = set(state["told"])
        self._exhausted = bool(state.get("exhausted", False))
        self.restored_trials = len(self._told)
        logger.info(
            "Strategy %s resumed from its saved state (%d finished trials)",
            type(self.searcher).__name__,
            len(self._told),
        )

    def _replay(self, study: Study) -> None:
        """Tell the searcher about finished trials it has not seen (not rerunning any)."""
        finished = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.FAIL)
        for trial in study.get_trials(deepcopy=False, states=finished):
            if trial.number in self._told or not trial.params:
                continue
            self._tell(trial, trial.state, trial.values, replay=True)
        if self.replayed_trials or self.skipped_trials:
            logger.info(
                "Strategy %s: %d finished trials replayed from storage%s",
                type(self.searcher).__name__,
                self.replayed_trials,
                f", {self.skipped_trials} not (the searcher cannot add evaluated points)"
                if self.skipped_trials
                else "",
            )

    # --- the searcher's state --------------------------------------------------------

    def _layers(self) -> tuple[list[Any], Any]:
        """Wrappers (``ConcurrencyLimiter``, ``Repeater``...) outside in, and the base."""
        from ray.tune.search import Searcher

        wrappers: list[Any] = []
        base = self._calls
        while isinstance(getattr(base, "searcher", None), Searcher):
            wrappers.append(base)
            base = base.searcher
        return wrappers, base

    def _dump_searcher(self) -> dict[str, Any]:
        if isinstance(self._calls, _SearchAlgorithmSearcher):
            return {"algorithm": self._calls.get_state()}
        wrappers, base = self._layers()
        with tempfile.TemporaryDirectory(prefix="hypersweep-searcher-") as folder:
            path = os.path.join(folder, "state")
            base.save(path)
            blob = Path(path).read_bytes()
        return {"wrappers": [w.get_state() for w in wrappers], "base": blob}

    def _load_searcher(self, state: dict[str, Any]) -> None:
        if isinstance(self._calls, _SearchAlgorithmSearcher):
            self._calls.set_state(state["algorithm"])
            return
        wrappers, base = self._layers()
        for wrapper, wrapper_state in zip(wrappers, state["wrappers"], strict=True):
            wrapper.set_state(wrapper_state)
        with tempfile.TemporaryDirectory(prefix="hypersweep-searcher-") as folder:
            path = os.path.join(folder, "state")
            Path(path).write_bytes(state["base"])
            base.restore(path)

    def _save(self, study: Study, *, force: bool = False) -> None:
        """Write the searcher's state after every change while that is cheap (under 20 ms);
        a larger state is written at most ~10% of the time, unless ``force``d."""
        path = self._state_path()
        if path is None:
            return  # no folder to keep it in: nothing to resume from
        now = time.monotonic()
        expensive = self._save_cost > _CHEAP_SAVE
        if not force and expensive and now - self._saved_at < self._save_cost / _SAVE_OVERHEAD:
            return
        import cloudpickle

        try:
            state = {
                "version": _STATE_VERSION,
                "token": self._token,
                "searcher_class": type(self.searcher).__name__,
                "searcher": self._dump_searcher(),
                "ids": dict(self._ids),
                "told": sorted(self._told),
                "exhausted": self._exhausted,
            }
            path.parent.mkdir(parents=True, exist_ok=True)
            staging = path.with_name(f".{path.name}.{os.getpid()}")
            staging.write_bytes(cloudpickle.dumps(state))
            os.replace(staging, path)
        except NotImplementedError:
            self._warn_once(
                "save",
                "%s cannot save its state: a resumed sweep starts it afresh",
                type(self.searcher).__name__,
            )
        finally:
            self._saved_at = time.monotonic()
            self._save_cost = self._saved_at - now

    def _warn_once(self, key: str, message: str, *args: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            logger.warning(message, *args)

    # --- Optuna's sampler interface --------------------------------------------------

    def infer_relative_search_space(
        self, study: Study, trial: FrozenTrial
    ) -> dict[str, BaseDistribution]:
        return dict(self._distributions)

    def sample_relative(
        self, study: Study, trial: FrozenTrial, search_space: dict[str, BaseDistribution]
    ) -> dict[str, Any]:
        if not search_space:
            return {}
        self._start(study)
        number = trial.number
        if number in self._proposed:
            return dict(self._proposed[number])
        if self._exhausted:
            raise StrategyNotReady(exhausted=True)
        trial_id = f"hypersweep_{number:05d}"
        config = self._calls.suggest(trial_id)
        if config is None:
            raise StrategyNotReady(f"{type(self.searcher).__name__} has no config to propose yet")
        if isinstance(config, str) and config == self._finished_marker:
            self._exhausted = True
            raise StrategyNotReady(f"{type(self.searcher).__name__} is finished", exhausted=True)
        self._ids[number] = trial_id
        params: dict[str, Any] = {}
        for name, domain in self._domains.items():
            found, value = _lookup(config, name)
            snapped = _snap(domain, value) if found else None
            if snapped is None:
                self._warn_once(
                    name,
                    "%s proposed no valid value for %s (got %r); drawing it at random",
                    type(self.searcher).__name__,
                    name,
                    value,
                )
                continue
            params[name] = snapped
        self._proposed[number] = params
        # Unthrottled: a resumed driver must know every trial this one started, since a
        # restored searcher cannot be told the result of a proposal it never saw.
        self._save(study, force=True)
        return params

    def sample_independent(
        self,
        study: Study,
        trial: FrozenTrial,
        param_name: str,
        param_distribution: BaseDistribution,
    ) -> Any:
        return self._fallback.sample_independent(study, trial, param_name, param_distribution)

    def reseed_rng(self) -> None:
        self._fallback.reseed_rng()

    def after_trial(
        self,
        study: Study,
        trial: FrozenTrial,
        state: TrialState,
        values: Sequence[float] | None,
    ) -> None:
        self._start(study)
        self._proposed.pop(trial.number, None)
        if trial.number in self._told:
            return
        try:
            self._tell(trial, state, values, replay=False)
        except Exception:  # a searcher's bug must not end the sweep
            logger.exception("%s failed on trial %d's result", type(self.searcher), trial.number)
        self._save(study)

    # --- what the searcher is told ---------------------------------------------------

    def on_trial_result(
        self, study: Study, trial_number: int, step: int, metrics: Mapping[str, float]
    ) -> None:
        """Forward a trial's report (``searcher.on_trial_result``): intermediate results."""
        self._start(study)
        trial_id = self._ids.get(trial_number)
        if trial_id is None:
            return
        iteration = self._iterations.get(trial_number, 0) + 1
        self._iterations[trial_number] = iteration
        self._latest[trial_number] = dict(metrics)
        result = {**metrics, "step": step, "training_iteration": iteration}
        try:
            self._calls.on_trial_result(trial_id, result)
        except Exception:  # a searcher's bug must not end the sweep
            logger.exception("%s failed on a report of trial %d", type(self.searcher), trial_number)

    def _tell(
        self, trial: FrozenTrial, state: TrialState, values: Sequence[float] | None, *, replay: bool
    ) -> None:
        number = trial.number
        self._told.add(number)
        latest = self._latest.pop(number, {})
        iterations = self._iterations.pop(number, len(trial.intermediate_values))
        value = values[0] if values else None
        result: dict[str, Any] | None = None
        if state != TrialState.FAIL and value is not None:
            final = trial.user_attrs.get("metrics") if state == TrialState.COMPLETE else None
            result = {
                **latest,
                **(final or {}),
                self._metric: value,
                "training_iteration": max(iterations, 1),
                "done": state == TrialState.COMPLETE,
            }
        trial_id = self._ids.pop(number, None)
        if trial_id is not None:
            self._calls.on_trial_complete(trial_id, result=result, error=result is None)
            if replay:
                self.replayed_trials += 1
            return
        # Proposed elsewhere (another driver, a clone of population-based training, a
        # searcher state that was lost): pass the point itself, where the searcher can.
        config = unflatten_params(trial.params, self._space)
        try:
            self._calls.add_evaluated_point(
                flatten_config(config, "/"),
                value,
                error=state == TrialState.FAIL,
                pruned=state == TrialState.PRUNED,
                intermediate_values=[v for _, v in sorted(trial.intermediate_values.items())]
                or None,
            )
        except NotImplementedError:
            if replay:
                self.skipped_trials += 1
            else:
                self._warn_once(
                    "add",
                    "%s cannot learn from trials it did not propose (trial %d)",
                    type(self.searcher).__name__,
                    number,
                )
            return
        if replay:
            self.replayed_trials += 1


def _no_trainable(config: dict[str, Any]) -> None:
    """What ``BasicVariantGenerator``'s experiment names as its trainable; never run."""
