"""The local model cache: which models are cached, fetching one, and checking its files.

Models live in the standard Hugging Face hub cache (``HF_HUB_CACHE``, else ``HF_HOME/hub``,
else ``~/.cache/huggingface/hub``), so a model fetched by ``pull``, by ``segearth query`` or by
any other hub tool is the same copy.

``pull`` pins what it fetched and saves a manifest (name, size and SHA-256 of every file)
inside the cached repo folder, in ``models--ORG--NAME/segearth-manifests/COMMIT.json``.
``verify_cached`` compares the cached files with the hashes the hub records for that commit
(SHA-256 for large files, the git blob hash for small ones) when the hub can be reached, and
with the manifest otherwise; so an air-gapped host can still check a copy that was pulled
elsewhere and carried over with its manifest.

Nothing here imports torch: listing models must be instant.
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Optional

from .atomic import write_atomically
from .errors import ModelUnavailableError, UsageError, first_line
from .segmenter import hub_cache_dir, hub_offline

MANIFEST_FOLDER = "segearth-manifests"
#: Seconds to wait for the hub before treating it as unreachable: a cron job must not hang.
HUB_TIMEOUT = 10.0


#: The characters the hub allows in an owner or repository name.
_REPO_NAME_CHARACTERS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-")


def check_repo_id(repo: str) -> None:
    parts = repo.split("/")
    if (len(parts) != 2 or not all(parts) or not set(repo.replace("/", "")) <= _REPO_NAME_CHARACTERS
            or Path(repo).expanduser().is_dir()):
        raise UsageError(f"{repo!r}: expected a hub repo id of the form ORG/NAME (letters, digits, '.', '_', '-')")


def repo_folder(repo: str, cache_dir: Optional[Path] = None) -> Path:
    return (cache_dir or hub_cache_dir()) / ("models--" + repo.replace("/", "--"))


@dataclass(frozen=True)
class CachedModel:
    repo: str
    commit: str
    refs: tuple[str, ...]
    size_bytes: int
    path: Path
    files: int
    has_manifest: bool


def cached_models(cache_dir: Optional[Path] = None) -> tuple[list[CachedModel], list[str]]:
    """Every cached model revision, and the cache scanner's warnings (damaged entries)."""
    from huggingface_hub import scan_cache_dir
    from huggingface_hub.errors import CacheNotFound

    cache_dir = cache_dir or hub_cache_dir()
    try:
        info = scan_cache_dir(cache_dir)
    except CacheNotFound:
        return [], []
    except (ValueError, OSError) as exc:  # the cache is a file, or cannot be read
        return [], [f"{cache_dir}: not a readable hub cache ({first_line(exc)})"]
    found = []
    for repo in info.repos:
        if repo.repo_type != "model":
            continue
        for revision in repo.revisions:
            found.append(CachedModel(
                repo=repo.repo_id,
                commit=revision.commit_hash,
                refs=tuple(sorted(revision.refs)),
                size_bytes=revision.size_on_disk,
                path=revision.snapshot_path,
                files=len(revision.files),
                has_manifest=manifest_path(repo.repo_id, revision.commit_hash, cache_dir).is_file(),
            ))
    found.sort(key=lambda m: (m.repo.lower(), m.refs == (), m.commit))
    return found, [str(w) for w in info.warnings]


def find_cached(repo: str, revision: Optional[str] = None, cache_dir: Optional[Path] = None) -> Optional[CachedModel]:
    """The cached revision of ``repo`` that ``revision`` names (a ref or a commit, or its prefix); default ``main``."""
    models, _ = cached_models(cache_dir)
    candidates = [m for m in models if m.repo == repo] or _read_damaged_repo(repo, cache_dir)
    if not candidates:
        return None
    wanted = revision or "main"
    for model in candidates:
        if wanted in model.refs or model.commit == wanted:
            return model
    if len(wanted) >= 7:
        prefixed = [m for m in candidates if m.commit.startswith(wanted)]
        if len(prefixed) == 1:
            return prefixed[0]
    if revision is None and len(candidates) == 1:  # fetched at a pinned commit only: no "main" ref
        return candidates[0]
    return None


