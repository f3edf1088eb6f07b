"""`segearth models list|pull|verify|path`: the model cache, explicitly.

Models live in the standard Hugging Face hub cache (``HF_HUB_CACHE``, else
``HF_HOME/hub``, else ``~/.cache/huggingface/hub``), so a model fetched by ``pull``, by
``segearth query`` or by any other hub tool is the same copy.

``pull`` pins what it fetched: it prints the commit hash to pass as ``--revision`` and saves
a manifest (name, size and SHA-256 of every file) inside the cached repo folder, in
``models--ORG--NAME/segearth-manifests/COMMIT.json``. ``verify`` compares the cached files
with the hashes the hub records for that commit (SHA-256 for large files, the git blob hash
for small ones) when the hub can be reached, and with the manifest otherwise; so an
air-gapped host can still check a copy that was pulled elsewhere and carried over with its
manifest. Deleting the repo from the cache deletes its manifests with it.

Offline (``HF_HUB_OFFLINE=1`` or ``TRANSFORMERS_OFFLINE=1``, or the hub unreachable within a few seconds): ``list`` and
``path`` work fully (they read only the disk); ``pull`` cannot download and says which
revisions are already cached; ``verify`` falls back to the manifest.

Exit status: 0 done; 1 ``verify`` found files that differ from the recorded hashes;
2 usage error; 4 the model is not cached (``path``, ``verify``), cannot be downloaded
(``pull``), or cannot be checked (offline without a manifest).
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Annotated, Any, Optional

import typer

from ..errors import EXIT_FAILURE, ModelUnavailableError, UsageError
from . import options as opt
from .query import TINY_RANDOM

MANIFEST_FOLDER = "segearth-manifests"
#: Seconds to wait for the hub before treating it as unreachable: a cron job must not hang.
HUB_TIMEOUT = 10.0

models_app = typer.Typer(
    name="models",
    help="List, download, check and locate models in the Hugging Face hub cache.",
    no_args_is_help=True,
    add_completion=False,
)

RepoArg = Annotated[str, typer.Argument(metavar="REPO", help="Hub repo id, e.g. earth-insights/SegEarth-R1-EarthReason.",
                                        show_default=False)]


# --------------------------------------------------------------------------- the cache

# The model package's answers, imported on call: it imports torch, which `--help` must not wait for.


def hub_cache_dir() -> Path:
    from segearth_model.checkpoint import hub_cache_dir as model_hub_cache_dir

    return model_hub_cache_dir()


def hub_offline() -> bool:
    from segearth_model.checkpoint import hub_offline as model_hub_offline

    return model_hub_offline()


def _check_repo_id(repo: str) -> None:
    parts = repo.split("/")
    if len(parts) != 2 or not all(parts) or Path(repo).expanduser().is_dir():
        raise UsageError(f"{repo!r}: expected a hub repo id of the form ORG/NAME")


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
    candidates = [m for m in models if m.repo == repo]
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


def _describe_cached(repo: str, cache_dir: Optional[Path] = None) -> str:
    models, _ = cached_models(cache_dir)
    revisions = [m.commit[:12] + (f" ({', '.join(m.refs)})" if m.refs else "") for m in models if m.repo == repo]
    return "cached: " + "; ".join(revisions) if revisions else "nothing of it is cached"


# --------------------------------------------------------------------------- hashes and manifests


def manifest_path(repo: str, commit: str, cache_dir: Optional[Path] = None) -> Path:
    return repo_folder(repo, cache_dir) / MANIFEST_FOLDER / f"{commit}.json"


def _file_hashes(path: Path) -> tuple[str, str]:
    """SHA-256 and git blob SHA-1 of a file, in one read."""
    size = path.stat().st_size
    sha256 = hashlib.sha256()
    git_sha1 = hashlib.sha1(f"blob {size}\0".encode())
    with path.open("rb") as handle:
        while chunk := handle.read(1 << 22):
            sha256.update(chunk)
            git_sha1.update(chunk)
    return sha256.hexdigest(), git_sha1.hexdigest()


def _snapshot_files(snapshot: Path) -> dict[str, Path]:
    return {p.relative_to(snapshot).as_posix(): p for p in sorted(snapshot.rglob("*")) if p.is_file()}


def write_manifest(model: CachedModel, cache_dir: Optional[Path] = None) -> Path:
    """Record name, size and SHA-256 of every file of a cached revision (see the module docstring)."""
    files = {}
    for name, path in _snapshot_files(model.path).items():
        sha256, _ = _file_hashes(path)
        files[name] = {"size": path.stat().st_size, "sha256": sha256}
    target = manifest_path(model.repo, model.commit, cache_dir)
    target.parent.mkdir(parents=True, exist_ok=True)
    temp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temp.write_text(json.dumps({
        "repo": model.repo,
        "commit": model.commit,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "files": files,
    }, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(temp, target)
    return target


@dataclass
class Verification:
    source: str  # "hub" or "manifest"
    checked: int
    mismatched: list[str]
    not_cached: list[str]
    unrecorded: list[str]
    note: Optional[str] = None


def _expected_from_hub(repo: str, commit: str) -> dict[str, dict[str, Any]]:
    from huggingface_hub import HfApi

    info = HfApi().model_info(repo, revision=commit, files_metadata=True, timeout=HUB_TIMEOUT)
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
        return dict(data["files"])
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelUnavailableError(f"{path}: unreadable manifest ({exc})") from None


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
            reason = " ".join(str(exc).split())[:160] or type(exc).__name__
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
    local = _snapshot_files(model.path)
    mismatched, unrecorded = [], []
    for name, path in local.items():
        want = expected.get(name)
        if want is None:
            unrecorded.append(name)
            continue
        size = path.stat().st_size
        if want.get("size") is not None and want["size"] != size:
            mismatched.append(f"{name}: size {size}, expected {want['size']}")
            continue
        sha256, git_sha1 = _file_hashes(path)
        if "sha256" in want and want["sha256"] != sha256:
            mismatched.append(f"{name}: sha256 {sha256[:12]}..., expected {want['sha256'][:12]}...")
        elif "git_sha1" in want and want["git_sha1"] != git_sha1:
            mismatched.append(f"{name}: git hash {git_sha1[:12]}..., expected {want['git_sha1'][:12]}...")
    not_cached = sorted(set(expected) - set(local))
    return Verification(source, len(local) - len(unrecorded), mismatched, not_cached, unrecorded, note)


def _human_size(size: int) -> str:
    value = float(size)
    for unit in ("B", "kB", "MB", "GB"):
        if value < 1000:
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1000
    return f"{value:.1f} TB"


def _err(message: str) -> None:
    print(f"segearth: {message}", file=sys.stderr)


# --------------------------------------------------------------------------- commands


@models_app.command("list")
def list_command(
    json_output: Annotated[bool, typer.Option("--json", help="One JSON object per model on stdout.")] = False,
) -> None:
    """Show the cached models (repo, revision, size, path) and the built-in tiny-random."""
    cache_dir = hub_cache_dir()
    models, warnings = cached_models(cache_dir)
    if json_output:
        print(json.dumps({"repo": TINY_RANDOM, "revision": "built-in", "refs": [], "size_bytes": 0, "path": None,
                          "manifest": False}))
        for m in models:
            print(json.dumps({"repo": m.repo, "revision": m.commit, "refs": list(m.refs), "size_bytes": m.size_bytes,
                              "path": str(m.path), "manifest": m.has_manifest}))
    else:
        rows = [("REPO", "REVISION", "REFS", "SIZE", "MANIFEST", "PATH"),
                (TINY_RANDOM, "built-in", "-", "0 B", "-", "(no files: generated in memory)")]
        rows += [(m.repo, m.commit[:12], ",".join(m.refs) or "-", _human_size(m.size_bytes),
                  "yes" if m.has_manifest else "no", str(m.path)) for m in models]
        widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]) - 1)]
        print(f"models in {cache_dir}")
        for row in rows:
            print("  ".join(cell.ljust(width) for cell, width in zip(row, widths)) + "  " + row[-1])
        if not models:
            _err(f"no hub models cached in {cache_dir} (fetch one with 'segearth models pull REPO')")
    for warning in warnings:
        _err(f"warning: damaged cache entry skipped: {' '.join(warning.split())}")
    if hub_offline():
        _err("offline (HF_HUB_OFFLINE is set): this list is complete, it only reads the cache")


@models_app.command("pull")
def pull_command(
    repo: RepoArg,
    revision: opt.Revision = None,
) -> None:
    """Download REPO at a revision into the hub cache, print the commit to pin, and save a manifest of file hashes."""
    if repo == TINY_RANDOM:
        _err("tiny-random is built in; there is nothing to download")
        return
    _check_repo_id(repo)
    cache_dir = hub_cache_dir()
    if hub_offline():
        raise ModelUnavailableError(
            f"{repo}: cannot download while offline (HF_HUB_OFFLINE is set); {_describe_cached(repo, cache_dir)}"
        )
    from huggingface_hub import snapshot_download

    _err(f"downloading {repo}{f' at {revision}' if revision else ''} into {cache_dir}")
    try:
        folder = Path(snapshot_download(repo, revision=revision, cache_dir=cache_dir, etag_timeout=HUB_TIMEOUT))
    except Exception as exc:  # noqa: BLE001 - network, auth, missing repo or revision: all exit 4
        reason = " ".join(str(exc).split())[:300] or type(exc).__name__
        raise ModelUnavailableError(f"{repo}: download failed: {reason}; {_describe_cached(repo, cache_dir)}") from None
    model = find_cached(repo, folder.name, cache_dir)
    if model is None:
        raise ModelUnavailableError(f"{repo}: downloaded to {folder} but the cache does not list it")
    manifest = write_manifest(model, cache_dir)
    print(model.path)
    _err(f"{repo} at commit {model.commit}: {model.files} files, {_human_size(model.size_bytes)}; "
         f"manifest {manifest}")
    if revision != model.commit:
        _err(f"pin it for reproducible runs: --revision {model.commit}")


@models_app.command("verify")
def verify_command(
    repo: RepoArg,
    revision: opt.Revision = None,
) -> None:
    """Check the cached files of REPO against the hub's recorded hashes (offline: the manifest saved by pull)."""
    if repo == TINY_RANDOM:
        _err("tiny-random is built in (generated from a fixed seed); it has no files to verify")
        return
    _check_repo_id(repo)
    cache_dir = hub_cache_dir()
    model = find_cached(repo, revision, cache_dir)
    if model is None:
        raise ModelUnavailableError(
            f"{repo}{f'@{revision}' if revision else ''}: not in the cache {cache_dir} ({_describe_cached(repo, cache_dir)}); "
            "fetch it with 'segearth models pull'"
        )
    result = verify_cached(model, cache_dir)
    if result.note:
        _err(result.note)
    for name in result.not_cached:
        _err(f"not cached (never downloaded): {name}")
    for name in result.unrecorded:
        _err(f"not in the {result.source}'s list, not checked: {name}")
    for line in result.mismatched:
        print(f"MISMATCH {line}")
    if result.mismatched:
        _err(f"{repo}@{model.commit[:12]}: {len(result.mismatched)} of {result.checked} files differ from the "
             f"{result.source}'s hashes; delete them from {model.path} and pull again")
        raise typer.Exit(EXIT_FAILURE)
    print(f"OK {repo}@{model.commit} {result.checked} files match the {result.source}'s hashes")


@models_app.command("path")
def path_command(
    repo: RepoArg,
    revision: opt.Revision = None,
) -> None:
    """Print the folder where REPO is cached (exit 4 if it is not)."""
    if repo == TINY_RANDOM:
        _err("tiny-random is built in: it has no folder")
        return
    local = Path(repo).expanduser()
    if local.is_dir():
        print(local.resolve())
        return
    _check_repo_id(repo)
    cache_dir = hub_cache_dir()
    model = find_cached(repo, revision, cache_dir)
    if model is None:
        how = ("connect to the network and run 'segearth models pull " + repo + "'") if hub_offline() else (
            "run 'segearth models pull " + repo + "'")
        raise ModelUnavailableError(
            f"{repo}{f'@{revision}' if revision else ''}: not cached in {cache_dir} "
            f"({_describe_cached(repo, cache_dir)}); to get it, {how}"
        )
    print(model.path)
