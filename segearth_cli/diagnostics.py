"""What is installed and whether it works: the facts behind ``segearth doctor``.

Nothing here needs the network. ``smoke_test`` runs the built-in tiny-random model end to
end on a small generated scene in a temporary folder (GeoTIFF, GeoPackage and GeoJSON
through the same code path as ``segearth query``).
"""

from __future__ import annotations

import platform
import sys
import tempfile
import time
import traceback
from pathlib import Path
from typing import Any, Callable

from . import __version__
from .atomic import future_folder_problem
from .errors import failure_line
from .model_cache import cached_models
from .query import OutputTarget, QueryOptions, run_query
from .segmenter import compute_dtype, device_name, hub_cache_dir, hub_offline, load_segmenter

SMOKE_QUESTION = "where are the buildings?"


def _version_of(module_name: str, extra: Callable[[Any], dict[str, Any]] | None = None) -> dict[str, Any]:
    try:
        module = __import__(module_name)
    except Exception as exc:  # noqa: BLE001 - a broken install is exactly what doctor must show
        return {"version": None, "error": failure_line(exc)[:200]}
    info: dict[str, Any] = {"version": getattr(module, "__version__", "unknown")}
    if extra is not None:
        try:
            info.update(extra(module))
        except Exception as exc:  # noqa: BLE001
            info["error"] = failure_line(exc)
    return info


def _torch_details(torch) -> dict[str, Any]:
    cuda = bool(torch.cuda.is_available())
    details: dict[str, Any] = {
        "cuda_available": cuda,
        "cuda_version": torch.version.cuda,
        "mps_available": bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()),
        "gpus": [],
    }
    if cuda:
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            details["gpus"].append(f"{props.name} ({props.total_memory / 2**30:.0f} GiB)")
    return details


def _auto_device() -> dict[str, Any]:
    try:
        return {"device": device_name("auto"), "dtype": compute_dtype("auto", "auto")}
    except Exception as exc:  # noqa: BLE001
        return {"device": None, "error": failure_line(exc)}


def _writable(folder: Path) -> tuple[bool, str]:
    """Whether files can be created in ``folder`` (or, if it does not exist yet, where it would be made)."""
    existing, problem = future_folder_problem(folder)
    if existing != folder:
        return problem is None, f"does not exist yet; {problem or f'{existing} is writable'}"
    return problem is None, problem or "writable"


def collect() -> dict[str, Any]:
    """Everything doctor reports, as plain JSON values."""
    cache_dir = hub_cache_dir()
    writable, writable_note = _writable(cache_dir)
    try:
        models, cache_warnings = cached_models(cache_dir)
        cached = [f"{m.repo}@{m.commit[:12]}" + (f" ({', '.join(m.refs)})" if m.refs else "") for m in models]
    except Exception as exc:  # noqa: BLE001
        cached, cache_warnings = [], [f"cannot scan the cache: {exc}"]
    return {
        "segearth": __version__,
        "python": f"{platform.python_version()} ({sys.executable})",
        "platform": platform.platform(),
        "torch": _version_of("torch", _torch_details),
        "transformers": _version_of("transformers"),
        "huggingface_hub": _version_of("huggingface_hub"),
        "rasterio": _version_of("rasterio", lambda m: {"gdal": m.__gdal_version__,
                                                       "proj": getattr(m, "__proj_version__", None)}),
        "pyproj": _version_of("pyproj", lambda m: {"proj": m.proj_version_str}),
        "pyogrio": _version_of("pyogrio", lambda m: {"gdal": m.__gdal_version_string__}),
        "geopandas": _version_of("geopandas"),
        "shapely": _version_of("shapely", lambda m: {"geos": m.geos_version_string}),
        "numpy": _version_of("numpy"),
        "auto": _auto_device(),
        "model_cache": {
            "path": str(cache_dir),
            "writable": writable,
            "note": writable_note,
            "offline": hub_offline(),
            "models": ["tiny-random (built-in)", *cached],
            "warnings": cache_warnings,
        },
    }


def _write_smoke_scene(path: Path) -> None:
    import numpy as np
    import rasterio
    from rasterio.transform import Affine

    height, width = 192, 256
    rows, cols = np.mgrid[0:height, 0:width]
    red = ((rows // 24 + cols // 32) % 2 * 160 + 40).astype(np.uint8)
    green = (cols * 255 // (width - 1)).astype(np.uint8)
    blue = (rows * 255 // (height - 1)).astype(np.uint8)
    profile = {"driver": "GTiff", "width": width, "height": height, "count": 3, "dtype": "uint8",
               "crs": "EPSG:32633", "transform": Affine(2.0, 0.0, 500000.0, 0.0, -2.0, 4650000.0)}
    with rasterio.open(path, "w", **profile) as dataset:
        dataset.write(np.stack([red, green, blue]))


def _check_smoke_outputs(scene: Path, raster: Path, vectors: list[Path]) -> list[str]:
    import numpy as np
    import pyogrio
    import rasterio

    problems = []
    with rasterio.open(scene) as source, rasterio.open(raster) as mask:
        if (mask.width, mask.height) != (source.width, source.height):
            problems.append(f"{raster.name}: size {mask.width}x{mask.height}, scene {source.width}x{source.height}")
        if mask.crs != source.crs or not mask.transform.almost_equals(source.transform):
            problems.append(f"{raster.name}: georeferencing differs from the scene")
        values = set(np.unique(mask.read(1)).tolist())
        if not values <= {0, 1, 255}:
            problems.append(f"{raster.name}: unexpected mask values {sorted(values)}")
    for vector in vectors:
        try:
            pyogrio.read_info(vector)
        except Exception as exc:  # noqa: BLE001
            problems.append(f"{vector.name}: cannot be read back ({exc})")
    return problems


def smoke_test() -> dict[str, Any]:
    """tiny-random end to end on a generated scene; returns pass/fail with the details."""
    started = time.perf_counter()
    result: dict[str, Any] = {"passed": False, "problems": []}
    try:
        with tempfile.TemporaryDirectory(prefix="segearth-smoke-") as folder:
            folder_path = Path(folder)
            scene = folder_path / "scene.tif"
            _write_smoke_scene(scene)
            outputs = [folder_path / name for name in ("mask.tif", "answer.gpkg", "answer.geojson")]
            # The device and dtype a real run would get, so a broken GPU set-up shows here.
            segmenter = load_segmenter("tiny-random", revision=None, device="auto", dtype="auto",
                                       task="reasoning", quiet=True)
            result["device"] = segmenter.identity.get("device", "unknown")
            # Two overlapping windows: the smallest run that still exercises the blend.
            report = run_query(scene, [SMOKE_QUESTION], [OutputTarget.for_path(p) for p in outputs], segmenter,
                               QueryOptions(mode="tiled", window=192))
            result["windows_run"] = report.windows_run
            missing = [p.name for p in outputs if not p.is_file()]
            result["problems"] = [f"{name}: not written" for name in missing] or _check_smoke_outputs(
                scene, outputs[0], outputs[1:]
            )
            result["passed"] = not result["problems"]
    except Exception as exc:  # noqa: BLE001 - the smoke test reports failures, it does not raise them
        result["problems"].append(failure_line(exc))
        result["traceback"] = traceback.format_exc(limit=6)
    result["seconds"] = round(time.perf_counter() - started, 2)
    return result