def _read_damaged_repo(repo: str, cache_dir: Optional[Path]) -> list[CachedModel]:
    """The revisions of a repo folder that the hub library's scan leaves out because one entry
    is damaged (a blob deleted under a snapshot's link): verify must still see the rest."""
    folder = repo_folder(repo, cache_dir)
    try:
        snapshots = sorted(p for p in (folder / "snapshots").iterdir() if p.is_dir())
        refs = {ref.name: ref.read_text().strip() for ref in (folder / "refs").glob("*") if ref.is_file()}
    except OSError:
        return []
    found = []
    for snapshot in snapshots:
        files = snapshot_files(snapshot)
        found.append(CachedModel(
            repo=repo, commit=snapshot.name, refs=tuple(sorted(name for name, commit in refs.items()
                                                               if commit == snapshot.name)),
            size_bytes=sum(path.stat().st_size for path in files.values()), path=snapshot, files=len(files),
            has_manifest=manifest_path(repo, snapshot.name, cache_dir).is_file(),
        ))
    return found


def describe_cached(repo: str, cache_dir: Optional[Path] = None) -> str:
    models, _ = cached_models(cache_dir)
    revisions = [m.commit[:12] + (f" ({', '.join(m.refs)})" if m.refs else "") for m in models if m.repo == repo]
    return "cached: " + "; ".join(revisions) if revisions else "nothing of it is cached"


# --------------------------------------------------------------------------- hashes and manifests


def manifest_path(repo: str, commit: str, cache_dir: Optional[Path] = None) -> Path:
    return repo_folder(repo, cache_dir) / MANIFEST_FOLDER / f"{commit}.json"


