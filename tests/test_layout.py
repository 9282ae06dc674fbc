"""
The package's shape: imports point down the layers and never round in a
cycle, modules stay small, and every module names test modules that exist.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Iterator

from twisted.trial.unittest import SynchronousTestCase

import imgrelay

_PACKAGE = Path(imgrelay.__file__).resolve().parent
_ROOT = _PACKAGE.parent

#: What each layer may import, besides itself. The top level (config, tap,
#: daemon, legacy and the package) and the test helpers may import any.
_ALLOWED = {
    "core": set(),
    "wire": {"core"},
    "transport": {"core", "wire"},
    "observe": {"core"},
    "local": {"core", "wire", "transport", "observe"},
    "proxy": {"core", "wire", "transport", "observe", "local"},
    "cache": {"core", "wire", "transport", "observe", "local"},
    # The command builds a proxy's config (imgrelay migrate), as the twistd
    # options do.
    "cli": {"core", "wire", "transport", "observe", "local", "proxy", "top"},
}

#: The most lines a module may have: about 400, a screenful or two of one
#: job.
_MOST_LINES = 410


def _modules() -> Iterator[tuple[str, Path]]:
    for path in sorted(_PACKAGE.rglob("*.py")):
        relative = path.relative_to(_ROOT).with_suffix("")
        if "pb" in relative.parts:
            continue  # generated
        name = ".".join(relative.parts).removesuffix(".__init__")
        yield name, path


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) > 1 and (_PACKAGE / parts[1]).is_dir():
        return parts[1]
    return "top"


def _runtimeImports(path: Path) -> Iterator[tuple[str, int]]:
    """
    @return: Every imgrelay module C{path} imports when it runs, with the
        line: imports under C{if TYPE_CHECKING:} only name types.
    """
    tree = ast.parse(path.read_text())
    skipped: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            skipped.update(id(child) for stmt in node.body for child in ast.walk(stmt))
    for node in ast.walk(tree):
        if id(node) in skipped:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgrelay"):
            # "from imgrelay.wire import fetch" imports the module fetch.
            package = _ROOT.joinpath(*node.module.split(".")).is_dir()
            for alias in node.names:
                yield (f"{node.module}.{alias.name}" if package else node.module), node.lineno
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("imgrelay"):
                    yield alias.name, node.lineno


class LayoutTests(SynchronousTestCase):
    """
    The subpackages show the architecture, and the code keeps to it.
    """

    def test_importsPointDown(self) -> None:
        """
        A module imports only from its own layer and the layers below it:
        the proxy and the cache never import each other, observe knows no
        daemon, core imports nothing of imgrelay's outside core.
        """
        wrong = []
        for module, path in _modules():
            layer = _layer(module)
            if layer not in _ALLOWED:
                continue
            for target, line in _runtimeImports(path):
                targetLayer = _layer(target)
                if targetLayer == "top" and "top" not in _ALLOWED[layer]:
                    wrong.append(f"{module}:{line} imports {target} (the top level)")
                elif targetLayer != layer and targetLayer not in _ALLOWED[layer]:
                    wrong.append(f"{module}:{line} imports {target} ({layer} -> {targetLayer})")
        self.assertEqual(wrong, [])

    def test_noCycles(self) -> None:
        """
        No two modules import each other, directly or through others.
        """
        modules = dict(_modules())
        graph = {
            module: {t for t, _ in _runtimeImports(path) if t in modules and t != module}
            for module, path in modules.items()
        }
        # Importing a module runs its package's __init__, which holds only a
        # docstring or re-exports: an edge to the package is no cycle risk.
        cycles = []
        state: dict[str, int] = {}

        def visit(node: str, trail: list[str]) -> None:
            state[node] = 1
            for target in sorted(graph[node]):
                if state.get(target) == 1:
                    cycles.append(" -> ".join(trail[trail.index(target):] + [node, target]) if target in trail
                                  else f"{node} -> {target}")
                elif target not in state:
                    visit(target, trail + [node])
            state[node] = 2

        for module in sorted(graph):
            if module not in state:
                visit(module, [])
        self.assertEqual(cycles, [])

    def test_smallModules(self) -> None:
        """
        No module is longer than about 400 lines (L{_MOST_LINES}).
        """
        long = {module: n for module, path in _modules() if (n := len(path.read_text().splitlines())) > _MOST_LINES}
        self.assertEqual(long, {})

    def test_testCaseNames(self) -> None:
        """
        Every module with code starts with a C{test-case-name} line naming
        test modules that exist.
        """
        wrong = []
        for module, path in _modules():
            text = path.read_text()
            if module.endswith("__init__") or path.name == "__init__.py":
                continue
            match = re.match(r"# -\*- test-case-name: ([\w., ]+) -\*-\n", text)
            if match is None:
                wrong.append(f"{module}: no test-case-name line")
                continue
            for name in match.group(1).split(","):
                name = name.strip()
                if not (_ROOT / Path(*name.split("."))).with_suffix(".py").is_file():
                    wrong.append(f"{module}: {name} does not exist")
        self.assertEqual(wrong, [])
