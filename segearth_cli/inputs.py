"""The files a run reads, found before it writes anything: no output may ever be one of them.

A scene is more than its path. GDAL also reads the sources of a VRT (its mask band's
included), overviews (``.ovr``), masks (``.msk``), ``.aux.xml`` metadata and world files;
a hard link or a symlinked folder gives any of them a second name. So every file is
resolved to its real path and its (device, inode) pair, and an output, record, lock or
report that names one of them, by any spelling, is refused whatever ``--overwrite`` says:
overwriting an input destroys the data the answer was computed from.

Scenes are read from the local file system only. A URL (``http://``, ``/vsicurl/`` and
GDAL's other network prefixes) is refused with its spelling intact: its files cannot be
protected, and a download that stalls would hang a scheduled run.
"""

from __future__ import annotations

import errno
import os
import re
import stat
import warnings
import xml.etree.ElementTree as ElementTree
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Optional

from .errors import InputError

#: Spellings of remote data GDAL would fetch over the network.
REMOTE_PREFIXES = ("http://", "https://", "ftp://", "s3://", "gs://", "/vsicurl", "/vsis3", "/vsigs", "/vsiaz",
                   "/vsiadls", "/vsioss", "/vsiswift", "/vsihdfs", "/vsiwebhdfs")
#: Side files GDAL opens next to a raster named ``name`` (besides those ``dataset.files`` lists).
SIDE_SUFFIXES = (".ovr", ".msk", ".aux.xml")
#: Nested VRTs deeper than this are refused as a likely cycle GDAL would only stop at its pool size.
_MAX_VRT_DEPTH = 32


def is_remote(text: str) -> bool:
    return str(text).lower().startswith(REMOTE_PREFIXES)


#: A network file system or URL anywhere in a GDAL path, also inside another one
#: (/vsizip//vsicurl/https://...), but not a local folder that merely starts alike (vsicurl_cache/).
_REMOTE_INSIDE = re.compile(r"(^|/)vsi(curl|s3|gs|az|adls|oss|swift|hdfs|webhdfs)(_streaming)?/|[a-z0-9]://",
                            re.IGNORECASE)


def _names_remote_data(name: str) -> bool:
    return is_remote(name) or bool(_REMOTE_INSIDE.search(name))


def refuse_remote(text: str) -> None:
    """InputError (exit 3) for a URL, naming it exactly as given."""
    if is_remote(text):
        raise InputError(f"{text}: scenes are read from local files only; download it first")


def check_local_file(path: "str | os.PathLike[str]", label: Optional[str] = None) -> os.stat_result:
    """The stat of a regular file at ``path``, or the InputError (exit 3) that says why not.

    Refuses at once what would hang or fail late: named pipes (opening one blocks until a
    writer comes), sockets, devices, and symlink loops.
    """
    label = str(path) if label is None else label
    refuse_remote(label)
    try:
        info = os.stat(path)
    except FileNotFoundError:
        raise InputError(f"{label}: no such file") from None
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise InputError(f"{label}: symlink loop (the link points back to itself)") from None
        if exc.errno == errno.ENAMETOOLONG:
            raise InputError(f"{label}: file name too long") from None
        raise InputError(f"{label}: cannot be read ({exc.strerror or exc})") from None
    if stat.S_ISDIR(info.st_mode):
        raise InputError(f"{label}: is a directory, not a raster file")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a named pipe" if stat.S_ISFIFO(info.st_mode) else "a socket" if stat.S_ISSOCK(info.st_mode)
                else "a device")
        raise InputError(f"{label}: is {kind}, not a regular file")
    return info


