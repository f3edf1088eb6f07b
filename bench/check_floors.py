"""Run the test suite against the lowest dependency versions pyproject.toml allows.

Every requirement of ``[project] dependencies`` and of the ``test`` extra must carry a
``>=`` floor; each is pinned to exactly that version (``name==floor``) in a fresh virtual
environment, wheels only, while packages nobody names directly resolve as usual. The
project is then installed editable without dependencies and ``python -m pytest -x -q`` runs
in the repository. A floor that is not a released version, a pin the others cannot live
with, or a failing test all end the run non-zero: raise that floor in pyproject.toml.

    python3 bench/check_floors.py [--venv DIR] [--override 'torch==2.13.0'] [-- PYTEST ARGS]

``--override`` replaces one pin (for example a torch floor that cannot be downloaded on a
slow link); the run then prints that it did not test that floor.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
REQUIREMENT = re.compile(r"^\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*(.*)$")
FLOOR = re.compile(r">=\s*([0-9][0-9A-Za-z.+!-]*)")


def requirements(pyproject: Path) -> list[str]:
    try:
        import tomllib
    except ModuleNotFoundError:
        raise SystemExit("check_floors.py needs Python 3.11 or newer (tomllib)") from None
    project = tomllib.loads(pyproject.read_text())["project"]
    return [*project["dependencies"], *project.get("optional-dependencies", {}).get("test", [])]


def floor_pins(lines: list[str]) -> dict[str, str]:
    """Package name -> ``name==floor`` for every requirement; one without a floor is an error."""
    pins = {}
    for line in lines:
        match = REQUIREMENT.match(line)
        floor = FLOOR.search(match.group(3)) if match else None
        if floor is None:
            raise SystemExit(f"pyproject.toml: {line!r} has no >= floor to test")
        name = match.group(1)
        pins[canonical(name)] = f"{name}=={floor.group(1)}"
    return pins


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def run(command: list[str], **kwargs) -> int:
    print("$", " ".join(command), flush=True)
    return subprocess.run(command, **kwargs).returncode


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, help="build the environment here and keep it (default: a temporary one)")
    parser.add_argument("--override", action="append", default=[], metavar="NAME==VERSION",
                        help="pin this package to this version instead of its floor (repeatable)")
    parser.add_argument("pytest_args", nargs="*", help="after --: arguments for pytest (default: -x -q)")
    args = parser.parse_args()

    pins = floor_pins(requirements(REPO / "pyproject.toml"))
    overridden = []
    for override in args.override:
        name = canonical(re.split(r"[=<>!~ ]", override, maxsplit=1)[0])
        if name not in pins:
            raise SystemExit(f"--override {override}: {name} is not a requirement of pyproject.toml")
        overridden.append(f"{pins[name]} (replaced by {override})")
        pins[name] = override

    temporary = None
    venv = args.venv
    if venv is None:
        temporary = tempfile.TemporaryDirectory(prefix="segearth-floors-")
        venv = Path(temporary.name) / "venv"
    python = venv / "bin" / "python"
    # The child processes must see the virtual environment only, not a caller's PYTHONPATH.
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV")}
    started = time.perf_counter()
    try:
        print("floors under test:", ", ".join(pins.values()), flush=True)
        if run([sys.executable, "-m", "venv", "--clear", str(venv)]) != 0:
            return 1
        requirements_file = venv / "floors.txt"
        requirements_file.write_text("\n".join(pins.values()) + "\n")
        install = [str(python), "-m", "pip", "install", "--disable-pip-version-check", "--quiet"]
        if run([*install, "--only-binary=:all:", "-r", str(requirements_file)], env=env) != 0:
            print("floors: FAILED to install (a floor is not a released wheel, or the floors conflict)")
            return 1
        if run([*install, "--no-deps", "-e", str(REPO)], env=env) != 0:
            print("floors: FAILED to install the project itself")
            return 1
        installed = subprocess.run([str(python), "-m", "pip", "list", "--format=freeze", "--disable-pip-version-check"],
                                   env=env, capture_output=True, text=True).stdout.split()
        wanted = set(pins)
        print("installed:", ", ".join(line for line in installed if canonical(line.split("==")[0]) in wanted))
        result = run([str(python), "-m", "pytest", *(args.pytest_args or ["-x", "-q"])], cwd=REPO, env=env)
    finally:
        if temporary is not None:
            temporary.cleanup()
    minutes = (time.perf_counter() - started) / 60
    verdict = "PASSED" if result == 0 else f"FAILED (pytest exit {result})"
    print(f"floors: {verdict} in {minutes:.1f} min")
    for line in overridden:
        print(f"floors: not tested: {line}")
    return result


if __name__ == "__main__":
    sys.exit(main())
