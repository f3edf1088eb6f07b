"""`segearth doctor`: the versions a bug report needs, and the tiny-random smoke test."""

from __future__ import annotations

import json

import geopandas
import numpy
import pyogrio
import pytest
import rasterio
import shapely
import torch
import transformers

from segearth_cli import __version__
from segearth_cli.cli import run


@pytest.fixture(autouse=True)
def empty_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_doctor_prints_every_version_on_one_screen(capsys):
    assert run(["doctor"]) == 0
    out = capsys.readouterr().out
    lines = dict(line.split(None, 1) for line in out.splitlines() if line.strip() and "  " in line)
    assert lines["segearth"].strip() == __version__
    assert lines["torch"].startswith(torch.__version__)
    assert ("cuda available True" in lines["torch"]) == torch.cuda.is_available()
    assert lines["transformers"].strip() == transformers.__version__
    assert lines["rasterio"].startswith(rasterio.__version__)
    assert f"gdal {rasterio.__gdal_version__}" in lines["rasterio"]
    assert "proj " in lines["rasterio"]
    assert lines["pyogrio"].startswith(pyogrio.__version__)
    assert lines["geopandas"].strip() == geopandas.__version__
    assert lines["shapely"].startswith(shapely.__version__)
    assert lines["numpy"].strip() == numpy.__version__
    expected_device = "cuda" if torch.cuda.is_available() else "cpu"
    assert lines["device"].startswith("auto") and expected_device in lines["device"]
    assert "tiny-random (built-in)" in lines["models"]
    assert "writable" in lines["model"]  # "model cache  <path> (... writable)"
    assert "offline" in lines["hub"]


def test_doctor_json_is_one_object_with_the_same_facts(capsys):
    assert run(["doctor", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    assert facts["torch"]["version"] == torch.__version__
    assert facts["rasterio"]["gdal"] == rasterio.__gdal_version__
    assert facts["model_cache"]["writable"] is True
    assert facts["model_cache"]["models"] == ["tiny-random (built-in)"]
    assert "smoke" not in facts


def test_doctor_smoke_runs_tiny_random_end_to_end(capsys):
    assert run(["doctor", "--smoke", "--json"]) == 0
    facts = json.loads(capsys.readouterr().out)
    smoke = facts["smoke"]
    assert smoke["passed"] is True, smoke
    assert smoke["problems"] == []
    assert smoke["windows_run"] >= 1


def test_a_failed_smoke_test_says_why_in_one_line_and_shows_the_traceback_on_request(capsys, monkeypatch):
    import rasterio.errors

    import segearth_cli.diagnostics

    def no_gtiff(*args, **kwargs):
        # How rasterio reports a driver GDAL was built or configured without.
        raise rasterio.errors.DriverRegistrationError("No such driver registered: %s", b"GTiff")

    monkeypatch.setattr(segearth_cli.diagnostics, "run_query", no_gtiff)
    assert run(["doctor", "--smoke"]) == 1
    captured = capsys.readouterr()
    assert "FAILED: DriverRegistrationError: No such driver registered: GTiff" in captured.out
    assert "Traceback" not in captured.err
    assert run(["doctor", "--smoke", "--debug"]) == 1
    assert "Traceback" in capsys.readouterr().err
