"""Ray Tune's ``tune.with_parameters`` in a hypersweep objective.

``tune.with_parameters(train_fn, data=big)`` returns a function whose closure holds Ray Tune's
parameter registry: the large objects themselves until Ray is connected, then only their
references in Ray's object store, which each trial reads back with ``ray.get``. hypersweep
ships an objective as a pickle, so:

- :func:`self_contained` makes a registry hold its objects again when it holds only
  references, so that the objective runs where Ray is not connected (local worker processes,
  Kubernetes pods), as it would outside any tuner;
- :func:`put_in_object_store` puts a registry's objects in the object store once, for a sweep
  on Ray, so that what every new actor receives holds only references.

Nothing here imports Ray unless the objective comes from ``tune.with_parameters``.
"""

from __future__ import annotations

import sys
from typing import Any

from hypersweep.orchestrator._objective import ObjectiveRef

__all__ = ["put_in_object_store", "self_contained"]


def _registries(function: Any) -> list[Any]:
    """The Ray Tune parameter registries in ``function``'s closure."""
    module = sys.modules.get("ray.tune.registry")
    registry_type = getattr(module, "_ParameterRegistry", None)
    if registry_type is None:
        return []  # Ray Tune was never imported: not a with_parameters function
    found = []
    for cell in getattr(function, "__closure__", None) or ():
        try:
            value = cell.cell_contents
        except ValueError:  # an empty cell
            continue
        if isinstance(value, registry_type):
            found.append(value)
    return found


def self_contained(function: Any) -> Any:
    """Let ``function``'s registries hold their objects, not only object-store references.

    The registry is shared with the caller's function, which still works: Ray Tune reads the
    references while Ray is connected and the objects otherwise.
    """
    for registry in _registries(function):
        missing = {k: ref for k, ref in registry.references.items() if k not in registry.to_flush}
        if missing:
            import ray

            if ray.is_initialized():
                registry.to_flush.update(zip(missing, ray.get(list(missing.values())), strict=True))
    return function


def put_in_object_store(objective: ObjectiveRef) -> Any:
    """The objective's function with its with_parameters objects put in Ray's object store
    (connected now), or None when it holds none.

    Give the function to ``ray.put`` as it is: Ray's own serializer then records the objects'
    references in it, so they stay alive and reachable from every actor (a plain pickle of a
    reference does not).
    """
    if objective.pickled is None or b"_ParameterRegistry" not in objective.pickled:
        return None
    import cloudpickle

    function = cloudpickle.loads(objective.pickled)
    registries = _registries(function)
    if not any(registry.to_flush for registry in registries):
        return None
    for registry in registries:
        registry.flush()  # ray.put of each object, once; only the references stay
    return function