def file_hashes(path: Path) -> tuple[str, str]:
    """SHA-256 and git blob SHA-1 of a file, in one read."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    git_sha1 = hashlib.sha1(f"blob {size}\0".encode())
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            sha256.update(chunk)
            git_sha1.update(chunk)
    return sha256.hexdigest(), git_sha1.hexdigest()


def snapshot_files(snapshot: Path) -> dict[str, Path]:
    return {p.relative_to(snapshot).as_posix(): p for p in sorted(snapshot.rglob("*")) if p.is_file()}


def write_manifest(model: CachedModel, cache_dir: Optional[Path] = None,
                   known_sha256: Optional[dict[str, str]] = None) -> Path:
    """Record name, size and SHA-256 of every file of a cached revision (see the module docstring).

    ``known_sha256``: hashes just computed, by file name, so that gigabytes are not read twice.
    """
    files = {}
    for name, path in snapshot_files(model.path).items():
        sha256 = (known_sha256 or {}).get(name) or file_hashes(path)[0]
        files[name] = {"size": path.stat().st_size, "sha256": sha256}
    target = manifest_path(model.repo, model.commit, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    write_atomically(target, json.dumps({
        "repo": model.repo,
        "commit": model.commit,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }, indent=2, sort_keys=True) + "\n")
    return target


@dataclass
class Verification:
    source: str  # "hub" or "manifest"
    checked: int
    mismatched: list[str]
    not_cached: list[str]
    unrecorded: list[str]
    note: Optional[str] = None


def _hub_info(repo: str, revision: Optional[str]):
    """The hub's record of ``repo`` at ``revision``: its commit and every file's size and hash."""
    from huggingface_hub import HfApi

    return HfApi().model_info(repo, revision=revision, files_metadata=True, timeout=HUB_TIMEOUT)


def _expected_from_hub(repo: str, commit: str) -> dict[str, dict[str, Any]]:
    return _expected_from_info(_hub_info(repo, commit))


def _expected_from_info(info) -> dict[str, dict[str, Any]]:
    expected = {}
    for sibling in info.siblings or []:
        entry: dict[str, Any] = {"size": sibling.size}
        if sibling.lfs is not None:
            entry["sha256"] = sibling.lfs.sha256
            entry["size"] = sibling.lfs.size
        elif sibling.blob_id:
            entry["git_sha1"] = sibling.blob_id
        expected[sibling.rfilename] = entry
    return expected


def _expected_from_manifest(repo: str, commit: str, cache_dir: Optional[Path]) -> Optional[dict[str, dict[str, Any]]]:
    path = manifest_path(repo, commit, cache_dir)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        files = dict(data["files"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelUnavailableError(f"{path}: unreadable manifest ({exc})") from None
    # A manifest vouches for a copy only if it names files, each with a size and a hash.
    if not files:
        raise ModelUnavailableError(f"{path}: unreadable manifest (it lists no files)")
    for name, entry in files.items():
        if not (isinstance(entry, dict) and type(entry.get("size")) is int and isinstance(entry.get("sha256"), str)):
            raise ModelUnavailableError(f"{path}: unreadable manifest (the entry of {name} is not a size and a sha256)")
    return files


def verify_cached(model: CachedModel, cache_dir: Optional[Path] = None) -> Verification:
    """Compare a cached revision with the hub's recorded hashes, or with its manifest offline."""
    expected: Optional[dict[str, dict[str, Any]]] = None
    source, note = "hub", None
    if hub_offline():
        note = "offline (HF_HUB_OFFLINE is set): checked against the manifest saved by 'segearth models pull'"
    else:
        try:
            expected = _expected_from_hub(model.repo, model.commit)
        except Exception as exc:  # noqa: BLE001 - any hub failure means: fall back to the manifest
            reason = first_line(exc)[:160]
            note = f"hub not reachable ({reason}): checked against the manifest saved by 'segearth models pull'"
    if expected is None:
        source = "manifest"
        expected = _expected_from_manifest(model.repo, model.commit, cache_dir)
        if expected is None:
            raise ModelUnavailableError(
                f"{model.repo}@{model.commit[:12]}: cannot verify: the hub is not reachable and there is no manifest "
                f"({manifest_path(model.repo, model.commit, cache_dir)}); run 'segearth models verify' with network "
                "access, or fetch the model with 'segearth models pull' (which saves one)"
            )
    found = _compare(model.path, expected)
    return Verification(source, found.checked, [f"{name}: {how}" for name, how in found.mismatched.items()],
                        found.missing, found.unrecorded, note)


@dataclass
class _Comparison:
    mismatched: dict[str, str]  # file name -> how it differs
    missing: list[str]  # expected, not in the snapshot
    unrecorded: list[str]  # in the snapshot, not expected
    sha256: dict[str, str]  # of the files read
    checked: int = 0  # files compared with their expected entry


def _compare(snapshot: Path, expected: dict[str, dict[str, Any]], only: Optional[set[str]] = None) -> _Comparison:
    """The snapshot's files against ``expected``; ``only``: compare just these names."""
    local = snapshot_files(snapshot)
    found = _Comparison({}, sorted(set(expected) - set(local)), [], {})
    for name, path in local.items():
        if only is not None and name not in only:
            continue
        want = expected.get(name)
        if want is None:
            found.unrecorded.append(name)
            continue
        found.checked += 1
        try:
            size = path.stat().st_size
            if want.get("size") is not None and want["size"] != size:
                found.mismatched[name] = f"size {size}, expected {want['size']}"
                continue
            sha256, git_sha1 = file_hashes(path)
        except OSError as exc:  # a blob that cannot be read cannot be vouched for
            found.mismatched[name] = f"cannot be read ({exc.strerror or exc})"
            continue
        found.sha256[name] = sha256
        if "sha256" in want and want["sha256"] != sha256:
            found.mismatched[name] = f"sha256 {sha256[:12]}..., expected {want['sha256'][:12]}..."
        elif "git_sha1" in want and want["git_sha1"] != git_sha1:
            found.mismatched[name] = f"git hash {git_sha1[:12]}..., expected {want['git_sha1'][:12]}..."
    return found


