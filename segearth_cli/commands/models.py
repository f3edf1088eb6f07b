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

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from ..errors import EXIT_FAILURE
from . import options as opt

models_app = typer.Typer(
    name="models",
    help="List, download, check and locate models in the Hugging Face hub cache.",
    no_args_is_help=True,
    add_completion=False,
)

RepoArg = Annotated[str, typer.Argument(metavar="REPO", help="Hub repo id, e.g. earth-insights/SegEarth-R1-EarthReason.",
                                        show_default=False)]


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
    from .. import model_cache as cache
    from ..segmenter import TINY_RANDOM, hub_cache_dir, hub_offline

    cache_dir = hub_cache_dir()
    models, warnings = cache.cached_models(cache_dir)
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
    from .. import model_cache as cache
    from ..segmenter import TINY_RANDOM, hub_cache_dir, hub_offline

    if repo == TINY_RANDOM:
        _err("tiny-random is built in; there is nothing to download")
        return
    cache.check_repo_id(repo)
    if not hub_offline():
        _err(f"downloading {repo}{f' at {revision}' if revision else ''} into {hub_cache_dir()}")
    model = cache.pull(repo, revision)
    manifest = cache.manifest_path(model.repo, model.commit)
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
    from .. import model_cache as cache
    from ..segmenter import TINY_RANDOM

    if repo == TINY_RANDOM:
        _err("tiny-random is built in (generated from a fixed seed); it has no files to verify")
        return
    model = cache.require_cached(repo, revision)
    result = cache.verify_cached(model)
    if result.note:
        _err(result.note)
    # The manifest lists what was cached when it was written, so each of its files must be
    # there; the hub lists every file of the repo, and loading fetches only those it needs.
    missing = result.not_cached if result.source == "manifest" else []
    for name in result.not_cached:
        _err(f"missing (the manifest records it): {name}" if missing else f"not cached (not downloaded): {name}")
    for name in result.unrecorded:
        _err(f"not in the {result.source}'s list, not checked: {name}")
    for line in result.mismatched:
        print(f"MISMATCH {line}")
    if result.mismatched or missing:
        _err(f"{repo}@{model.commit[:12]}: {len(result.mismatched)} of {result.checked} files differ from the "
             f"{result.source}'s hashes and {len(missing)} recorded files are missing; pull it again "
             f"('segearth models pull {repo} --revision {model.commit}' fetches what differs)")
        raise typer.Exit(EXIT_FAILURE)
    print(f"OK {repo}@{model.commit} {result.checked} files match the {result.source}'s hashes")


@models_app.command("path")
def path_command(
    repo: RepoArg,
    revision: opt.Revision = None,
) -> None:
    """Print the folder where REPO is cached (exit 4 if it is not)."""
    from .. import model_cache as cache
    from ..segmenter import TINY_RANDOM

    if repo == TINY_RANDOM:
        _err("tiny-random is built in: it has no folder")
        return
    local = Path(repo).expanduser()
    if local.is_dir():
        print(local.resolve())
        return
    print(cache.require_cached(repo, revision).path)
