"""Bad and odd inputs against the real command line: nothing lost, every user error refused up front.

Every refusal is held to the same contract: the documented exit code, exactly one line
``segearth: error: ...`` naming the file or the option, no traceback, and the whole work
folder (scenes, job files, side files, outputs that existed) byte-identical afterwards:
nothing at any target path, no temporary left, no folder created. User errors must be
found before the model loads, which the log shows: loading ``tiny-random`` always warns
that its weights are random, so that warning must not appear.

Most cases run in-process through ``cli.run``; a real process is used where it matters
(a named pipe that could block for ever, whether torch was imported). The full-disk cases
mount a small tmpfs (or a loop-mounted ext2 image) and skip, saying why, where the test
machine does not allow it.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import os
import signal
import socket
import sqlite3
import stat
import subprocess
import sys
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from segearth_cli import cli
from segearth_cli.errors import EXIT_INPUT, EXIT_MODEL, EXIT_OK, EXIT_OUTPUT, EXIT_USAGE

pytestmark = pytest.mark.filterwarnings("ignore::rasterio.errors.NotGeoreferencedWarning")

MODEL = ["--model", "tiny-random", "--device", "cpu"]
QUESTION = "where are the roofs?"
UTM = CRS.from_epsg(32633)
GRID = Affine(1, 0, 500000, 0, -1, 4000000)
#: Logged by the model loader before it builds tiny-random: its presence means the model was loaded.
MODEL_LOADED = "random weights"
INPUT_OR_OUTPUT = (EXIT_USAGE, EXIT_OUTPUT)


# --------------------------------------------------------------------------- helpers


class Hung(BaseException):
    """Raised by :func:`deadline` in a command that runs past its time (not an Exception: nothing catches it)."""


@contextlib.contextmanager
def deadline(seconds: float):
    def expire(signum, frame):  # noqa: ARG001 - signal handler signature
        raise Hung(f"still running after {seconds} s")

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def tree(*roots: Path) -> dict[str, str]:
    """Every entry under ``roots`` with its kind and, for files, a hash of the bytes."""
    state = {}
    for root in roots:
        for folder, dirs, files in os.walk(root):
            for name in dirs + files:
                path = os.path.join(folder, name)
                info = os.lstat(path)
                if stat.S_ISLNK(info.st_mode):
                    state[path] = "link " + os.readlink(path)
                elif stat.S_ISREG(info.st_mode):
                    with open(path, "rb") as handle:
                        state[path] = "file " + hashlib.sha256(handle.read()).hexdigest()
                elif stat.S_ISDIR(info.st_mode):
                    state[path] = "dir"
                else:
                    state[path] = f"special {stat.S_IFMT(info.st_mode):o}"
    return state


def error_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("segearth: error:")]


def assert_message(err: str, fragments, single: bool = True) -> None:
    """One error line (or, for batch, one among the job lines) holding every fragment; ``!x``: x absent."""
    assert "Traceback" not in err, err
    lines = error_lines(err)
    if single:
        assert len(lines) == 1, err
    assert lines, err
    wanted = [f.lower() for f in fragments if not f.startswith("!")]
    unwanted = [f[1:].lower() for f in fragments if f.startswith("!")]
    assert any(all(f in line.lower() for f in wanted) for line in lines), (fragments, err)
    for line in lines:
        for fragment in unwanted:
            assert fragment not in line.lower(), (fragment, line)


def assert_refused(code: int, err: str, expected, fragments, before: dict, roots, *, single: bool = True,
                   model_may_load: bool = False) -> None:
    expected = expected if isinstance(expected, tuple) else (expected,)
    assert code in expected, f"exit {code}, expected {expected}: {err}"
    assert_message(err, fragments, single=single)
    assert tree(*roots) == before, "files changed, appeared or vanished"
    if not model_may_load:
        assert MODEL_LOADED not in err, "the error was found only after the model loaded"


@pytest.fixture(scope="module", autouse=True)
def model_code_imported():
    """Import the model's code once up front: a deadline then measures a command, not this one-time
    cost, and cannot fire in the middle of an import (which would leave a half-imported module)."""
    from segearth_cli.segmenter import load_segmenter

    load_segmenter("tiny-random", revision=None, device="cpu", dtype="auto", task="auto", quiet=True)


@pytest.fixture
def ws(tmp_path, write_geotiff):
    """A work folder with a small georeferenced scene and an empty output folder."""
    rng = np.random.default_rng(12)
    write_geotiff("scene.tif", rng.integers(0, 256, (3, 48, 64), dtype=np.uint8), crs=UTM, transform=GRID)
    (tmp_path / "out").mkdir()
    return tmp_path


def fill(ws: Path, text: str) -> str:
    return text.format(tmp=ws, scene=ws / "scene.tif", out=ws / "out")


def invoke(capsys, ws: Path, args, deadline_s: float = 60) -> tuple[int, str, str]:
    with deadline(deadline_s):
        code = cli.run([fill(ws, str(a)) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def query(*extra, scene="{scene}", question=QUESTION, out="{out}/a.tif") -> list[str]:
    args = ["query", scene, question, *MODEL, *extra]
    return args + (["-o", out] if out is not None else [])


def write_tif(path: Path, width=64, height=48, count=3, dtype="uint8", crs=UTM, transform=GRID, seed=0) -> Path:
    import rasterio

    rng = np.random.default_rng(seed)
    if np.dtype(dtype).kind == "c":
        data = (rng.random((count, height, width)) + 1j * rng.random((count, height, width))).astype(dtype)
    else:
        data = rng.integers(0, 256, (count, height, width)).astype(dtype)
    options = dict(driver="GTiff", width=width, height=height, count=count, dtype=dtype, transform=transform)
    if crs is not None:
        options["crs"] = crs
    with rasterio.open(path, "w", **options) as dst:
        dst.write(data)
    return path


def vrt(path: Path, source: str, mask_source: Optional[str] = None, width=64, height=48) -> Path:
    bands = "".join(
        f'<VRTRasterBand dataType="Byte" band="{b}"><SimpleSource>'
        f'<SourceFilename relativeToVRT="1">{source}</SourceFilename><SourceBand>{b}</SourceBand>'
        f"</SimpleSource></VRTRasterBand>"
        for b in (1, 2, 3)
    )
    mask = ""
    if mask_source is not None:
        mask = (f'<MaskBand><VRTRasterBand dataType="Byte"><SimpleSource>'
                f'<SourceFilename relativeToVRT="1">{mask_source}</SourceFilename><SourceBand>1</SourceBand>'
                f"</SimpleSource></VRTRasterBand></MaskBand>")
    path.write_text(f'<VRTDataset rasterXSize="{width}" rasterYSize="{height}">'
                    f"<SRS>EPSG:32633</SRS><GeoTransform>500000, 1, 0, 4000000, 0, -1</GeoTransform>"
                    f"{bands}{mask}</VRTDataset>")
    return path


def jobs_csv(ws: Path, rows, name="jobs.csv", header="scene,question,output") -> Path:
    import csv
    import io

    buffer = io.StringIO(newline="")
    csv.writer(buffer, lineterminator="\n").writerows(rows)
    path = ws / name
    path.write_text((header + "\n" if header else "") + buffer.getvalue(), encoding="utf-8", newline="")
    return path


# --------------------------------------------------------------------------- scene setups


def make(name: str) -> Callable[[Path], None]:
    """The setup function named ``name`` below (tables refer to setups by name)."""
    return SETUPS[name]


def _empty(ws):
    (ws / "empty.tif").write_bytes(b"")


def _folder(ws):
    (ws / "folder.tif").mkdir()


def _text(ws):
    (ws / "notes.tif").write_text("not a raster\n")


def _truncated(ws):
    (ws / "cut.tif").write_bytes((ws / "scene.tif").read_bytes()[:300])


def _json_scene(ws):
    (ws / "scene.json").write_text("{}")


def _loop(ws):
    os.symlink(ws / "loop2.tif", ws / "loop.tif")
    os.symlink(ws / "loop.tif", ws / "loop2.tif")


def _dangling(ws):
    os.symlink(ws / "gone.tif", ws / "dangling.tif")


def _socket(ws):
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(ws / "sock.tif"))
    server.close()


def _self_vrt(ws):
    vrt(ws / "self.vrt", "self.vrt")


def _broken_vrt(ws):
    vrt(ws / "broken.vrt", "missing_source.tif")


def _remote_vrt(ws):
    # Port 9 (discard) on the loopback: nothing is fetched even if the refusal regressed.
    path = vrt(ws / "remote.vrt", "x")
    path.write_text(path.read_text().replace(
        '<SourceFilename relativeToVRT="1">x</SourceFilename>',
        "<SourceFilename>/vsizip//vsicurl/http://127.0.0.1:9/a.zip/a.tif</SourceFilename>"))


def _complex(ws):
    write_tif(ws / "complex.tif", dtype="complex64")


def _no_crs(ws):
    write_tif(ws / "nocrs.tif", crs=None)


def _no_georef(ws):
    write_tif(ws / "plain.tif", crs=None, transform=Affine.identity())


def _big(ws):
    write_tif(ws / "big.tif", width=512, height=512)


def _existing(ws):
    (ws / "out" / "a.tif").write_bytes(b"precious")


def _dangling_out(ws):
    os.symlink(ws / "nowhere.tif", ws / "out" / "a.tif")


def _out_folder(ws):
    (ws / "out" / "d.tif").mkdir()


def _link_to_scene(ws):
    os.symlink(ws / "scene.tif", ws / "out" / "link.tif")


def _hardlink_to_scene(ws):
    os.link(ws / "scene.tif", ws / "out" / "hard.tif")


def _linked_folder(ws):
    os.symlink(ws, ws / "out" / "again")


def _vrt_scene(ws):
    write_tif(ws / "src.tif")
    vrt(ws / "scene.vrt", "src.tif")


def _vrt_with_mask(ws):
    write_tif(ws / "src.tif")
    write_tif(ws / "m.tif", count=1)
    vrt(ws / "masked.vrt", "src.tif", mask_source="m.tif")


def _sidecars(ws):
    write_tif(ws / "scene.tif.msk", count=1)
    write_tif(ws / "scene.tif.ovr", width=32, height=24)
    (ws / "scene.tif.aux.xml").write_text("<PAMDataset></PAMDataset>\n")


SETUPS = {name.lstrip("_"): function for name, function in list(globals().items())
          if name.startswith("_") and callable(function) and getattr(function, "__module__", None) == __name__
          and function.__code__.co_argcount == 1 and function.__code__.co_varnames[:1] == ("ws",)}

NUL_OUTPUT = "{out}/a\x00b.tif"
LONG_QUESTION = "where " * 10000


# --------------------------------------------------------------------------- query: refused


QUERY_REFUSALS = [
    # The scene: missing, empty, not a raster, or not a regular file (exit 3, naming it).
    ("scene-missing", None, query(scene="{tmp}/nope.tif"), EXIT_INPUT, ["nope.tif", "no such file"]),
    ("scene-empty-file", "empty", query(scene="{tmp}/empty.tif"), EXIT_INPUT, ["empty.tif"]),
    ("scene-is-folder", "folder", query(scene="{tmp}/folder.tif"), EXIT_INPUT, ["folder.tif"]),
    ("scene-is-text", "text", query(scene="{tmp}/notes.tif"), EXIT_INPUT, ["notes.tif"]),
    ("scene-truncated-geotiff", "truncated", query(scene="{tmp}/cut.tif"), EXIT_INPUT, ["cut.tif"]),
    ("scene-is-json", "json_scene", query(scene="{tmp}/scene.json"), EXIT_INPUT, ["scene.json"]),
    ("scene-symlink-loop", "loop", query(scene="{tmp}/loop.tif"), EXIT_INPUT, ["loop.tif", "!OSError"]),
    ("scene-dangling-symlink", "dangling", query(scene="{tmp}/dangling.tif"), EXIT_INPUT, ["dangling.tif"]),
    ("scene-dev-null", None, query(scene="/dev/null"), EXIT_INPUT, ["/dev/null"]),
    ("scene-socket", "socket", query(scene="{tmp}/sock.tif"), EXIT_INPUT, ["sock.tif"]),
    ("scene-self-referencing-vrt", "self_vrt", query(scene="{tmp}/self.vrt"), EXIT_INPUT,
     ["self.vrt", "!pool size"]),
    ("scene-vrt-missing-source", "broken_vrt", query(scene="{tmp}/broken.vrt"), EXIT_INPUT, ["broken.vrt"]),
    ("scene-vrt-with-remote-source", "remote_vrt", query(scene="{tmp}/remote.vrt"), EXIT_INPUT,
     ["remote.vrt", "/vsicurl/http://127.0.0.1:9/a.zip/a.tif is remote"]),
    ("scene-complex-valued", "complex", query(scene="{tmp}/complex.tif"), EXIT_INPUT, ["complex.tif", "complex"]),
    ("scene-newline-in-name", None, query(scene="{tmp}/a\nb.tif"), EXIT_INPUT, ["b.tif"]),
    ("scene-nul-in-name", None, query(scene="{tmp}/sc\x00ene.tif"), (EXIT_USAGE, EXIT_INPUT), ["SCENE"]),
    ("scene-http-url", None, query(scene="http://127.0.0.1:9/scene.tif"), EXIT_INPUT,
     ["http://127.0.0.1:9/scene.tif"]),
    ("scene-https-url", None, query(scene="https://127.0.0.1:9/scene.tif"), EXIT_INPUT,
     ["https://127.0.0.1:9/scene.tif"]),
    ("scene-vsicurl-url", None, query(scene="/vsicurl/http://127.0.0.1:9/scene.tif"), EXIT_INPUT,
     ["http://127.0.0.1:9/scene.tif"]),
    # --bands against the option's form and the scene's band count.
    ("bands-zero", None, query("--bands", "0"), EXIT_USAGE, ["--bands"]),
    ("bands-negative", None, query("--bands=-1"), EXIT_USAGE, ["--bands"]),
    ("bands-four", None, query("--bands", "1,2,3,1"), EXIT_USAGE, ["--bands"]),
    ("bands-letters", None, query("--bands", "r,g,b"), EXIT_USAGE, ["--bands"]),
    ("bands-empty", None, query("--bands", ""), EXIT_USAGE, ["--bands"]),
    ("bands-beyond-scene", None, query("--bands", "4"), (EXIT_USAGE, EXIT_INPUT), ["--bands"]),
    ("bands-huge-number", None, query("--bands", "99999999999999999999"), (EXIT_USAGE, EXIT_INPUT), ["--bands"]),
    # Numbers: non-finite and out of range.
    ("gsd-inf", None, query("--gsd", "inf"), EXIT_USAGE, ["--gsd"]),
    ("gsd-nan", None, query("--gsd", "nan"), EXIT_USAGE, ["--gsd"]),
    ("gsd-minus-one", None, query("--gsd=-1"), EXIT_USAGE, ["--gsd"]),
    ("gsd-zero", None, query("--gsd", "0"), EXIT_USAGE, ["--gsd"]),
    ("gsd-window-below-16-px", None, query("--gsd", "1e-9"), EXIT_USAGE, ["--gsd"]),
    ("gsd-without-crs", "no_crs", query("--gsd", "1", scene="{tmp}/nocrs.tif"), EXIT_USAGE, ["--gsd"]),
    ("overlap-one", None, query("--overlap", "1"), EXIT_USAGE, ["--overlap"]),
    ("overlap-negative", None, query("--overlap=-0.1"), EXIT_USAGE, ["--overlap"]),
    ("overlap-nan", None, query("--overlap", "nan"), EXIT_USAGE, ["--overlap"]),
    ("overlap-inf", None, query("--overlap", "inf"), EXIT_USAGE, ["--overlap"]),
    ("threshold-zero", None, query("--threshold", "0"), EXIT_USAGE, ["--threshold"]),
    ("threshold-one", None, query("--threshold", "1"), EXIT_USAGE, ["--threshold"]),
    ("threshold-negative", None, query("--threshold=-0.2"), EXIT_USAGE, ["--threshold"]),
    ("threshold-nan", None, query("--threshold", "nan"), EXIT_USAGE, ["--threshold"]),
    ("threshold-inf", None, query("--threshold", "inf"), EXIT_USAGE, ["--threshold"]),
    ("min-area-negative", None, query("--min-area=-1"), EXIT_USAGE, ["--min-area"]),
    ("min-area-nan", None, query("--min-area", "nan"), EXIT_USAGE, ["--min-area"]),
    ("min-area-inf", None, query("--min-area", "inf", out="{out}/a.gpkg"), EXIT_USAGE, ["--min-area"]),
    ("simplify-negative", None, query("--simplify=-1"), EXIT_USAGE, ["--simplify"]),
    ("simplify-nan", None, query("--simplify", "nan"), EXIT_USAGE, ["--simplify"]),
    ("simplify-inf", None, query("--simplify", "inf", out="{out}/a.gpkg"), EXIT_USAGE, ["--simplify"]),
    ("window-15", None, query("--window", "15"), EXIT_USAGE, ["--window"]),
    ("window-zero", None, query("--window", "0"), EXIT_USAGE, ["--window"]),
    ("window-negative", None, query("--window=-5"), EXIT_USAGE, ["--window"]),
    ("window-not-a-number", None, query("--window", "big"), EXIT_USAGE, ["--window"]),
    ("batch-size-negative", None, query("--batch-size=-1"), EXIT_USAGE, ["--batch-size"]),
    ("mode-empty", None, query("--mode", ""), EXIT_USAGE, ["--mode"]),
    ("task-unknown", None, query("--task", "poetry"), EXIT_USAGE, ["--task"]),
    ("device-empty", None, query("--device", ""), EXIT_USAGE, ["--device"]),
    ("device-cuda-99", None, query("--device", "cuda:99"), EXIT_USAGE, ["--device"]),
    ("dtype-float64", None, query("--dtype", "float64"), EXIT_USAGE, ["--dtype"]),
    # Windows: a plan far beyond any sensible budget is refused, naming the option.
    ("overlap-0.99-window-explosion", "big", query("--mode", "tiled", "--window", "16", "--overlap", "0.99",
                                                   scene="{tmp}/big.tif"), EXIT_USAGE, ["--overlap", "window"]),
    # Questions: empty, control characters, longer than the model's context.
    ("question-blank", None, query(question="   "), EXIT_USAGE, ["question"]),
    ("question-second-empty", None, query("-q", ""), EXIT_USAGE, ["question"]),
    ("question-nul", None, query(question="where\x00 are the roofs?"), EXIT_USAGE, ["question"]),
    ("question-soh", None, query(question="where\x01 are the roofs?"), EXIT_USAGE, ["question"]),
    ("question-bell", None, query(question="where are the roofs?\x07"), EXIT_USAGE, ["question"]),
    ("question-escape-sequence", None, query(question="\x1b[31mwhere are the roofs?"), EXIT_USAGE, ["question"]),
    ("question-backspace", None, query(question="where\x08 are the roofs?"), EXIT_USAGE, ["question"]),
    ("question-delete", None, query(question="where are\x7f the roofs?"), EXIT_USAGE, ["question"]),
    ("question-c1-csi", None, query(question="where\x9b are the roofs?"), EXIT_USAGE, ["question"]),
    ("question-nul-in-second", None, query("-q", "and\x00 the roads?"), EXIT_USAGE, ["question"]),
    ("question-longer-than-context", None, query(question=LONG_QUESTION), EXIT_USAGE, ["question", "token"]),
    ("question-second-longer-than-context", None, query("-q", LONG_QUESTION), EXIT_USAGE, ["question", "token"]),
    # Outputs: kinds, folders, names.
    ("output-no-extension", None, query(out="{out}/a"), EXIT_USAGE, ["out/a"]),
    ("output-tif-gz", None, query(out="{out}/a.tif.gz"), EXIT_USAGE, ["a.tif.gz"]),
    ("output-ovr", None, query(out="{out}/a.ovr"), EXIT_USAGE, ["a.ovr"]),
    ("output-nul-in-name", None, query(out=NUL_OUTPUT), EXIT_USAGE, ["-o", "!ValueError"]),
    ("output-missing-folder", None, query(out="{out}/no/such/a.tif"), EXIT_OUTPUT, ["no/such"]),
    ("output-parent-is-a-file", None, query(out="{scene}/a.tif"), EXIT_OUTPUT, ["scene.tif/a.tif"]),
    ("output-is-a-folder", "out_folder", query(out="{out}/d.tif"), EXIT_OUTPUT, ["d.tif"]),
    ("output-exists", "existing", query(), EXIT_OUTPUT, ["a.tif", "--overwrite"]),
    ("output-dangling-symlink-exists", "dangling_out", query(), EXIT_OUTPUT, ["a.tif"]),
    ("output-given-twice-spelled-differently", None, query("-o", "{out}/./a.tif"), EXIT_USAGE, ["a.tif"]),
    ("output-256-byte-name", None, query(out="{out}/" + "n" * 252 + ".tif"), (EXIT_USAGE, EXIT_OUTPUT),
     ["nnnnnnnn.tif"]),
    ("output-gpkg-without-georeferencing", "no_georef", query(scene="{tmp}/plain.tif", out="{out}/a.gpkg"),
     EXIT_USAGE, ["a.gpkg"]),
    ("output-geojson-without-crs", "no_crs", query(scene="{tmp}/nocrs.tif", out="{out}/a.geojson"),
     EXIT_USAGE, ["a.geojson"]),
    # Inputs are sacred, whatever --overwrite says.
    ("overwrite-scene-itself", None, query("--overwrite", out="{scene}"), INPUT_OR_OUTPUT, ["scene.tif"]),
    ("overwrite-scene-via-symlink", "link_to_scene", query("--overwrite", out="{out}/link.tif"), INPUT_OR_OUTPUT,
     ["link.tif"]),
    ("overwrite-scene-via-symlinked-folder", "linked_folder", query("--overwrite", out="{out}/again/scene.tif"),
     INPUT_OR_OUTPUT, ["scene.tif"]),
    ("overwrite-scene-via-hardlink", "hardlink_to_scene", query("--overwrite", out="{out}/hard.tif"),
     INPUT_OR_OUTPUT, ["hard.tif"]),
    ("overwrite-vrt-source", "vrt_scene", query("--overwrite", scene="{tmp}/scene.vrt", out="{tmp}/src.tif"),
     INPUT_OR_OUTPUT, ["src.tif"]),
    ("overwrite-vrt-mask-source", "vrt_with_mask",
     query("--overwrite", scene="{tmp}/masked.vrt", out="{tmp}/m.tif"), INPUT_OR_OUTPUT, ["m.tif"]),
]


@pytest.mark.parametrize("setup, args, expected, fragments",
                         [case[1:] for case in QUERY_REFUSALS], ids=[case[0] for case in QUERY_REFUSALS])
def test_query_refuses(capsys, ws, setup, args, expected, fragments):
    if setup is not None:
        make(setup)(ws)
    before = tree(ws)
    try:
        code, _, err = invoke(capsys, ws, args, deadline_s=10)
    except Hung as hung:
        pytest.fail(f"segearth {args[0]}: {hung}")
    assert_refused(code, err, expected, fragments, before, [ws])


# --------------------------------------------------------------------------- query: odd but legal


@pytest.mark.parametrize(("length", "extra"), [(220, ()), (240, ()), (255, ()), (204, ("--cog", "--probabilities")),
                                               (255, ("--cog", "--probabilities"))])
def test_query_writes_long_but_legal_output_names(capsys, ws, length, extra):
    """The temporaries, and the staging files of a Cloud-Optimized GeoTIFF, fit whatever the name."""
    name = "n" * (length - 4) + ".tif"
    before = tree(ws)
    code, _, err = invoke(capsys, ws, query(*extra, out=f"{{out}}/{name}"))
    assert code == EXIT_OK, err
    after = tree(ws)
    assert set(after) - set(before) == {str(ws / "out" / name)}, "only the output may appear"
    assert {k: after[k] for k in before} == before


def test_query_control_tokens_in_questions_are_plain_text(capsys, ws):
    code, out, err = invoke(capsys, ws, query("-q", "[PAD] where is the water?", "-q", "<|endoftext|> roads?",
                                              "--json", question="[SEG] where are the roofs?"))
    assert code == EXIT_OK, err
    assert len(json.loads(out)["questions"]) == 3


@pytest.mark.parametrize("token", ["[SEG]", "[PAD]", "<|endoftext|>"])
def test_control_tokens_typed_by_a_user_are_encoded_as_text(token):
    from segearth_model.prompt import special_token_ids, tokenize_question
    from segearth_model.tiny_random import build_tiny_tokenizer

    tokenizer = build_tiny_tokenizer()
    ids = special_token_ids(tokenizer)
    control = {ids.pad, ids.seg, tokenizer.eos_token_id}
    encoded = tokenize_question(tokenizer, f"where is the {token} here?")
    assert encoded[-1] == ids.seg
    assert not control & set(encoded[:-1]), f"{token} became a control token"


def test_query_duplicate_question_is_answered_once(capsys, ws):
    code, out, err = invoke(capsys, ws, query("-q", QUESTION, "--json", out="{out}/a.gpkg"))
    if code == EXIT_USAGE:  # refusing is the other acceptable answer
        assert_message(err, ["question"])
        assert not (ws / "out" / "a.gpkg").exists()
        return
    assert code == EXIT_OK, err
    report = json.loads(out)
    assert [q["question"] for q in report["questions"]] == [QUESTION]
    with sqlite3.connect(ws / "out" / "a.gpkg") as db:
        table = db.execute("select table_name from gpkg_contents where data_type = 'features'").fetchone()[0]
        rows = db.execute(f'select count(*) from "{table}"').fetchone()[0]
    assert rows == report["questions"][0]["polygons"]


def test_query_gpkg_for_a_scene_without_crs_warns(capsys, ws):
    _no_crs(ws)
    code, _, err = invoke(capsys, ws, query(scene="{tmp}/nocrs.tif", out="{out}/a.gpkg"))
    assert code == EXIT_OK, err
    assert (ws / "out" / "a.gpkg").is_file()
    warnings_ = [line for line in err.splitlines()
                 if line.startswith("segearth: warning:") and MODEL_LOADED not in line]
    assert any("crs" in line.lower() or "coordinate reference system" in line.lower() for line in warnings_), err


# --------------------------------------------------------------------------- real processes


def run_process(args, timeout: float, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "segearth_cli.cli", *args], capture_output=True, text=True,
                          timeout=timeout, cwd=cwd, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_query_non_regular_scene_is_refused_promptly(ws, kind):
    scene = ws / "pipe.tif"
    if kind == "fifo":
        os.mkfifo(scene)
    else:
        scene = Path("/dev/zero")
    before = tree(ws)
    try:
        result = run_process(query(scene=str(scene), out=str(ws / "out" / "a.tif")), timeout=10, cwd=ws)
    except subprocess.TimeoutExpired:
        pytest.fail(f"{scene}: still running after 10 s")
    assert_refused(result.returncode, result.stderr, EXIT_INPUT, [scene.name], before, [ws])


TORCH_GUARD = '''
import sys

attempts = []


class RefuseTorch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch" or name.startswith("torch."):
            attempts.append(name)
            raise ImportError("torch imported")
        return None


sys.meta_path.insert(0, RefuseTorch())
from segearth_cli import cli

code = cli.run(sys.argv[1:])
print("torch import attempted" if attempts else "torch never imported", file=sys.stderr)
sys.exit(code)
'''

TORCH_FREE_REFUSALS = [
    ("query-device-tpu", query("--device", "tpu"), ["--device", "tpu"]),
    ("query-dtype-int8", query("--dtype", "int8"), ["--dtype", "int8"]),
    ("query-dtype-float64", query("--dtype", "float64"), ["--dtype", "float64"]),
    ("query-task-unknown", query("--task", "poetry"), ["--task"]),
    ("batch-device-tpu", ["batch", "{tmp}/jobs.csv", "--model", "tiny-random", "--device", "tpu"], ["--device"]),
    ("batch-dtype-int8", ["batch", "{tmp}/jobs.csv", "--model", "tiny-random", "--dtype", "int8"], ["--dtype"]),
    ("eval-device-tpu", ["eval", "{tmp}/data", "--dataset", "earthreason", "--model", "tiny-random",
                         "--device", "tpu"], ["--device"]),
]


@pytest.mark.parametrize("args, fragments", [c[1:] for c in TORCH_FREE_REFUSALS],
                         ids=[c[0] for c in TORCH_FREE_REFUSALS])
def test_device_and_dtype_spellings_are_refused_before_torch_is_imported(ws, args, fragments):
    jobs_csv(ws, [["scene.tif", QUESTION, "out/a.tif"]])
    _earthreason(ws / "data")
    guard = ws / "guard.py"
    guard.write_text(TORCH_GUARD)
    before = tree(ws)
    result = subprocess.run([sys.executable, str(guard), *[fill(ws, a) for a in args]], capture_output=True,
                            text=True, timeout=60, cwd=ws, stdin=subprocess.DEVNULL)
    assert "torch never imported" in result.stderr, result.stderr
    assert_refused(result.returncode, result.stderr, EXIT_USAGE, fragments, before, [ws])


# --------------------------------------------------------------------------- a full disk


def open_files_under(folder: Path) -> list[str]:
    """Files under ``folder`` this process still holds open (a command must close what it opened)."""
    held = []
    for fd in os.listdir("/proc/self/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/self/fd/{fd}")
            if target.startswith(str(folder) + os.sep):
                held.append(target)
    return held


def _mount(args) -> bool:
    return subprocess.run(["mount", *args], capture_output=True).returncode == 0


@pytest.fixture(scope="module")
def small_fs(tmp_path_factory):
    """A 1 MiB filesystem: tmpfs when root may mount one, else a loop-mounted ext2 image."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small filesystem needs root")
    point = tmp_path_factory.mktemp("smallfs")
    if not _mount(["-t", "tmpfs", "-o", "size=1m", "tmpfs", str(point)]):
        image = tmp_path_factory.mktemp("image") / "fs.img"
        with open(image, "wb") as handle:
            handle.truncate(1 << 20)
        made = subprocess.run(["mkfs.ext2", "-q", "-F", "-m", "0", str(image)], capture_output=True)
        if made.returncode != 0 or not _mount(["-o", "loop", str(image), str(point)]):
            pytest.skip("neither a tmpfs nor a loop device can be mounted here")
    try:
        yield point
    finally:
        subprocess.run(["umount", "--lazy", str(point)], capture_output=True)


