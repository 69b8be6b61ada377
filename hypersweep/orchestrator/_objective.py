"""Objectives by value or by reference, so that any worker process can load them.

A callable is serialized with cloudpickle, which also carries functions and closures defined in
a script's ``__main__`` or a notebook (plain pickle cannot). A reference ``module:function`` or
``path/to/file.py:function`` is imported in the worker, which is how YAML sweeps and the
Kubernetes operator name their objective.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hypersweep._errors import ConfigError

Objective = Callable[[dict[str, Any]], Any]


@dataclass(frozen=True)
class ObjectiveRef:
    """An objective in a form that crosses process (and machine) boundaries."""

    display_name: str
    reference: str | None = None
    pickled: bytes | None = None

    @property
    def key(self) -> str:
        """A short id, so that a warm worker loads each objective once."""
        payload = self.pickled if self.pickled is not None else (self.reference or "").encode()
        return hashlib.sha1(payload).hexdigest()[:16]

    def load(self) -> Objective:
        """The callable, imported or unpickled in this process."""
        if self.pickled is not None:
            import cloudpickle

            function: Objective = cloudpickle.loads(self.pickled)
            return function
        assert self.reference is not None
        return load_reference(self.reference)


def load_reference(reference: str, field: str = "objective") -> Objective:
    """Import ``module:function`` or ``file.py:function``, with errors that say what to fix."""
    module_part, sep, attribute = reference.rpartition(":")
    if not sep or not module_part or not attribute:
        raise ConfigError(
            f"{field}: {reference!r} is not a reference; write 'package.module:function' or "
            "'path/to/file.py:function'"
        )
    if module_part.endswith(".py"):
        path = Path(module_part)
        if not path.is_file():
            raise ConfigError(f"{field}: file {module_part!r} does not exist")
        module_name = (
            f"_hypersweep_objective_{hashlib.sha1(str(path.resolve()).encode()).hexdigest()[:8]}"
        )
        module = sys.modules.get(module_name)
        if module is None:
            spec = importlib.util.spec_from_file_location(module_name, path)
            assert spec is not None and spec.loader is not None
            module = importlib.util.module_from_spec(spec)
            sys.modules[module_name] = module
            try:
                spec.loader.exec_module(module)
            except Exception as error:  # noqa: BLE001 - any error of the user's file
                del sys.modules[module_name]
                raise ConfigError(_import_failure(field, module_part, error)) from None
    else:
        try:
            module = importlib.import_module(module_part)
        except ModuleNotFoundError as error:
            if error.name is None or not module_part.startswith(error.name):
                raise ConfigError(_import_failure(field, module_part, error)) from None
            raise ConfigError(
                f"{field}: cannot import module {module_part!r} ({error}); run from the folder "
                "that holds it or install it"
            ) from None
        except Exception as error:  # noqa: BLE001 - any error of the user's module
            raise ConfigError(_import_failure(field, module_part, error)) from None
    function = getattr(module, attribute, None)
    if not callable(function):
        raise ConfigError(f"{field}: {module_part!r} has no function {attribute!r}")
    return function


def _import_failure(field: str, module: str, error: BaseException) -> str:
    """``objective: importing 'train.py' failed: NameError: ... (train.py, line 3: ...)``.

    The location is the user's line that raised: for a syntax error, where Python points; else
    the deepest frame of the traceback outside the import machinery.
    """
    if isinstance(error, SyntaxError) and error.filename:
        where = f"{error.filename}, line {error.lineno}"
        if error.text:
            where += f": {error.text.strip()}"
        message = f"SyntaxError: {error.msg}"
    else:
        frames = [
            frame
            for frame in traceback.extract_tb(error.__traceback__)
            if not frame.filename.startswith("<frozen") and frame.filename != __file__
        ]
        where = ""
        if frames:
            frame = frames[-1]
            where = f"{frame.filename}, line {frame.lineno}"
            if frame.line:
                where += f": {frame.line.strip()}"
        message = f"{type(error).__name__}: {error}"
    located = f" (at {where})" if where else ""
    return f"{field}: importing {module!r} failed: {message}{located}"


def resolve_objective(objective: Objective | str) -> ObjectiveRef:
    """Check ``objective`` in the driver and wrap it for the workers."""
    if isinstance(objective, str):
        load_reference(objective)
        return ObjectiveRef(display_name=objective, reference=objective)
    if not callable(objective):
        raise ConfigError(
            f"objective: expected a function config -> float | dict, or a 'module:function' "
            f"reference, got {type(objective).__name__}"
        )
    import cloudpickle

    from hypersweep.orchestrator._ray_parameters import self_contained

    name = getattr(objective, "__qualname__", type(objective).__name__)
    # A tune.with_parameters function carries its objects (a launcher on Ray puts them in the
    # object store once, see RayLauncher.start).
    return ObjectiveRef(display_name=name, pickled=cloudpickle.dumps(self_contained(objective)))


def reference_of(objective: Objective | str) -> str | None:
    """A reference that re-imports ``objective`` later (for ``hypersweep resume``), if any."""
    if isinstance(objective, str):
        return objective
    module = getattr(objective, "__module__", None)
    qualname = getattr(objective, "__qualname__", "")
    if not module or module == "__main__" or "<" in qualname or "." in qualname:
        return None
    return f"{module}:{qualname}"