def pull(repo: str, revision: Optional[str] = None, cache_dir: Optional[Path] = None) -> CachedModel:
    """Download ``repo`` at ``revision`` into the cache, check every file against the hub's
    record, and save the manifest; exit 4 when that cannot be done.

    The hub must answer: its download helper falls back to whatever the cache holds when the
    hub cannot be reached, and a manifest written from that would vouch for a damaged copy.
    Files already cached are not fetched again unless they differ from the hub's record.
    """
    check_repo_id(repo)
    cache_dir = cache_dir or hub_cache_dir()
    if hub_offline():
        raise ModelUnavailableError(
            f"{repo}: cannot download while offline (HF_HUB_OFFLINE is set); {describe_cached(repo, cache_dir)}"
        )
    from huggingface_hub import hf_hub_download, snapshot_download

    try:
        info = _hub_info(repo, revision)
        expected = _expected_from_info(info)
        folder = Path(snapshot_download(repo, revision=revision, cache_dir=cache_dir, etag_timeout=HUB_TIMEOUT))
        if folder.name != info.sha:
            # The revision moved on the hub between the two calls, or the hub stopped answering
            # and the helper fell back to the cache: either way not the commit just checked.
            raise ModelUnavailableError(
                f"{repo}: download failed: got commit {folder.name[:12]} where the hub named {info.sha[:12]} a moment "
                f"before (the revision moved, or the hub stopped answering); run the pull again; "
                f"{describe_cached(repo, cache_dir)}")
        found = _compare(folder, expected)
        for name in found.mismatched:  # damaged in the cache: fetched again
            hf_hub_download(repo, name, revision=info.sha, cache_dir=cache_dir, force_download=True,
                            etag_timeout=HUB_TIMEOUT)
    except ModelUnavailableError:
        raise
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo or revision: all exit 4
        reason = first_line(exc)[:300]
        raise ModelUnavailableError(f"{repo}: download failed: {reason}; {describe_cached(repo, cache_dir)}") from None
    # Only what was fetched again is read again: a full-size checkpoint is gigabytes.
    again = _compare(folder, expected, only=set(found.mismatched))
    problems = [f"{name}: {how}" for name, how in again.mismatched.items()] + [
        f"{name}: not downloaded" for name in found.missing]
    if problems:
        raise ModelUnavailableError(f"{repo}@{info.sha[:12]}: the cached files differ from the hub's record after "
                                    f"downloading: {'; '.join(problems)}")
    model = find_cached(repo, info.sha, cache_dir)
    if model is None:
        raise ModelUnavailableError(f"{repo}: downloaded to {folder} but the cache does not list it")
    write_manifest(model, cache_dir, known_sha256={**found.sha256, **again.sha256})
    return model


def require_cached(repo: str, revision: Optional[str] = None, cache_dir: Optional[Path] = None) -> CachedModel:
    """The cached revision ``revision`` names; exit 4, saying how to get it, when it is not cached."""
    check_repo_id(repo)
    cache_dir = cache_dir or hub_cache_dir()
    model = find_cached(repo, revision, cache_dir)
    if model is None:
        # A damaged entry (a missing blob, a ref to a missing snapshot) hides the repo from
        # the cache scanner: say so rather than "never downloaded".
        _, warnings = cached_models(cache_dir)
        folder = re.compile(re.escape(repo_folder(repo, cache_dir).name) + r"(?![\w.-])")
        damage = [w for w in warnings if folder.search(w) or w.startswith(f"{cache_dir}:")]
        found = f"damaged: {damage[0]}" if damage else describe_cached(repo, cache_dir)
        raise ModelUnavailableError(
            f"{repo}{f'@{revision}' if revision else ''}: not cached in {cache_dir} ({found}); to get it, "
            + ("connect to the network and run" if hub_offline() else "run") + f" 'segearth models pull {repo}'"
        )
    return model
