"""The one-way arrows of ARCHITECTURE.md, checked on the source.

Every import counts, at the top of a module or inside a function (a lazy import is still a
dependency); only imports under ``if TYPE_CHECKING:`` are left out, since they never run.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PACKAGES = {"segearth_cli": REPO / "segearth_cli", "segearth_model": REPO / "model"}
#: Modules of segearth_cli/commands/ that are shared helpers of the command layer, not commands.
COMMAND_HELPERS = {"segearth_cli.commands.options", "segearth_cli.commands.progress"}


def _module_name(package: str, root: Path, path: Path) -> str:
    parts = [package, *path.relative_to(root).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking_block(node: ast.AST) -> bool:
    if not isinstance(node, ast.If):
        return False
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Absolute names of the project modules ``tree`` imports."""
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]

    def visit(node: ast.AST) -> None:
        if _is_type_checking_block(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                origin = ".".join(base + ([node.module] if node.module else []))
            else:
                origin = node.module or ""
            found.add(origin)
            # `from . import x` and `from .pkg import module` name modules too.
            found.update(f"{origin}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    modules: dict[str, tuple[Path, bool]] = {}
    for package, root in PACKAGES.items():
        for path in root.rglob("*.py"):
            modules[_module_name(package, root, path)] = (path, path.name == "__init__.py")
    graph = {}
    for name, (path, is_package) in modules.items():
        imported = _imports(ast.parse(path.read_text(encoding="utf-8")), name, is_package)
        graph[name] = {target for target in imported if target in modules and target != name}
    return graph


GRAPH = import_graph()


def test_the_graph_sees_the_known_seam():
    # Guards the walker itself: a parser that found nothing would pass every rule below.
    assert "segearth_model.preprocess" in GRAPH["segearth_model.predictor"]
    assert any(target.startswith("segearth_model") for target in GRAPH["segearth_cli.segmenter"])
    assert "segearth_cli.segmenter" in GRAPH["segearth_cli.commands.query"]


def test_only_the_segmenter_module_imports_the_model():
    offenders = sorted(name for name, targets in GRAPH.items()
                       if name.startswith("segearth_cli") and name != "segearth_cli.segmenter"
                       and any(target.startswith("segearth_model") for target in targets))
    assert offenders == []


def test_the_model_knows_nothing_of_the_cli():
    offenders = sorted(name for name, targets in GRAPH.items()
                       if name.startswith("segearth_model") and any(t.startswith("segearth_cli") for t in targets))
    assert offenders == []


def test_the_pipeline_never_reaches_up_into_the_command_layer():
    upper = ("segearth_cli.commands", "segearth_cli.cli", "segearth_cli.launch")
    offenders = sorted(f"{name} -> {target}" for name, targets in GRAPH.items()
                       if name.startswith("segearth_cli") and not name.startswith(upper)
                       for target in targets if target.startswith(upper))
    assert offenders == []


def test_no_command_imports_another_command():
    commands = {name for name in GRAPH if name.startswith("segearth_cli.commands.")} - COMMAND_HELPERS
    offenders = sorted(f"{name} -> {target}" for name in commands for target in GRAPH[name] if target in commands)
    assert offenders == []


def test_no_import_cycle():
    # Parent packages are imported on the way to their modules, so a module that imports its
    # own package's __init__ is not a cycle worth reporting; every other back edge is.
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def walk(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(GRAPH[node]):
            if node.startswith(target + "."):
                continue
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                walk(target, path + [target])
        state[node] = 2

    for start in sorted(GRAPH):
        if start not in state:
            walk(start, [start])
    assert cycles == []


@pytest.mark.parametrize("argv", [["--help"], ["models", "list", "--help"]])
def test_the_cli_starts_without_posix_only_modules(argv):
    # Windows has no fcntl; the help screen must still come up there.
    script = ("import sys; sys.modules['fcntl'] = None; from segearth_cli import cli; "
              f"sys.exit(cli.run({argv!r}))")
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "Usage" in done.stdout


def test_listing_models_never_imports_torch(tmp_path):
    script = ("import sys; from segearth_cli import cli; code = cli.run(['models', 'list']); "
              "sys.exit(3 if 'torch' in sys.modules else code)")
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path), "HF_HUB_OFFLINE": "1"}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=REPO, timeout=120,
                          env=env)
    assert done.returncode == 0, done.stderr
