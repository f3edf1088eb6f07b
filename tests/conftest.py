"""Fixtures shared by the test modules."""

from __future__ import annotations

import os
import shutil
import subprocess
import warnings
from pathlib import Path

import pytest

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
#: Every skip for want of the shared fixtures names this folder.
SHARED_LABEL = "../shared"


def _in_ci() -> bool:
    return os.environ.get("CI", "").strip().lower() in ("1", "true", "yes")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """In CI (``CI=true``), a test skipped because ../shared is absent fails instead.

    Locally the parity and real-scene tests skip without the shared fixtures; in CI that
    skip would hide exactly the checks that matter.
    """
    outcome = yield
    report = outcome.get_result()
    if report.skipped and _in_ci() and isinstance(report.longrepr, tuple) and SHARED_LABEL in report.longrepr[2]:
        report.outcome = "failed"
        report.longrepr = f"CI requires the shared fixtures: {report.longrepr[2]}"


@pytest.fixture(scope="session", autouse=True)
def private_prompt_head_cache(tmp_path_factory):
    """Keeps the tests' prompt heads out of the user's cache folder (subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SEGEARTH_CACHE_DIR", str(tmp_path_factory.mktemp("segearth-cache")))
        yield


@pytest.fixture
def real_scenes_dir() -> Path:
    """The folder of public sample scenes next to the repository; skips when it is absent."""
    folder = SHARED / "real_scenes"
    if not folder.is_dir():
        pytest.skip("../shared/real_scenes not present")
    return folder


@pytest.fixture
def write_geotiff(tmp_path):
    """``write_geotiff(name, data (bands, h, w), **profile) -> Path``: a tiled GeoTIFF in tmp_path.

    Profile keys override the defaults (no CRS, identity transform); ``colorinterp``,
    ``colormap`` (band 1) and ``gcps`` (list, crs) are applied after creation.
    """
    import numpy as np
    import rasterio
    import rasterio.errors

    def write(name, data, colorinterp=None, colormap=None, gcps=None, **profile):
        data = np.asarray(data)
        if data.ndim == 2:
            data = data[None]
        count, height, width = data.shape
        options = dict(driver="GTiff", width=width, height=height, count=count, dtype=data.dtype.name)
        if width >= 16 and height >= 16:
            options.update(tiled=True, blockxsize=16 * max(1, min(width, 256) // 16),
                           blockysize=16 * max(1, min(height, 256) // 16))
        options.update(profile)
        path = tmp_path / name
        with warnings.catch_warnings():
            # Scenes without a geotransform are written on purpose.
            warnings.simplefilter("ignore", rasterio.errors.NotGeoreferencedWarning)
            dst = rasterio.open(path, "w", **options)
        with dst:
            dst.write(data)
            if colorinterp is not None:
                dst.colorinterp = colorinterp
            if colormap is not None:
                dst.write_colormap(1, colormap)
            if gcps is not None:
                dst.gcps = gcps
        return path

    return write


@pytest.fixture
def offline_home(tmp_path, monkeypatch) -> Path:
    """An empty Hugging Face home in tmp_path, with hub access switched off."""
    home = tmp_path / "hf"
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    return home


@pytest.fixture
def unwritable_folder(tmp_path):
    """A folder no file can be created in, even by root: immutable for root, read-only otherwise."""
    folder = tmp_path / "locked"
    folder.mkdir()
    if os.geteuid() == 0:
        made = subprocess.run(["chattr", "+i", str(folder)], capture_output=True, check=False) \
            if shutil.which("chattr") else None
        if made is None or made.returncode != 0:
            pytest.skip("root can write into read-only folders, and this file system has no immutable flag")
        yield folder
        subprocess.run(["chattr", "-i", str(folder)], check=True)
    else:
        folder.chmod(0o500)
        yield folder
        folder.chmod(0o700)