@dataclass
class InputFiles:
    """Real paths and (device, inode) pairs of every file a run reads."""

    paths: dict[str, Path] = field(default_factory=dict)
    ids: dict[tuple[int, int], Path] = field(default_factory=dict)

    def add(self, path: "str | os.PathLike[str]") -> None:
        real = os.path.realpath(path)
        self.paths.setdefault(real, Path(path))
        try:
            info = os.stat(real)
        except OSError:
            return
        self.ids.setdefault((info.st_dev, info.st_ino), Path(path))

    def update(self, other: "InputFiles") -> None:
        for real, given in other.paths.items():
            self.paths.setdefault(real, given)
        for key, given in other.ids.items():
            self.ids.setdefault(key, given)

    def holding(self, candidate: "str | os.PathLike[str]") -> Optional[Path]:
        """The input that ``candidate`` names (by any spelling or link), or None."""
        try:
            real = os.path.realpath(candidate)
        except (OSError, ValueError):
            return None
        if real in self.paths:
            return self.paths[real]
        try:
            info = os.stat(candidate)
        except (OSError, ValueError):
            return None
        return self.ids.get((info.st_dev, info.st_ino))


def scene_inputs(path: "str | os.PathLike[str]", label: Optional[str] = None) -> InputFiles:
    """Every file reading the scene at ``path`` touches; InputError (exit 3) for a scene that
    is not a local regular file, or a VRT whose sources are missing or refer back to it."""
    label = str(path) if label is None else label
    check_local_file(path, label)
    files = InputFiles()
    _collect(Path(path), label, files, chain=())
    return files


def job_inputs_of(paths: Iterable["str | os.PathLike[str]"]) -> InputFiles:
    """The input files of several scenes; a scene that cannot be read adds just its own path
    (its job fails with its own reason later)."""
    files = InputFiles()
    for path in paths:
        try:
            files.update(scene_inputs(path))
        except InputError:
            files.add(path)
    return files


def _collect(path: Path, label: str, files: InputFiles, chain: tuple[str, ...]) -> None:
    real = os.path.realpath(path)
    if real in chain:
        raise InputError(f"{label}: the VRT {path.name} refers to itself through its sources")
    if len(chain) > _MAX_VRT_DEPTH:
        raise InputError(f"{label}: VRT sources nested more than {_MAX_VRT_DEPTH} deep")
    files.add(path)
    for side in _side_files(path):
        files.add(side)
    vrt = _is_vrt(path)
    for listed in _gdal_files(path) if not vrt else ():
        files.add(listed)
    if vrt:
        for source in _vrt_sources(path, label):
            if not source.exists():
                raise InputError(f"{label}: its source {source} does not exist")
            _collect(source, label, files, chain + (real,))


def _side_files(path: Path) -> list[Path]:
    candidates = [path.with_name(path.name + suffix) for suffix in SIDE_SUFFIXES]
    extension = path.suffix.lstrip(".")
    if extension:
        # World files: .tfw for .tif (first and last letter + w), .tifw, and .wld.
        for world in {extension[0] + extension[-1] + "w", extension + "w", "wld"}:
            candidates.append(path.with_suffix("." + world))
    return [candidate for candidate in candidates if os.path.isfile(candidate)]


def _gdal_files(path: Path) -> list[str]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                return list(src.files)
    except Exception:  # noqa: BLE001 - the scene open reports what is wrong with the file
        return []


def _is_vrt(path: Path) -> bool:
    if path.suffix.lower() == ".vrt":
        return True
    try:
        with open(path, "rb") as handle:
            return handle.read(64).lstrip().startswith(b"<VRTDataset")
    except OSError:
        return False


def _vrt_sources(path: Path, label: str) -> list[Path]:
    """Local files named by ``SourceFilename`` anywhere in the VRT (band and mask band sources)."""
    try:
        root = ElementTree.parse(path).getroot()
    except (ElementTree.ParseError, OSError) as exc:
        raise InputError(f"{label}: not a readable VRT ({exc})") from None
    sources = []
    for element in root.iter("SourceFilename"):
        name = (element.text or "").strip()
        if _names_remote_data(name):
            raise InputError(f"{label}: its source {name} is remote; scenes are read from local files only, so "
                             "download it and point the VRT at the copy")
        if not name or name.startswith("/vsi"):
            continue
        source = Path(name)
        if element.get("relativeToVRT") == "1":
            source = path.parent / source
        sources.append(source)
    return sources
