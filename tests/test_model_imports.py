"""The model package's import structure: torch-free entry points and no import cycle."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from segearth_model.device import resolve_device, resolve_devices, resolve_dtype
from segearth_model.precision import DTYPE_SPELLINGS, check_device_spelling, check_dtype_spelling, device_names

MODEL_DIR = Path(__file__).resolve().parents[1] / "model"

TORCH_FREE_USE = """
import sys
import segearth_model
from segearth_model import TINY_RANDOM, ModelLoadError, SegEarthR1Config
from segearth_model.hub import download_checkpoint, hub_cache_dir, hub_offline, resolve_checkpoint_dir
from segearth_model.precision import check_device_spelling, check_dtype_spelling

assert TINY_RANDOM == "tiny-random"
assert hub_offline()
hub_cache_dir()
assert resolve_checkpoint_dir(sys.argv[1]).is_dir()
try:
    resolve_checkpoint_dir("earth-insights/not-in-this-cache")
except ModelLoadError:
    pass
else:
    raise AssertionError("an uncached repo resolved while offline")
assert check_dtype_spelling("bf16") == "bfloat16" and check_device_spelling("cuda:1") == "cuda:1"
loaded = sorted(name for name in ("torch", "transformers", "numpy") if name in sys.modules)
assert not loaded, loaded
"""


def test_names_hub_and_spellings_never_import_torch(tmp_path):
    env = {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "cache")}
    result = subprocess.run(
        [sys.executable, "-c", TORCH_FREE_USE, str(tmp_path)], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0, result.stderr


def _imported_modules(path: Path) -> set[str]:
    """The package modules ``path`` imports, at module level or inside functions."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module:
                found.add(node.module.split(".")[0])
            elif node.level == 1:
                found.update(alias.name for alias in node.names)
            elif node.module and node.module.startswith("segearth_model."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(a.name.split(".")[1] for a in node.names if a.name.startswith("segearth_model."))
    return found


def test_model_package_has_no_import_cycle():
    modules = {path.stem for path in MODEL_DIR.glob("*.py")} - {"__init__"}
    graph = {name: _imported_modules(MODEL_DIR / f"{name}.py") & modules for name in modules}
    assert graph["tiny_random"] and graph["loading"], "the walk found no imports at all"
    visiting: list[str] = []
    done: set[str] = set()

    def visit(name: str) -> None:
        if name in visiting:
            raise AssertionError("import cycle: " + " -> ".join(visiting[visiting.index(name) :] + [name]))
        if name in done:
            return
        visiting.append(name)
        for imported in sorted(graph[name]):
            visit(imported)
        visiting.pop()
        done.add(name)

    for name in sorted(graph):
        visit(name)


@pytest.mark.parametrize(
    "spelling, name, dtype",
    [
        ("fp32", "float32", torch.float32),
        ("float32", "float32", torch.float32),
        ("FP32", "float32", torch.float32),
        ("bf16", "bfloat16", torch.bfloat16),
        ("bfloat16", "bfloat16", torch.bfloat16),
        ("fp16", "float16", torch.float16),
        ("float16", "float16", torch.float16),
        # Mixed precision loads float32 weights, then casts all but the mask heads to bfloat16.
        ("MIXED", "mixed", torch.float32),
    ],
)
def test_dtype_spellings_mean_the_same_with_and_without_torch(spelling, name, dtype):
    assert check_dtype_spelling(spelling) == name
    assert resolve_dtype(spelling, torch.device("cpu")) == dtype


def test_every_listed_dtype_spelling_resolves():
    for spelling in DTYPE_SPELLINGS:
        assert resolve_dtype(spelling, torch.device("cpu")).is_floating_point, spelling
    assert check_dtype_spelling("auto") == "auto"


@pytest.mark.parametrize("spelling", ["int8", "fp8", "double", ""])
def test_unknown_dtype_is_refused_the_same_way_everywhere(spelling):
    expected = r"unknown dtype .*expected auto, float32 \(fp32\), bfloat16 \(bf16\), float16 \(fp16\) or mixed"
    with pytest.raises(ValueError, match=expected) as without_torch:
        check_dtype_spelling(spelling)
    with pytest.raises(ValueError) as with_torch:
        resolve_dtype(spelling, torch.device("cpu"))
    assert str(with_torch.value) == str(without_torch.value)


@pytest.mark.parametrize("spelling", ["tpu", "gpu", "cuda:", "cuda:x", "CPU", "meta", "cuda,cuda:1", "cuda:0,cpu",
                                      "cuda:0,", "cuda:0;cuda:1"])
def test_unknown_device_is_refused_the_same_way_everywhere(spelling):
    with pytest.raises(ValueError, match=r"unknown device .*expected auto, cpu, cuda, cuda:N, a list cuda:N,cuda:M or mps") as without_torch:
        check_device_spelling(spelling)
    with pytest.raises(ValueError) as with_torch:
        resolve_device(spelling)
    assert str(with_torch.value) == str(without_torch.value)


def test_known_device_spellings():
    for spelling in ("auto", "cpu", "cuda", "cuda:0", "cuda:12", "mps", "cuda:0,cuda:2", "cuda:3,cuda:1,cuda:0"):
        assert check_device_spelling(spelling) == spelling
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in {"cpu", "cuda", "mps"}


def test_a_gpu_list_names_each_gpu_once():
    assert device_names("cuda:0,cuda:2") == ["cuda:0", "cuda:2"]
    assert device_names("cpu") == ["cpu"]
    with pytest.raises(ValueError, match="names a GPU twice"):
        check_device_spelling("cuda:1,cuda:1")


def test_one_device_resolves_to_one_model_copy():
    assert resolve_devices("cpu") == [torch.device("cpu")]
    assert resolve_devices(torch.device("cpu")) == [torch.device("cpu")]


@pytest.mark.skipif(torch.cuda.device_count() > 0, reason="checks the refusal on a machine without GPUs")
def test_a_gpu_list_needs_the_gpus():
    with pytest.raises(ValueError, match="no CUDA device"):
        resolve_devices("cuda:0,cuda:1")
