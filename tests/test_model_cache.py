"""The model cache as a library: lookup by ref, commit and prefix; manifests; verification."""

from __future__ import annotations

import json

import pytest
from hub_layout import COMMIT, FILES, REPO, cache_repo

from segearth_cli import model_cache as cache
from segearth_cli.errors import ModelUnavailableError, UsageError

OTHER_COMMIT = "fedcba9876543210fedcba9876543210fedcba98"


def test_lookup_by_ref_full_commit_and_unique_prefix(offline_home):
    snapshot = cache_repo(offline_home)
    for revision in (None, "main", COMMIT, COMMIT[:7]):
        found = cache.find_cached(REPO, revision)
        assert found is not None and found.path == snapshot and found.commit == COMMIT
    # A prefix shorter than git's own abbreviation could name many commits.
    assert cache.find_cached(REPO, COMMIT[:6]) is None
    assert cache.find_cached(REPO, "v2") is None
    assert cache.find_cached("someone/else") is None


def test_without_a_main_ref_the_only_revision_is_the_default(offline_home):
    cache_repo(offline_home)
    (offline_home / "hub" / ("models--" + REPO.replace("/", "--")) / "refs" / "main").unlink()
    assert cache.find_cached(REPO).commit == COMMIT


def test_describe_names_every_cached_revision(offline_home):
    assert cache.describe_cached(REPO) == "nothing of it is cached"
    cache_repo(offline_home)
    assert cache.describe_cached(REPO) == f"cached: {COMMIT[:12]} (main)"


@pytest.mark.parametrize("repo", ["no-slash", "a/b/c", "/absent", ""])
def test_malformed_repo_ids_are_usage_errors(offline_home, repo):
    with pytest.raises(UsageError, match="ORG/NAME"):
        cache.check_repo_id(repo)


def test_require_cached_says_how_to_get_a_missing_model(offline_home):
    with pytest.raises(ModelUnavailableError) as raised:
        cache.require_cached("someone/absent-model", "v1")
    message = str(raised.value)
    assert message.startswith("someone/absent-model@v1: not cached")
    assert "segearth models pull someone/absent-model" in message


def test_manifest_records_size_and_sha256_of_every_file(offline_home):
    import hashlib

    cache_repo(offline_home)
    path = cache.write_manifest(cache.find_cached(REPO))
    assert path == cache.manifest_path(REPO, COMMIT)
    recorded = json.loads(path.read_text())
    assert recorded["repo"] == REPO and recorded["commit"] == COMMIT
    assert recorded["files"] == {name: {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}
                                 for name, data in FILES.items()}
    assert cache.find_cached(REPO).has_manifest


def test_verify_reports_changed_missing_and_unrecorded_files(offline_home):
    snapshot = cache_repo(offline_home)
    cache.write_manifest(cache.find_cached(REPO))
    (snapshot / "tokenizer_config.json").unlink()
    (snapshot / "extra.txt").write_text("not from the hub")
    blob = (snapshot / "config.json").resolve()
    blob.write_bytes(blob.read_bytes() + b" ")

    result = cache.verify_cached(cache.find_cached(REPO))
    assert result.source == "manifest" and "offline" in result.note
    assert result.mismatched == [f"config.json: size {len(FILES['config.json']) + 1}, "
                                 f"expected {len(FILES['config.json'])}"]
    assert result.not_cached == ["tokenizer_config.json"]
    assert result.unrecorded == ["extra.txt"]
    assert result.checked == 2


def test_an_unreadable_manifest_is_reported_not_trusted(offline_home):
    cache_repo(offline_home)
    manifest = cache.write_manifest(cache.find_cached(REPO))
    manifest.write_text("{ not json")
    with pytest.raises(ModelUnavailableError, match="unreadable manifest"):
        cache.verify_cached(cache.find_cached(REPO))


def test_two_revisions_are_listed_main_first(offline_home):
    cache_repo(offline_home)
    folder = offline_home / "hub" / ("models--" + REPO.replace("/", "--"))
    other = folder / "snapshots" / OTHER_COMMIT
    other.mkdir()
    (other / "config.json").write_bytes(b"{}")
    models, warnings = cache.cached_models()
    assert warnings == []
    assert [(m.commit, m.refs) for m in models] == [(COMMIT, ("main",)), (OTHER_COMMIT, ())]