@pytest.fixture
def full_disk(small_fs):
    """``full_disk(free_bytes)`` -> a folder on the small filesystem with about that much space left."""
    folder = small_fs / "work"
    folder.mkdir()

    def make_full(free: int = 0) -> Path:
        filler = folder / "filler"
        fd = os.open(filler, os.O_WRONLY | os.O_CREAT, 0o644)
        try:
            for chunk in (1 << 16, 1 << 12, 1 << 9, 1):
                try:
                    while True:
                        os.write(fd, b"\0" * chunk)
                except OSError as exc:
                    assert exc.errno == errno.ENOSPC
            if free:
                os.ftruncate(fd, max(0, os.fstat(fd).st_size - free))
        finally:
            os.close(fd)
        return folder

    yield make_full
    subprocess.run(["rm", "-rf", str(folder)], check=True)


FULL_DISK_QUERIES = [
    ("mask-tif", "a.tif", [], 0),
    ("mask-tif-probabilities", "a.tif", ["--probabilities"], 0),
    ("mask-tif-cog", "a.tif", ["--cog"], 0),
    ("mask-tif-half-written", "a.tif", ["--probabilities"], 96 << 10),
    ("gpkg", "a.gpkg", [], 0),
    ("geojson", "a.geojson", [], 0),
    ("png-quicklook", "a.png", [], 0),
]


