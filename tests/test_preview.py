"""The PNG quicklook: the scene, decimated, with the answer drawn over it."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np
import pytest
from affine import Affine
from rasterio.crs import CRS

from segearth_cli.outputs.preview import HATCH, LEGEND_BACKGROUND, PALETTE, PreviewSink
from segearth_cli.scene import Scene, open_scene, overview_size
from segearth_cli.stitch import RowBlock


def make_scene(width, height):
    return Scene(
        path=Path("scene.tif"), width=width, height=height, count=3, dtype="uint8", crs=CRS.from_epsg(32631),
        transform=Affine(1.0, 0, 0, 0, -1.0, 0), georeferencing="transform", warped=False, bands=(1, 2, 3),
        colour="rgb", stretch=None, nodata=None, validity="none",
    )


def flat_overview(value=120):
    def overview(max_side):
        width, height = overview_size(3000, 2000, max_side)
        return np.full((3, height, width), value, dtype=np.uint8), np.ones((height, width), dtype=bool)

    return overview


def read_png(path):
    image = cv2.imread(str(path), cv2.IMREAD_COLOR)
    assert image is not None
    return image[..., ::-1]


def test_answer_and_invalid_pixels_are_drawn_at_reduced_size(tmp_path):
    width, height = 3000, 2000
    probability = np.zeros((2, height, width), dtype=np.float32)
    probability[0, 400:1200, 600:1800] = 0.9  # question 0: a large rectangle
    probability[1, 1500:1900, 2200:2900] = 0.8  # question 1
    valid = np.ones((height, width), dtype=bool)
    valid[:, 2950:] = False  # a strip of nodata at the right edge
    path = tmp_path / "quicklook.png"
    sink = PreviewSink(path, flat_overview(), ["a?", "b?"], threshold=0.5, max_side=300, scene=make_scene(width, height))
    for row in range(0, height, 333):  # blocks not aligned with quicklook rows
        sink.write(RowBlock(row, probability[:, row : row + 333], valid[row : row + 333]))
    assert sink._answer.shape == (2, 200, 300)  # memory is the quicklook's size
    sink.close()

    full = read_png(path).astype(int)
    assert full.shape[1] == 300 and full.shape[0] > 200  # the map, then the legend below it
    image, legend = full[:200], full[200:]
    background = image[5, 5]
    assert (background == 120).all()
    inside_a = image[80, 120]  # centre of the first rectangle (scene 800, 1200)
    inside_b = image[170, 255]
    assert not (inside_a == background).all() and not (inside_b == background).all()
    assert not (inside_a == inside_b).all()  # each question its own colour
    # The fill leans toward the question's colour.
    assert np.dot(inside_a - background, np.array(PALETTE[0]) - background) > 0
    # Outline: the rectangle's edge is drawn in the opaque colour.
    assert (image[40, 120] == np.array(PALETTE[0])).all()
    # Invalid strip: grey, unlike both background and answers.
    strip = image[100:110, 296:300].reshape(-1, 3)
    assert (strip[:, 0] == strip[:, 1]).all() and (strip[:, 1] == strip[:, 2]).all()
    assert not (strip == background).all(axis=1).any()
    # The legend shows each question's colour and the no-data hatch, top to bottom, on its own background.
    assert (legend[0, 0] == LEGEND_BACKGROUND).all()
    first_row = [np.flatnonzero((legend == colour).all(axis=2).any(axis=1)) for colour in (*PALETTE[:2], HATCH)]
    assert all(len(rows) for rows in first_row)
    assert first_row[0][0] < first_row[1][0] < first_row[2][0]


def test_preview_from_a_scene_reader(tmp_path, write_geotiff):
    height, width = 400, 600
    data = np.zeros((3, height, width), dtype=np.uint8)
    data[0] = 200
    data[:, :, :100] = 0
    scene_path = write_geotiff("scene.tif", data, nodata=0, crs="EPSG:32631",
                               transform=Affine(1, 0, 500000, 0, -1, 4000000))
    probability = np.zeros((1, height, width), dtype=np.float32)
    probability[0, 100:300, 300:500] = 0.95
    valid = np.ones((height, width), dtype=bool)
    valid[:, :100] = False
    path = tmp_path / "quicklook.png"
    with open_scene(scene_path) as reader:
        sink = PreviewSink(path, reader, ["q"], max_side=150)
        for row in range(0, height, 64):
            sink.write(RowBlock(row, probability[:, row : row + 64], valid[row : row + 64]))
        sink.close()
    image = read_png(path).astype(int)[:100]
    assert image.shape == (100, 150, 3)
    assert image[50, 100, 0] != image[50, 60, 0] or image[50, 100, 1] != image[50, 60, 1]  # answer vs scene
    left = image[40:60, 2:20].reshape(-1, 3)
    assert (left[:, 0] == left[:, 1]).all()  # invalid: grey hatch
    assert image[50, 60].tolist() != left[0].tolist()


def test_preview_from_a_scene_reopens_the_file(tmp_path, write_geotiff):
    data = np.full((3, 64, 80), 90, dtype=np.uint8)
    scene_path = write_geotiff("scene.tif", data, crs="EPSG:32631", transform=Affine(2, 0, 100, 0, -2, 100))
    with open_scene(scene_path) as reader:
        scene = reader.scene
    path = tmp_path / "quicklook.png"
    sink = PreviewSink(path, scene, ["q"], max_side=40)
    sink.write(RowBlock(0, np.zeros((1, 64, 80), dtype=np.float32), np.ones((64, 80), dtype=bool)))
    sink.close()
    image = read_png(path)
    assert image.shape[1] == 40
    assert (image[:32] == 90).all()
    # Nothing invalid: the legend has the question's row only, no no-data row.
    legend = image[32:]
    assert (legend == PALETTE[0]).all(axis=2).any() and not (legend == HATCH).all(axis=2).any()


def test_legend_names_questions_in_readable_text(tmp_path):
    """Each question is written beside its swatch; a long one is cut to fit, not wrapped off the image."""
    width, height = 3000, 2000
    long_question = "where could flood relief camps be placed, " * 6
    path = tmp_path / "quicklook.png"
    sink = PreviewSink(path, flat_overview(), ["short?", long_question], max_side=300, scene=make_scene(width, height))
    sink.write(RowBlock(0, np.zeros((2, height, width), np.float32), np.ones((height, width), dtype=bool)))
    sink.close()
    legend = read_png(path)[200:].astype(int)
    text = (legend > 200).all(axis=2)  # light text on the dark background; no palette colour is that light
    rows = np.flatnonzero(text.any(axis=1))
    assert len(rows) and rows.max() < legend.shape[0]
    halves = legend.shape[0] // 2
    assert text[:halves].any() and text[halves:].any()  # a line of text per question
    # The long question reaches the right margin but leaves it, and the short one ends well before.
    columns = lambda part: np.flatnonzero(part.any(axis=0))
    assert columns(text[halves:]).max() < 300 - 1
    assert columns(text[:halves]).max() < columns(text[halves:]).max()


@pytest.mark.parametrize("size", [(1, 1), (7, 3000), (2049, 5)])
def test_preview_size_keeps_aspect_and_limit(size):
    width, height = size
    out_w, out_h = overview_size(width, height, 2048)
    assert max(out_w, out_h) <= 2048 and min(out_w, out_h) >= 1
