"""`segearth models list|pull|verify|path` against a hub cache built in tmp_path, offline."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hub_layout import COMMIT, FILES, REPO, cache_repo

from segearth_cli.cli import run


def segearth(capsys, *args: str) -> tuple[int, str, str]:
    code = run(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_list_with_an_empty_cache_shows_the_built_in_model(offline_home, capsys):
    code, out, err = segearth(capsys, "models", "list")
    assert code == 0
    assert "tiny-random" in out and "built-in" in out
    assert "no hub models cached" in err
    assert "offline" in err


def test_list_reports_repo_revision_size_and_path(offline_home, capsys):
    snapshot = cache_repo(offline_home)
    code, out, _ = segearth(capsys, "models", "list", "--json")
    assert code == 0
    rows = [json.loads(line) for line in out.splitlines()]
    assert rows[0]["repo"] == "tiny-random" and rows[0]["revision"] == "built-in"
    cached = [row for row in rows if row["repo"] == REPO]
    assert len(cached) == 1
    assert cached[0]["revision"] == COMMIT
    assert cached[0]["refs"] == ["main"]
    assert cached[0]["size_bytes"] == sum(len(data) for data in FILES.values())
    assert Path(cached[0]["path"]) == snapshot


def test_path_prints_the_snapshot_folder(offline_home, capsys):
    snapshot = cache_repo(offline_home)
    code, out, _ = segearth(capsys, "models", "path", REPO)
    assert code == 0
    assert Path(out.strip()) == snapshot
    assert (Path(out.strip()) / "config.json").read_bytes() == FILES["config.json"]


def test_path_of_a_model_that_is_not_cached_exits_4_and_says_how_to_get_it(offline_home, capsys):
    code, out, err = segearth(capsys, "models", "path", "someone/absent-model")
    assert code == 4
    assert out == ""
    assert "not cached" in err and "segearth models pull someone/absent-model" in err
    assert "Traceback" not in err


def test_pull_offline_exits_4_and_names_what_is_cached(offline_home, capsys):
    cache_repo(offline_home)
    code, _, err = segearth(capsys, "models", "pull", REPO, "--revision", "v2")
    assert code == 4
    assert "offline" in err and "HF_HUB_OFFLINE" in err
    assert COMMIT[:12] in err


def test_verify_offline_needs_the_manifest_saved_at_pull_time(offline_home, capsys):
    cache_repo(offline_home)
    code, _, err = segearth(capsys, "models", "verify", REPO)
    assert code == 4
    assert "cannot verify" in err and "manifest" in err


def test_verify_offline_against_the_manifest_finds_a_damaged_file(offline_home, capsys):
    from segearth_cli.model_cache import find_cached, write_manifest

    snapshot = cache_repo(offline_home)
    write_manifest(find_cached(REPO))

    code, out, err = segearth(capsys, "models", "verify", REPO)
    assert code == 0, err
    assert "OK" in out and "3 files" in out and "manifest" in out

    # Same size, one byte changed: only a hash can tell.
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))
    code, out, err = segearth(capsys, "models", "verify", REPO)
    assert code == 1
    assert "MISMATCH model.safetensors" in out
    assert "config.json" not in out
    assert "1 of 3 files differ" in err


def test_built_in_model_needs_no_files(offline_home, capsys):
    for command in ("path", "verify", "pull"):
        code, out, err = segearth(capsys, "models", command, "tiny-random")
        assert code == 0
        assert out == ""
        assert "built in" in err


def test_path_answers_at_once_without_network_or_offline_flag(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("HF_")}
    env["HF_HOME"] = str(tmp_path / "hf")
    done = subprocess.run([sys.executable, "-m", "segearth_cli.cli", "models", "path", "someone/absent-model"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 4
    assert done.stderr.count("\n") == 1 and "not cached" in done.stderr