@pytest.mark.parametrize("name, extra, free", [c[1:] for c in FULL_DISK_QUERIES],
                         ids=[c[0] for c in FULL_DISK_QUERIES])
def test_query_on_a_full_disk_exits_5_and_leaves_nothing(capsys, ws, full_disk, name, extra, free):
    _big(ws)
    folder = full_disk(free)
    target = folder / name
    before = tree(ws, folder)
    code, _, err = invoke(capsys, ws, query(*extra, scene="{tmp}/big.tif", out=str(target)))
    assert not open_files_under(folder), "the command left files open"
    assert_refused(code, err, EXIT_OUTPUT, [str(target), "no space left", "!.tmp"], before, [ws, folder],
                   model_may_load=True)


@pytest.mark.parametrize("name", ["b.tif", "b.gpkg"])
def test_batch_on_a_full_disk_exits_5_and_leaves_nothing(capsys, ws, full_disk, name):
    _big(ws)
    folder = full_disk()
    target = folder / name
    jobs_csv(ws, [["big.tif", QUESTION, str(target)]])
    before = tree(ws, folder)
    code, _, err = invoke(capsys, ws, ["batch", "{tmp}/jobs.csv", *MODEL])
    assert not open_files_under(folder), "the command left files open"
    assert_refused(code, err, EXIT_OUTPUT, [str(target), "no space left", "!.tmp"], before, [ws, folder],
                   single=False, model_may_load=True)


