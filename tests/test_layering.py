"""The package's layers import one way only, read from the source with ``ast``.

* ``strategies`` is pure logic at the bottom: it imports no other layer (only the shared
  ``hypersweep._errors``), and its modules import each other without cycles.
* ``kube`` (the Kubernetes plumbing) sits below both ``launchers`` and ``operators``: it imports
  neither of them.
* ``launchers`` and ``operators`` never import each other; they share ``kube`` instead.

Every import counts, also those inside functions and ``if TYPE_CHECKING:`` blocks: an import
deferred into a function is still an arrow between the layers.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

import hypersweep

ROOT = Path(hypersweep.__file__).resolve().parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> Iterator[tuple[int, str]]:
    """(line, module) for every import in ``path``; ``from a import b`` yields ``a`` and
    ``a.b`` (b may be a module), relative imports resolved."""
    module = _module_name(path)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            yield node.lineno, base
            for alias in node.names:
                yield node.lineno, f"{base}.{alias.name}"


def _arrows(package: str) -> dict[str, list[str]]:
    """Imports from modules of ``hypersweep.<package>``: ``file:line`` -> imported modules."""
    found: dict[str, list[str]] = {}
    for path in sorted((ROOT / package).rglob("*.py")):
        for line, imported in _imports(path):
            found.setdefault(f"{path.relative_to(ROOT.parent)}:{line}", []).append(imported)
    return found


def _offending(package: str, forbidden: tuple[str, ...]) -> list[str]:
    """Where modules of ``package`` import any of the ``forbidden`` packages."""
    prefixes = tuple(f"hypersweep.{name}" for name in forbidden)
    return sorted(
        f"{where} imports {imported}"
        for where, imports in _arrows(package).items()
        for imported in imports
        if imported in prefixes or imported.startswith(tuple(p + "." for p in prefixes))
    )


@pytest.mark.parametrize(
    ("package", "forbidden"),
    [
        ("launchers", ("operators",)),
        ("operators", ("launchers",)),
        ("kube", ("launchers", "operators")),
        (
            "strategies",
            ("orchestrator", "launchers", "operators", "kube", "integrations", "testing"),
        ),
    ],
)
def test_a_layer_does_not_import_the_layers_it_must_not(
    package: str, forbidden: tuple[str, ...]
) -> None:
    assert (ROOT / package / "__init__.py").is_file()
    assert _offending(package, forbidden) == []


def test_strategies_import_nothing_of_the_package_but_errors() -> None:
    """Pure logic imports no other layer, top-level modules (``_cli``, ``_progress``...)
    included: of ``hypersweep`` only ``hypersweep._errors`` and its own modules."""
    allowed = ("hypersweep._errors", "hypersweep.strategies")
    found = sorted(
        f"{where} imports {imported}"
        for where, imports in _arrows("strategies").items()
        for imported in imports
        if (imported == "hypersweep" or imported.startswith("hypersweep."))
        and not imported.startswith(("hypersweep._errors.", "hypersweep.strategies."))
        and imported not in allowed
    )
    assert found == []


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` (module -> modules it imports), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(graph.get(node, ())):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target)):
                return found
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_strategies_modules_import_each_other_without_cycles() -> None:
    package = ROOT / "strategies"
    modules = {_module_name(path): path for path in package.glob("*.py")}
    graph = {
        name: {
            imported
            for _, imported in _imports(path)
            if imported in modules and imported != name and not imported.endswith(".__init__")
        }
        for name, path in modules.items()
        if path.name != "__init__.py"  # the package re-exports its modules: not a cycle
    }
    graph = {name: {t for t in targets if t in graph} for name, targets in graph.items()}
    assert _cycle(graph) is None


def test_the_cycle_finder_finds_a_cycle() -> None:
    """The check above would pass vacuously if ``_cycle`` never found one."""
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None
