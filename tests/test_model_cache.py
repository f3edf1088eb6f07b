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


@pytest.mark.parametrize("files", [{}, {"config.json": "x"}, {"config.json": {"size": 1, "sha256": 5}}])
def test_a_manifest_that_vouches_for_nothing_is_not_trusted(offline_home, files):
    cache_repo(offline_home)
    manifest = cache.write_manifest(cache.find_cached(REPO))
    manifest.write_text(json.dumps({"repo": REPO, "commit": COMMIT, "files": files}))
    with pytest.raises(ModelUnavailableError, match="unreadable manifest"):
        cache.verify_cached(cache.find_cached(REPO))


def test_a_file_that_cannot_be_read_is_a_mismatch(offline_home, monkeypatch):
    cache_repo(offline_home)
    cache.write_manifest(cache.find_cached(REPO))
    hashes = cache.file_hashes

    def unreadable_weights(path):
        if path.name == "model.safetensors":
            raise PermissionError(13, "Permission denied")
        return hashes(path)

    monkeypatch.setattr(cache, "file_hashes", unreadable_weights)
    result = cache.verify_cached(cache.find_cached(REPO))
    assert result.mismatched == ["model.safetensors: cannot be read (Permission denied)"]


def test_a_missing_file_fails_verification(offline_home, capsys):
    from segearth_cli.cli import run

    snapshot = cache_repo(offline_home)
    cache.write_manifest(cache.find_cached(REPO))
    (snapshot / "tokenizer_config.json").unlink()
    assert cache.verify_cached(cache.find_cached(REPO)).not_cached == ["tokenizer_config.json"]
    assert run(["models", "verify", REPO]) == 1
    err = capsys.readouterr().err
    assert "missing (the manifest records it): tokenizer_config.json" in err and "1 recorded files are missing" in err


def test_a_deleted_blob_is_a_missing_file_not_an_uncached_model(offline_home, capsys):
    """The hub library's scan leaves out a repo with a dangling link; verify must still check the rest."""
    from segearth_cli.cli import run

    snapshot = cache_repo(offline_home)
    cache.write_manifest(cache.find_cached(REPO))
    (snapshot / "config.json").resolve().unlink()
    assert cache.find_cached(REPO).path == snapshot
    assert run(["models", "verify", REPO]) == 1
    assert "missing (the manifest records it): config.json" in capsys.readouterr().err


def test_files_the_hub_lists_but_loading_never_fetched_are_not_failures(offline_home, monkeypatch, capsys):
    """A model fetched by a query holds only what loading needs, not the repo's README or .gitattributes."""
    from segearth_cli.cli import run

    cache_repo(offline_home)
    hub = _StandInHub(offline_home, monkeypatch, listed={**FILES, "README.md": b"# a model card\n"})
    assert run(["models", "verify", REPO]) == 0
    captured = capsys.readouterr()
    assert "not cached (not downloaded): README.md" in captured.err and "OK" in captured.out
    assert hub.fetched == []


# --------------------------------------------------------------------------- pull, against a stand-in hub


class _StandInHub:
    """The hub's record of the test repo, and its download helpers writing into the cache."""

    def __init__(self, home, monkeypatch, reachable=True, serves=FILES, listed=FILES, commit_served=COMMIT):
        import hashlib
        from types import SimpleNamespace

        import huggingface_hub

        self.home, self.serves, self.fetched = home, dict(serves), []
        siblings = [SimpleNamespace(rfilename=name, size=len(data), blob_id=None,
                                    lfs=SimpleNamespace(sha256=hashlib.sha256(data).hexdigest(), size=len(data)))
                    for name, data in listed.items()]

        def hub_info(repo, revision):
            if not reachable:
                raise ConnectionError("Failed to resolve 'huggingface.co'")
            return SimpleNamespace(sha=COMMIT, siblings=siblings)

        def snapshot_download(repo, revision=None, cache_dir=None, **kwargs):
            # Every file is cached already, so the helper only names the snapshot folder.
            return str(offline_home_snapshot(self.home).with_name(commit_served))

        def hf_hub_download(repo, filename, revision=None, cache_dir=None, force_download=False, **kwargs):
            self.fetched.append(filename)
            blob = (offline_home_snapshot(self.home) / filename).resolve()
            blob.write_bytes(self.serves[filename])
            return str(blob)

        monkeypatch.setattr(cache, "_hub_info", hub_info)
        monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
        monkeypatch.setattr(huggingface_hub, "hf_hub_download", hf_hub_download)
        monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def offline_home_snapshot(home):
    return home / "hub" / ("models--" + REPO.replace("/", "--")) / "snapshots" / COMMIT


def _damage(snapshot):
    blob = (snapshot / "model.safetensors").resolve()
    data = bytearray(blob.read_bytes())
    data[1000] ^= 0xFF
    blob.write_bytes(bytes(data))


def test_pull_without_the_hub_fails_and_leaves_the_manifest_alone(offline_home, monkeypatch):
    snapshot = cache_repo(offline_home)
    manifest = cache.write_manifest(cache.find_cached(REPO))
    before = manifest.read_bytes()
    _damage(snapshot)
    _StandInHub(offline_home, monkeypatch, reachable=False)
    with pytest.raises(ModelUnavailableError, match="download failed: Failed to resolve"):
        cache.pull(REPO)
    assert manifest.read_bytes() == before
    assert cache.verify_cached(cache.find_cached(REPO)).mismatched[0].startswith("model.safetensors: sha256")


def test_pull_fetches_again_what_differs_from_the_hubs_record(offline_home, monkeypatch):
    snapshot = cache_repo(offline_home)
    _damage(snapshot)
    hub = _StandInHub(offline_home, monkeypatch)
    model = cache.pull(REPO)
    assert hub.fetched == ["model.safetensors"]
    assert (snapshot / "model.safetensors").read_bytes() == FILES["model.safetensors"]
    recorded = json.loads(cache.manifest_path(REPO, model.commit).read_text())["files"]
    assert sorted(recorded) == sorted(FILES)


def test_pull_refuses_to_vouch_for_a_copy_that_still_differs(offline_home, monkeypatch):
    snapshot = cache_repo(offline_home)
    _damage(snapshot)
    damaged = (snapshot / "model.safetensors").read_bytes()
    _StandInHub(offline_home, monkeypatch, serves={**FILES, "model.safetensors": damaged})
    with pytest.raises(ModelUnavailableError, match="differ from the hub's record after downloading: model.safetensors"):
        cache.pull(REPO)
    assert not cache.manifest_path(REPO, COMMIT).exists()


def test_pull_refuses_a_commit_other_than_the_one_the_hub_named(offline_home, monkeypatch):
    """The branch moved between the two calls, or the hub went away and the helper fell back to the cache."""
    cache_repo(offline_home)
    _StandInHub(offline_home, monkeypatch, commit_served=OTHER_COMMIT)
    with pytest.raises(ModelUnavailableError, match=f"got commit {OTHER_COMMIT[:12]} where the hub named {COMMIT[:12]}"):
        cache.pull(REPO)
    assert not cache.manifest_path(REPO, COMMIT).exists()


def test_a_cache_that_is_a_file_is_reported_not_raised(tmp_path, monkeypatch):
    not_a_folder = tmp_path / "hub"
    not_a_folder.write_text("")
    monkeypatch.setenv("HF_HUB_CACHE", str(not_a_folder))
    models, warnings = cache.cached_models()
    assert models == [] and "not a readable hub cache" in warnings[0]
    with pytest.raises(ModelUnavailableError, match="damaged: .*not a readable hub cache"):
        cache.require_cached(REPO)