def test_output_on_a_read_only_filesystem_is_refused_up_front(capsys, ws, tmp_path_factory):
    if os.geteuid() != 0:
        pytest.skip("mounting a read-only filesystem needs root")
    point = tmp_path_factory.mktemp("readonly")
    if not _mount(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs", str(point)]):
        pytest.skip("tmpfs cannot be mounted here")
    try:
        before = tree(ws, point)
        code, _, err = invoke(capsys, ws, query(out=str(point / "a.tif")))
        assert_refused(code, err, EXIT_OUTPUT, ["a.tif"], before, [ws, point])
    finally:
        subprocess.run(["umount", str(point)], capture_output=True)


# --------------------------------------------------------------------------- batch


def _batch_rows(ws, text: str, name="jobs.csv"):
    (ws / name).write_bytes(text.encode("utf-8") if isinstance(text, str) else text)


BATCH_FILE_REFUSALS = [
    ("empty-file", "jobs.csv", b"", ["jobs.csv"]),
    ("wrong-header", "jobs.csv", "scene,prompt,output\nscene.tif,q,out/a.tif\n", ["jobs.csv", "header"]),
    ("four-columns", "jobs.csv", "scene,question,output\nscene.tif,where, roofs?,out/a.tif\n", ["jobs.csv", "line 2"]),
    ("empty-question-cell", "jobs.csv", "scene,question,output\nscene.tif,,out/a.tif\n", ["jobs.csv", "line 2"]),
    ("not-utf8", "jobs.csv", b"scene,question,output\nscene.tif,o\xf9 ?,out/a.tif\n", ["jobs.csv", "utf-8"]),
    ("unknown-output-kind", "jobs.csv", "scene,question,output\nscene.tif,q,out/a.txt\n", ["jobs.csv", "a.txt"]),
    ("output-shared-by-two-jobs", "jobs.csv", "scene,question,output\nscene.tif,q1,out/a.tif\nscene.tif,q2,out/a.tif\n",
     ["jobs.csv", "line 3"]),
    ("output-is-the-scene", "jobs.csv", "scene,question,output\nscene.tif,q,scene.tif\n", ["jobs.csv", "scene.tif"]),
    ("nul-in-question", "jobs.csv", "scene,question,output\nscene.tif,where\x00 roofs?,out/a.tif\n",
     ["jobs.csv", "line 2", "question"]),
    ("escape-in-question", "jobs.csv", "scene,question,output\nscene.tif,\x1b[2Jroofs?,out/a.tif\n",
     ["jobs.csv", "line 2", "question"]),
    ("bell-in-question", "jobs.csv", "scene,question,output\nscene.tif,roofs?\x07,out/a.tif\n",
     ["jobs.csv", "line 2", "question"]),
    ("question-longer-than-context", "jobs.csv", f"scene,question,output\nscene.tif,{LONG_QUESTION},out/a.tif\n",
     ["jobs.csv", "line 2", "question"]),
    ("jsonl-invalid", "jobs.jsonl", '{"scene": "scene.tif", "question": "q", "output": "out/a.tif"\n',
     ["jobs.jsonl", "line 1"]),
    ("jsonl-question-number", "jobs.jsonl", '{"scene": "scene.tif", "question": 7, "output": "out/a.tif"}\n',
     ["jobs.jsonl", "question"]),
    ("jsonl-array", "jobs.jsonl", '["scene.tif", "q", "out/a.tif"]\n', ["jobs.jsonl", "line 1"]),
    ("jsonl-unknown-key", "jobs.jsonl", '{"scene": "scene.tif", "question": "q", "output": "out/a.tif", "gsd": 2}\n',
     ["jobs.jsonl", "gsd"]),
    ("jsonl-nul-in-question", "jobs.jsonl", '{"scene": "scene.tif", "question": "roofs\\u0000?", "output": "out/a.tif"}\n',
     ["jobs.jsonl", "line 1", "question"]),
    ("jsonl-bell-in-question", "jobs.jsonl", '{"scene": "scene.tif", "question": "roofs\\u0007?", "output": "out/a.tif"}\n',
     ["jobs.jsonl", "line 1", "question"]),
]


@pytest.mark.parametrize("name, content, fragments", [c[1:] for c in BATCH_FILE_REFUSALS],
                         ids=[c[0] for c in BATCH_FILE_REFUSALS])
def test_batch_refuses_malformed_job_files(capsys, ws, name, content, fragments):
    _batch_rows(ws, content, name)
    before = tree(ws)
    code, _, err = invoke(capsys, ws, ["batch", f"{{tmp}}/{name}", *MODEL])
    assert_refused(code, err, EXIT_USAGE, fragments, before, [ws])


@pytest.mark.parametrize("where, fragments", [
    ("{tmp}/missing.csv", ["missing.csv"]),
    ("{out}", ["out"]),
    ("/dev/null", ["/dev/null"]),
], ids=["missing", "folder", "dev-null"])
def test_batch_refuses_unusable_job_file_paths(capsys, ws, where, fragments):
    before = tree(ws)
    code, _, err = invoke(capsys, ws, ["batch", where, *MODEL])
    assert_refused(code, err, EXIT_USAGE, fragments, before, [ws])


def test_batch_header_only_is_no_work_not_an_error(capsys, ws):
    jobs_csv(ws, [])
    before = tree(ws)
    code, _, err = invoke(capsys, ws, ["batch", "{tmp}/jobs.csv", *MODEL])
    assert code == EXIT_OK, err
    assert not error_lines(err), err
    assert "no jobs" in err.lower() or "nothing to do" in err.lower(), err
    assert tree(ws) == before


BATCH_INPUT_PROTECTION = [
    # --report may never be an input.
    ("report-is-the-job-file", None, [["scene.tif", QUESTION, "out/a.tif"]], ["--report", "{tmp}/jobs.csv"],
     INPUT_OR_OUTPUT, ["jobs.csv"]),
    ("report-is-a-scene", None, [["scene.tif", QUESTION, "out/a.tif"]], ["--report", "{scene}"],
     INPUT_OR_OUTPUT, ["scene.tif"]),
    ("report-is-the-scene-mask", "sidecars", [["scene.tif", QUESTION, "out/a.tif"]],
     ["--report", "{tmp}/scene.tif.msk"], INPUT_OR_OUTPUT, ["scene.tif.msk"]),
    ("report-is-the-scene-overviews", "sidecars", [["scene.tif", QUESTION, "out/a.tif"]],
     ["--report", "{tmp}/scene.tif.ovr"], INPUT_OR_OUTPUT, ["scene.tif.ovr"]),
    ("report-is-the-scene-aux-xml", "sidecars", [["scene.tif", QUESTION, "out/a.tif"]],
     ["--report", "{tmp}/scene.tif.aux.xml"], INPUT_OR_OUTPUT, ["scene.tif.aux.xml"]),
    ("report-is-a-vrt-source", "vrt_scene", [["scene.vrt", QUESTION, "out/a.tif"]], ["--report", "{tmp}/src.tif"],
     INPUT_OR_OUTPUT, ["src.tif"]),
    ("report-is-a-job-output", None, [["scene.tif", QUESTION, "out/a.tif"]], ["--report", "{out}/a.tif"],
     EXIT_USAGE, ["a.tif"]),
    ("report-is-a-folder", None, [["scene.tif", QUESTION, "out/a.tif"]], ["--report", "{out}"],
     EXIT_OUTPUT, ["out"]),
    # --overwrite may never reach an input through another job, a VRT or a record/lock name.
    ("overwrite-another-jobs-scene", "vrt_scene",
     [["scene.tif", QUESTION, "out/a.tif"], ["src.tif", QUESTION, "scene.tif"]], ["--overwrite"],
     INPUT_OR_OUTPUT, ["scene.tif"]),
    ("overwrite-vrt-source", "vrt_scene", [["scene.vrt", QUESTION, "src.tif"]], ["--overwrite"],
     INPUT_OR_OUTPUT, ["src.tif"]),
    ("overwrite-vrt-mask-source", "vrt_with_mask", [["masked.vrt", QUESTION, "m.tif"]], ["--overwrite"],
     INPUT_OR_OUTPUT, ["m.tif"]),
    ("overwrite-scene-via-hardlink", "hardlink_to_scene", [["scene.tif", QUESTION, "out/hard.tif"]],
     ["--overwrite"], INPUT_OR_OUTPUT, ["hard.tif"]),
    ("record-would-replace-a-scene", "record_named_scene", [["o.tif.segearth.json", QUESTION, "o.tif"]], [],
     INPUT_OR_OUTPUT, ["o.tif"]),
    ("lock-would-replace-a-scene", "lock_named_scene", [["o.tif.lock", QUESTION, "o.tif"]], [],
     INPUT_OR_OUTPUT, ["o.tif"]),
]


def _record_named_scene(ws):
    write_tif(ws / "o.tif.segearth.json")


def _lock_named_scene(ws):
    write_tif(ws / "o.tif.lock")


SETUPS.update(record_named_scene=_record_named_scene, lock_named_scene=_lock_named_scene)


@pytest.mark.parametrize("setup, rows, extra, expected, fragments", [c[1:] for c in BATCH_INPUT_PROTECTION],
                         ids=[c[0] for c in BATCH_INPUT_PROTECTION])
def test_batch_never_writes_onto_an_input(capsys, ws, setup, rows, extra, expected, fragments):
    if setup is not None:
        make(setup)(ws)
    jobs_csv(ws, rows)
    before = tree(ws)
    code, _, err = invoke(capsys, ws, ["batch", "{tmp}/jobs.csv", *MODEL, *extra])
    assert_refused(code, err, expected, fragments, before, [ws], single=False)


BATCH_JOB_FAILURES = [
    ("scene-missing", None, [["nope.tif", QUESTION, "out/a.tif"]], EXIT_INPUT, ["nope.tif"]),
    ("scene-symlink-loop", "loop", [["loop.tif", QUESTION, "out/a.tif"]], EXIT_INPUT, ["loop.tif"]),
    ("scene-self-referencing-vrt", "self_vrt", [["self.vrt", QUESTION, "out/a.tif"]], EXIT_INPUT,
     ["self.vrt", "!pool size"]),
    ("output-parent-is-a-file", None, [["scene.tif", QUESTION, "scene.tif/a.tif"]], EXIT_OUTPUT, ["a.tif"]),
    ("output-exists-without-record", "existing", [["scene.tif", QUESTION, "out/a.tif"]], EXIT_OUTPUT,
     ["a.tif", "--overwrite"]),
    ("output-with-corrupt-record", "corrupt_record", [["scene.tif", QUESTION, "out/a.tif"]], EXIT_OUTPUT,
     ["a.tif.segearth.json", "!no .segearth.json record"]),
    ("output-with-record-of-wrong-shape", "list_record", [["scene.tif", QUESTION, "out/a.tif"]], EXIT_OUTPUT,
     ["a.tif.segearth.json", "!no .segearth.json record"]),
    ("output-256-byte-name", None, [["scene.tif", QUESTION, "out/" + "n" * 252 + ".tif"]],
     (EXIT_USAGE, EXIT_OUTPUT), ["nnnnnnnn.tif"]),
    ("gsd-inf", None, [["scene.tif", QUESTION, "out/a.tif"]], EXIT_USAGE, ["--gsd"]),
    ("overlap-0.99-window-explosion", "big", [["big.tif", QUESTION, "out/a.tif"]], EXIT_USAGE, ["--overlap"]),
]


def _corrupt_record(ws):
    (ws / "out" / "a.tif").write_bytes(b"an older answer")
    (ws / "out" / "a.tif.segearth.json").write_text('{"segearth_record": 1, "state": "comp')


def _list_record(ws):
    (ws / "out" / "a.tif").write_bytes(b"an older answer")
    (ws / "out" / "a.tif.segearth.json").write_text("[1, 2, 3]")


SETUPS.update(corrupt_record=_corrupt_record, list_record=_list_record)
BATCH_OPTIONS = {"gsd-inf": ["--gsd", "inf"],
                 "overlap-0.99-window-explosion": ["--mode", "tiled", "--window", "16", "--overlap", "0.99"]}


@pytest.mark.parametrize("case, setup, rows, expected, fragments", BATCH_JOB_FAILURES,
                         ids=[c[0] for c in BATCH_JOB_FAILURES])
def test_batch_job_failures_name_the_file(capsys, ws, case, setup, rows, expected, fragments):
    if setup is not None:
        make(setup)(ws)
    jobs_csv(ws, rows)
    before = tree(ws)
    try:
        code, _, err = invoke(capsys, ws, ["batch", "{tmp}/jobs.csv", *MODEL, *BATCH_OPTIONS.get(case, [])],
                              deadline_s=10)
    except Hung as hung:
        pytest.fail(f"batch: {hung}")
    assert_refused(code, err, expected, fragments, before, [ws], single=False)


def test_batch_long_but_legal_output_name_is_written_or_refused_up_front(capsys, ws):
    name = "n" * 246 + ".tif"
    jobs_csv(ws, [["scene.tif", QUESTION, f"out/{name}"]])
    before = tree(ws)
    code, _, err = invoke(capsys, ws, ["batch", "{tmp}/jobs.csv", *MODEL])
    if code == EXIT_OK:
        assert (ws / "out" / name).is_file()
        leftovers = [p.name for p in (ws / "out").iterdir() if p.name != name and not p.name.startswith(name + ".")]
        assert not leftovers
    else:
        assert_refused(code, err, (EXIT_USAGE, EXIT_OUTPUT), [name[:40]], before, [ws], single=False)


# --------------------------------------------------------------------------- eval and models


def _earthreason(root: Path) -> None:
    """One EarthReason sample (val split): image, label and question file."""
    import cv2

    for folder in ("images", "labels", "QAs"):
        (root / "val" / folder).mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(3)
    cv2.imwrite(str(root / "val" / "images" / "alpha.png"), rng.integers(0, 256, (32, 32, 3), dtype=np.uint8))
    cv2.imwrite(str(root / "val" / "labels" / "alpha.png"), (rng.random((32, 32)) < 0.5).astype(np.uint8) * 255)
    (root / "val" / "QAs" / "alpha.json").write_text(json.dumps({"questions": [QUESTION], "answer": ["here"]}))


EVAL = ["eval", "{tmp}/data", "--dataset", "earthreason", *MODEL, "--limit", "1"]
EVAL_REFUSALS = [
    ("data-root-missing", ["eval", "{tmp}/nodata", "--dataset", "earthreason", *MODEL], EXIT_INPUT, ["nodata"]),
    ("data-root-is-a-file", ["eval", "{scene}", "--dataset", "earthreason", *MODEL], EXIT_INPUT, ["scene.tif"]),
    ("data-root-empty", ["eval", "{out}", "--dataset", "earthreason", *MODEL], EXIT_INPUT, ["out"]),
    ("limit-zero", [*EVAL[:-1], "0"], EXIT_USAGE, ["--limit"]),
    ("dataset-unknown", ["eval", "{tmp}/data", "--dataset", "coco", *MODEL], EXIT_USAGE, ["--dataset"]),
    ("split-unknown", [*EVAL, "--split", "train"], EXIT_USAGE, ["--split"]),
    ("per-sample-is-a-label", [*EVAL, "--per-sample", "{tmp}/data/val/labels/alpha.png"], INPUT_OR_OUTPUT,
     ["alpha.png"]),
    ("per-sample-is-a-question-file", [*EVAL, "--per-sample", "{tmp}/data/val/QAs/alpha.json"], INPUT_OR_OUTPUT,
     ["alpha.json"]),
    ("save-predictions-into-the-images", [*EVAL, "--save-predictions", "{tmp}/data/val/images"], INPUT_OR_OUTPUT,
     ["images"]),
    ("per-sample-is-a-folder", [*EVAL, "--per-sample", "{out}"], EXIT_OUTPUT, ["out"]),
    ("save-predictions-is-a-file", [*EVAL, "--save-predictions", "{scene}"], EXIT_OUTPUT, ["scene.tif"]),
]


@pytest.mark.parametrize("args, expected, fragments", [c[1:] for c in EVAL_REFUSALS],
                         ids=[c[0] for c in EVAL_REFUSALS])
def test_eval_refuses(capsys, ws, args, expected, fragments):
    _earthreason(ws / "data")
    before = tree(ws)
    code, _, err = invoke(capsys, ws, args)
    assert_refused(code, err, expected, fragments, before, [ws])


MODELS_REFUSALS = [
    ("pull-three-part-id", ["models", "pull", "a/b/c"], EXIT_USAGE, ["a/b/c"]),
    ("path-empty-name", ["models", "path", "org/"], EXIT_USAGE, ["org/"]),
    ("verify-nul-in-id", ["models", "verify", "org/na\x00me"], EXIT_USAGE, ["org/na"]),
    ("pull-offline", ["models", "pull", "nobody/nothing"], EXIT_MODEL, ["nobody/nothing", "offline"]),
    ("verify-not-cached", ["models", "verify", "nobody/nothing"], EXIT_MODEL, ["nobody/nothing"]),
    ("path-not-cached", ["models", "path", "nobody/nothing"], EXIT_MODEL, ["nobody/nothing"]),
    ("query-model-is-a-file", query("--model", "{scene}"), EXIT_MODEL, ["scene.tif"]),
    ("query-model-missing-folder", query("--model", "{tmp}/no-model/"), EXIT_MODEL, ["no-model"]),
]


@pytest.mark.parametrize("args, expected, fragments", [c[1:] for c in MODELS_REFUSALS],
                         ids=[c[0] for c in MODELS_REFUSALS])
def test_models_refuse(capsys, ws, monkeypatch, args, expected, fragments):
    monkeypatch.setenv("HF_HOME", str(ws / "hf"))
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    (ws / "hf").mkdir()
    before = tree(ws)
    code, _, err = invoke(capsys, ws, args)
    assert_refused(code, err, expected, fragments, before, [ws], model_may_load=True)
