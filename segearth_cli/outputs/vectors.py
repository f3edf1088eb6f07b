"""Polygons of the answer, built while the row blocks stream past.

Each question's mask (probability above the threshold on valid input) is split into
4-connected components block by block (OpenCV), and every component becomes an exact
pixel-edge polygon with its holes, in pixel coordinates (a contour trace that agrees with
GDAL polygonize, which remains the fallback; see ``_trace_component``). Components that
reach the last row of a block stay *open*: when the next block arrives, its components
that touch them across the border are joined (union-find), and the pieces are dissolved
into one polygon once the group no longer reaches the newest block's last row. So an object cut by any number of
window or block borders comes out as exactly one polygon, without seam lines, and only the
open components are held between blocks. The mean probability of each polygon is the mean
over its pixels, carried across borders as a running sum and count.

Geometry goes from pixel to map coordinates through the scene's affine transform (rotated
and south-up grids included). ``area_m2`` is

* planar area times the square of the linear unit (feet, ...) for a projected CRS whose
  areal scale at the scene centre is within 1 % of true (UTM, national grids, equal-area
  projections), and
* geodesic area on the CRS's ellipsoid otherwise: geographic CRSs, and projections such
  as Web Mercator whose planar areas are far from ground areas. Edges are densified to
  0.05 degree first, because an edge along a parallel is not a geodesic.

``--min-area`` compares against the area of the mask polygon before simplification.
``--simplify`` is a Douglas-Peucker tolerance in metres that keeps each polygon valid
(``preserve_topology``, holes kept); for geodesic scenes it is applied in an azimuthal
equidistant projection centred near each polygon, so a tolerance in metres means the same
on the ground at any latitude.

Outputs: one GeoPackage layer ``answers`` in the scene's CRS, with a ``question`` column
(several questions are rows with different ``question`` values, so one layer and one
schema serve any number of questions and ``WHERE question = ...`` selects one), and RFC
7946 GeoJSON in EPSG:4326 lon/lat: right-hand winding, 7 decimals, no ``crs`` member,
polygons crossing the antimeridian split into MultiPolygons. Columns: ``question``,
``area_m2``, ``mean_probability``, ``pixel_count`` (answer pixels in the polygon),
``scene``, ``model``, plus any extra attributes passed in.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Iterable, Mapping, Optional, Sequence

import cv2
import numpy as np
import pyproj
import rasterio.features
import shapely
from affine import Affine
from shapely.geometry import Polygon, box

from ..errors import OutputError, UsageError, first_line
from .raster import answer_mask, scene_transform

LAYER_NAME = "answers"
GEOJSON_DECIMALS = 7
#: A projected CRS whose areal scale factor is further than this from 1 gets geodesic areas.
PLANAR_AREA_TOLERANCE = 0.01
#: Longest edge (degrees) left undensified before geodesic area: parallels are not geodesics.
_GEODESIC_SEGMENT_DEG = 0.05
#: Above this many block-sizes of bounding boxes, polygonize the whole block at once.
DENSE_RATIO = 2


@dataclass
class QuestionSummary:
    question: str
    polygon_count: int
    #: Sum of ``area_m2``; None when the scene has no CRS (pixel or unitless coordinates).
    total_area_m2: Optional[float]
    pixel_count: int


@dataclass
class _Group:
    """A connected component, possibly spread over several blocks, still being assembled."""

    pieces: list
    probability_sum: float
    pixel_count: int


class _ComponentTracker:
    """Streaming polygonizer for one question's mask; see the module docstring."""

    def __init__(self) -> None:
        self._open: dict[int, _Group] = {}
        self._border: Optional[np.ndarray] = None  # group id per column of the last row fed
        self._next_row = 0
        self._next_id = 1

    def feed(self, row_off: int, mask: np.ndarray, probability: np.ndarray) -> list[_Group]:
        """Add the rows of one block; returns the groups that this block completed."""

        finished: list[_Group] = []
        if row_off != self._next_row:  # a gap: nothing can connect across it
            finished.extend(self.close())
        self._next_row = row_off + mask.shape[0]
        if not mask.any():
            finished.extend(self.close())
            return finished

        count, labels, stats, _ = cv2.connectedComponentsWithStats(mask.view(np.uint8), connectivity=4, ltype=cv2.CV_32S)
        with rasterio.Env():  # one GDAL environment for the block's many polygonize calls
            pieces, sums = _polygonize_components(labels, count, stats, probability, row_off)
        pixel_counts = stats[:, cv2.CC_STAT_AREA]
        local = [None] + [_Group([pieces[label]], float(sums[label]), int(pixel_counts[label]))
                          for label in range(1, count)]

        pairs = self._pairs_with_open(labels[0])
        bottom = labels[-1]
        at_bottom = np.unique(bottom[bottom > 0])
        linked_local = set(pairs[:, 1].tolist()) | set(at_bottom.tolist())
        finished.extend(local[label] for label in range(1, count) if label not in linked_local)
        finished.extend(self._join(pairs, linked_local, set(at_bottom.tolist()), local, bottom))
        return finished

    def _pairs_with_open(self, top: np.ndarray) -> np.ndarray:
        """(open group id, label) for every open group that a component of the block's first row touches."""
        if self._border is not None:
            touching = (self._border > 0) & (top > 0)
            if touching.any():
                return np.unique(np.stack([self._border[touching], top[touching]], axis=1), axis=0)
        return np.empty((0, 2), dtype=np.int64)

    def _join(self, pairs: np.ndarray, linked_local: set, at_bottom: set, local: list, bottom: np.ndarray) -> list[_Group]:
        """Join open groups with the components touching them; keep open what reaches the last row.

        Returns the joined groups that are complete; the others become the new open groups,
        and the last row's labels are mapped to their ids for the next block.
        """
        # Union-find over previous open groups (their ids) and linked local labels (negative ids).
        parent: dict[int, int] = {}

        def find(node: int) -> int:
            root = node
            while parent.get(root, root) != root:
                root = parent[root]
            while parent.get(node, node) != root:
                parent[node], node = root, parent[node]
            return root

        for group_id, label in pairs.tolist():
            a, b = find(group_id), find(-label)
            if a != b:
                parent[b] = a
        members: dict[int, list[int]] = {}
        for node in list(self._open) + [-label for label in linked_local]:
            members.setdefault(find(node), []).append(node)

        finished: list[_Group] = []
        new_open: dict[int, _Group] = {}
        root_to_id: dict[int, int] = {}
        for root, nodes in members.items():
            group = _Group([], 0.0, 0)
            for node in nodes:
                part = self._open[node] if node > 0 else local[-node]
                group.pieces.extend(part.pieces)
                group.probability_sum += part.probability_sum
                group.pixel_count += part.pixel_count
            if any(node < 0 and -node in at_bottom for node in nodes):
                root_to_id[root] = self._next_id
                new_open[self._next_id] = group
                self._next_id += 1
            else:
                finished.append(group)

        lookup = np.zeros(len(local), dtype=np.int64)
        for label in at_bottom:
            lookup[label] = root_to_id[find(-label)]
        self._border = lookup[bottom]
        self._open = new_open
        return finished

    def close(self) -> list[_Group]:
        """Every group still open: nothing below can join them any more."""
        finished = list(self._open.values())
        self._open = {}
        self._border = None
        return finished


def _polygonize_components(
    labels: np.ndarray, count: int, stats: np.ndarray, probability: np.ndarray, row_off: int
) -> tuple[list, np.ndarray]:
    """Polygon (pixel coordinates, holes kept) and probability sum of every label 1..count-1.

    Each component is traced inside its bounding box (``_trace_component``), which skips
    the empty rest of the block. When bounding boxes overlap so much that this would touch
    the block's pixels many times over (nested rings), the whole label image goes through
    one GDAL polygonize call instead.
    """

    pieces: list = [None] * count
    sums = np.zeros(count, dtype=np.float64)
    x, y, w, h = (stats[1:, i] for i in (cv2.CC_STAT_LEFT, cv2.CC_STAT_TOP, cv2.CC_STAT_WIDTH, cv2.CC_STAT_HEIGHT))
    if int(np.sum(w.astype(np.int64) * h)) <= DENSE_RATIO * labels.size:
        for label in range(1, count):
            x0, y0 = int(x[label - 1]), int(y[label - 1])
            x1, y1 = x0 + int(w[label - 1]), y0 + int(h[label - 1])
            inside = labels[y0:y1, x0:x1] == label
            sums[label] = probability[y0:y1, x0:x1][inside].sum(dtype=np.float64)
            polygon = _trace_component(inside)
            if polygon is None:
                polygon = _gdal_component(inside)
            pieces[label] = shapely.transform(polygon, lambda xy, dx=x0, dy=row_off + y0: xy + (dx, dy))
    else:
        sums = np.bincount(labels.ravel(), weights=probability.ravel(), minlength=count)
        found = rasterio.features.shapes(labels, mask=labels > 0, connectivity=4, transform=Affine.translation(0, row_off))
        collected: dict[int, list] = {}
        for geometry, value in found:
            collected.setdefault(int(value), []).append(_polygon(geometry))
        for label, parts in collected.items():
            pieces[label] = _single_polygon(parts)
    return pieces, sums


def _trace_component(inside: np.ndarray) -> Optional[Polygon]:
    """Exact pixel-edge polygon of one 4-connected component (bool crop), or None if unsure.

    OpenCV's contour tracer (about 25 times faster than GDAL polygonize) follows pixel
    *centres*. On the mask upsampled by two, every traced pixel is a half-pixel that lies
    against the true pixel edge it borders: an even index is a left (top) half whose
    outside is to its left (above), an odd one a right (bottom) half. So ``(i + 1) // 2``
    is that edge's coordinate in original pixels, and the mapped contour is the exact
    pixel-edge outline up to repeated and collinear points, which are dropped. Upsampling
    also keeps one-pixel-wide parts two pixels wide, so no contour doubles back on itself.
    Holes come from the RETR_CCOMP hierarchy. Anything unexpected (a mapped step that is
    not axis-aligned, not exactly one outer ring) returns None and the caller falls back to
    GDAL.
    """

    height, width = inside.shape
    doubled = cv2.resize(inside.view(np.uint8), (2 * width, 2 * height), interpolation=cv2.INTER_NEAREST)
    padded = cv2.copyMakeBorder(doubled, 1, 1, 1, 1, cv2.BORDER_CONSTANT, value=0)
    contours, hierarchy = cv2.findContours(padded, cv2.RETR_CCOMP, cv2.CHAIN_APPROX_NONE, offset=(-1, -1))
    if hierarchy is None:
        return None
    shell = None
    holes: list = []
    for contour, (_, _, _, parent) in zip(contours, hierarchy[0]):
        ring = _pixel_edge_ring(contour)
        if ring is None:
            return None
        if parent < 0:
            if shell is not None:
                return None
            shell = ring
        else:
            holes.append(ring)
    if shell is None:
        return None
    return shapely.polygons(shell, holes=holes or None)


def _pixel_edge_ring(contour: np.ndarray):
    points = (contour.reshape(-1, 2) + 1) // 2
    previous = np.concatenate((points[-1:], points[:-1]))
    points = points[(points != previous).any(axis=1)]
    if len(points) < 4:
        return None
    step = np.concatenate((points[1:], points[:1])) - points
    if ((step[:, 0] != 0) & (step[:, 1] != 0)).any():
        return None
    direction = np.sign(step)
    turns = (direction != np.concatenate((direction[-1:], direction[:-1]))).any(axis=1)
    return shapely.linearrings(points[turns].astype(np.float64))


def _gdal_component(inside: np.ndarray):
    found = rasterio.features.shapes(inside.view(np.uint8), mask=inside, connectivity=4)
    return _single_polygon([_polygon(geometry) for geometry, _ in found])


def _polygon(geometry: dict) -> Polygon:
    rings = [shapely.linearrings(np.asarray(ring, dtype=np.float64)) for ring in geometry["coordinates"]]
    return shapely.polygons(rings[0], holes=rings[1:] or None)


def _single_polygon(parts: list):
    return parts[0] if len(parts) == 1 else shapely.union_all(parts)


def _dissolve(group: _Group):
    if len(group.pieces) == 1:
        return group.pieces[0]
    merged = shapely.union_all(group.pieces)
    # Drop the collinear vertices the block borders leave on straight edges.
    return shapely.simplify(merged, 0.0, preserve_topology=True)


def wgs84_problem(scene) -> Optional[str]:
    """Why PROJ cannot take the scene's CRS to WGS 84 lon/lat (another body, an unsupported
    projection), or None."""
    try:
        to_wgs84 = pyproj.Transformer.from_crs(_pyproj_crs(scene.crs), "EPSG:4326", always_xy=True)
        _transform_centre(to_wgs84, scene_transform(scene), scene.width, scene.height)
    except (pyproj.exceptions.ProjError, pyproj.exceptions.CRSError) as error:
        return first_line(error)
    return None


def _transform_centre(transformer: pyproj.Transformer, transform: Affine, width: int,
                      height: int) -> tuple[float, float]:
    """The scene centre through ``transformer``; ProjError when PROJ has no finite answer.

    Older PROJ releases accept a transformation they cannot compute and fail only when it
    is used, so creating the transformer proves nothing.
    """
    x, y = transform @ (width / 2.0, height / 2.0)
    out_x, out_y = transformer.transform(x, y, errcheck=True)
    if not (math.isfinite(out_x) and math.isfinite(out_y)):
        raise pyproj.exceptions.ProjError("the transformation gives no coordinates for the scene's centre")
    return out_x, out_y


def area_problem(scene) -> Optional[str]:
    """Why areas in square metres cannot be measured in the scene's CRS, or None when they can.

    Areas are measured on the CRS's own ellipsoid, so a CRS of another body has them; one
    whose projection PROJ cannot invert does not.
    """
    try:
        _Geodesy(scene.crs, scene_transform(scene), scene.width, scene.height)
    except (pyproj.exceptions.ProjError, pyproj.exceptions.CRSError) as error:
        return first_line(error)
    return None


class _Geodesy:
    """Areas and metric tolerances for one scene CRS (see the module docstring)."""

    def __init__(self, crs, transform: Affine, width: int, height: int):
        self.crs = _pyproj_crs(crs)
        self.unit_factor = _linear_unit_factor(self.crs)
        self.geodesic = self.crs.is_geographic
        self.geod: Optional[pyproj.Geod] = None
        self.to_lonlat: Optional[pyproj.Transformer] = None
        geodetic = self.crs.geodetic_crs
        if geodetic is not None:
            self.geod = geodetic.get_geod() or pyproj.Geod(ellps="WGS84")
            self.to_lonlat = pyproj.Transformer.from_crs(self.crs, geodetic, always_xy=True)
            self.from_lonlat = pyproj.Transformer.from_crs(geodetic, self.crs, always_xy=True)
            lon, lat = _transform_centre(self.to_lonlat, transform, width, height)
        if self.crs.is_projected and self.to_lonlat is not None:
            try:
                scale = pyproj.Proj(self.crs).get_factors(lon, lat, errcheck=True).areal_scale
                if math.isfinite(scale) and abs(scale - 1.0) > PLANAR_AREA_TOLERANCE:
                    self.geodesic = True
            except (pyproj.exceptions.ProjError, ValueError, TypeError):
                pass
        if self.geodesic and self.geod is None:
            self.geodesic = False
        # Coordinates already lon/lat degrees on the CRS's own datum need no transformation.
        self._native_degrees = self.crs.is_geographic and self.crs == geodetic and _is_degree(self.crs)
        self._local_projections: dict[tuple[float, float], tuple[pyproj.Transformer, pyproj.Transformer]] = {}

    def areas(self, geometries: np.ndarray) -> np.ndarray:
        if len(geometries) == 0:
            return np.zeros(0)
        if not self.geodesic:
            return shapely.area(geometries) * self.unit_factor**2
        lonlat = shapely.segmentize(self._to_degrees(geometries), _GEODESIC_SEGMENT_DEG)
        return np.array([abs(self.geod.geometry_area_perimeter(g)[0]) for g in lonlat])

    def _to_degrees(self, geometries: np.ndarray) -> np.ndarray:
        """Lon/lat, each polygon in one continuous longitude range: one that crosses the
        antimeridian keeps 181 as 181, or its edges would be measured (and densified) the
        long way round the globe."""
        if self._native_degrees:
            return geometries
        lonlat = shapely.transform(geometries, _pyproj_function(self.to_lonlat), interleaved=False)
        west, _, east, _ = shapely.bounds(lonlat).T
        for index in np.flatnonzero(east - west > 180.0):
            lonlat[index] = _continuous_longitudes(lonlat[index])
        return lonlat

    def _from_degrees(self, geometries: np.ndarray) -> np.ndarray:
        if self._native_degrees:
            return geometries
        return shapely.transform(geometries, _pyproj_function(self.from_lonlat), interleaved=False)

    def simplify(self, geometries: np.ndarray, tolerance_m: float) -> np.ndarray:
        if tolerance_m <= 0 or len(geometries) == 0:
            return geometries
        if not self.geodesic:
            return shapely.simplify(geometries, tolerance_m / self.unit_factor, preserve_topology=True)
        lonlat = self._to_degrees(geometries)
        centres = shapely.get_coordinates(shapely.centroid(shapely.envelope(lonlat)))
        result = np.empty(len(geometries), dtype=object)
        # Polygons whose centres round to the same half degree share one projection; within
        # that distance of its centre azimuthal equidistant scale is true to about 0.01 %.
        keys = np.round(centres * 2.0) / 2.0
        for key in np.unique(keys, axis=0):
            chosen = np.all(keys == key, axis=1)
            forward, backward = self._local_projection(float(key[0]), float(key[1]))
            local = shapely.transform(lonlat[chosen], _pyproj_function(forward), interleaved=False)
            simplified = shapely.simplify(local, tolerance_m, preserve_topology=True)
            result[chosen] = shapely.transform(simplified, _pyproj_function(backward), interleaved=False)
        return self._from_degrees(result)

    def _local_projection(self, lon: float, lat: float):
        key = (lon, lat)
        if key not in self._local_projections:
            ellipsoid = self.crs.ellipsoid
            local = pyproj.CRS.from_dict(
                {"proj": "aeqd", "lat_0": lat, "lon_0": lon, "a": ellipsoid.semi_major_metre,
                 "b": ellipsoid.semi_minor_metre, "units": "m"}
            )
            geodetic = self.crs.geodetic_crs
            self._local_projections[key] = (
                pyproj.Transformer.from_crs(geodetic, local, always_xy=True),
                pyproj.Transformer.from_crs(local, geodetic, always_xy=True),
            )
        return self._local_projections[key]


def _pyproj_crs(crs) -> pyproj.CRS:
    """pyproj's view of a rasterio CRS (through WKT) or of anything pyproj accepts."""
    return pyproj.CRS.from_user_input(crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def _pyproj_function(transformer: pyproj.Transformer):
    def apply(x, y):
        return transformer.transform(x, y)

    return apply


def _is_degree(crs: pyproj.CRS) -> bool:
    return all(axis.unit_name in ("degree", "degree minute second hemisphere") for axis in crs.axis_info[:2])


def _linear_unit_factor(crs: pyproj.CRS) -> float:
    for axis in crs.axis_info:
        if axis.unit_conversion_factor and axis.unit_name not in ("degree", "radian", "grad"):
            return float(axis.unit_conversion_factor)
    return 1.0


def _pixel_to_map(geometries: np.ndarray, transform: Affine) -> np.ndarray:
    a, b, c, d, e, f = transform.a, transform.b, transform.c, transform.d, transform.e, transform.f

    def apply(xy: np.ndarray) -> np.ndarray:
        col, row = xy[:, 0], xy[:, 1]
        return np.column_stack([a * col + b * row + c, d * col + e * row + f])

    return shapely.transform(geometries, apply)


@dataclass
class _Batch:
    """Finished polygons of one question, kept compactly as WKB until written."""

    wkb: list
    area_m2: np.ndarray
    mean_probability: np.ndarray
    pixel_count: np.ndarray


class VectorSink:
    """Collects the answer's polygons from streamed RowBlocks; write them after ``close()``.

    ``questions[i]`` is the text of probability plane ``i`` of every block;
    ``question_indexes`` picks the planes this output answers (None: all).
    ``attributes`` become constant columns; ``scene`` and ``model`` are always present.
    A scene without georeferencing is refused (UsageError, exit code 2) unless
    ``pixel_coordinates``: then geometries are in pixel units (x = column, y = row,
    downwards, as GDAL's pixel/line) and GeoJSON is refused. A grid without a CRS gives
    polygons in the grid's map units with an empty ``area_m2`` and no GeoJSON.
    """

    def __init__(
        self,
        scene,
        questions: Sequence[str],
        question_indexes: Optional[Iterable[int]] = None,
        threshold: float = 0.5,
        min_area_m2: float = 0.0,
        simplify_m: float = 0.0,
        attributes: Optional[Mapping[str, object]] = None,
        pixel_coordinates: bool = False,
    ):
        self.scene = scene
        self.questions = list(questions)
        self.question_indexes = list(range(len(self.questions)) if question_indexes is None else question_indexes)
        self.threshold = float(threshold)
        self.min_area_m2 = float(min_area_m2 or 0.0)
        self.simplify_m = float(simplify_m or 0.0)
        self.attributes = {"scene": None, "model": None}
        self.attributes.update(dict(attributes or {}))
        self.pixel_coordinates = bool(pixel_coordinates)
        # A grid (geotransform, or a warp of GCPs/RPCs) gives map coordinates; only a CRS gives metres.
        self.has_grid = bool(getattr(scene, "georeferenced", scene.crs is not None))
        self.has_crs = self.has_grid and scene.crs is not None
        _refuse_unmeasurable(scene.path, self.has_grid, self.has_crs, self.pixel_coordinates,
                             self.min_area_m2 > 0 or self.simplify_m > 0)
        self.transform = scene_transform(scene) if self.has_grid else Affine.identity()
        self.geodesy = _Geodesy(scene.crs, self.transform, scene.width, scene.height) if self.has_crs else None
        self._trackers = {index: _ComponentTracker() for index in self.question_indexes}
        self._batches: dict[int, list[_Batch]] = {index: [] for index in self.question_indexes}
        self.closed = False

    def write(self, block) -> None:
        for index in self.question_indexes:
            probability = block.probabilities[index]
            mask = answer_mask(probability, block.valid, self.threshold)
            finished = self._trackers[index].feed(block.row_off, mask, probability)
            if finished:
                self._finish(index, finished)

    def close(self) -> None:
        if self.closed:
            return
        for index in self.question_indexes:
            finished = self._trackers[index].close()
            if finished:
                self._finish(index, finished)
        self.closed = True

    def _finish(self, index: int, groups: list[_Group]) -> None:
        pixels = np.array([_dissolve(group) for group in groups], dtype=object)
        pixel_count = np.array([group.pixel_count for group in groups], dtype=np.int64)
        mean_probability = np.array([group.probability_sum / group.pixel_count for group in groups])
        if self.geodesy is None:
            area = np.full(len(groups), np.nan)
            geometries = pixels if self.pixel_coordinates else _pixel_to_map(pixels, self.transform)
        else:
            geometries = _pixel_to_map(pixels, self.transform)
            area = self.geodesy.areas(geometries)
            if self.min_area_m2 > 0:
                keep = area >= self.min_area_m2
                geometries, area, pixels = geometries[keep], area[keep], pixels[keep]
                pixel_count, mean_probability = pixel_count[keep], mean_probability[keep]
            if self.simplify_m > 0 and len(geometries):
                geometries = self.geodesy.simplify(geometries, self.simplify_m)
                area = self.geodesy.areas(geometries)
            if self.pixel_coordinates:
                geometries = pixels
        if len(geometries):
            self._batches[index].append(
                _Batch(list(shapely.to_wkb(geometries)), area, mean_probability, pixel_count)
            )

    # -- results ---------------------------------------------------------------------

    def summary(self) -> list[QuestionSummary]:
        result = []
        for index in self.question_indexes:
            batches = self._batches[index]
            count = sum(len(batch.wkb) for batch in batches)
            pixels = int(sum(int(batch.pixel_count.sum()) for batch in batches))
            area = float(sum(float(batch.area_m2.sum()) for batch in batches)) if self.has_crs else None
            result.append(QuestionSummary(self.questions[index], count, area, pixels))
        return result

    def frame(self):
        """All polygons as a GeoDataFrame in the scene's CRS (or pixel space), in question order."""

        import geopandas

        wkb, columns = _collect_columns([(self.questions[i], self._batches[i]) for i in self.question_indexes])
        rows = len(wkb)
        for name, value in self.attributes.items():
            columns[name] = [value] * rows
        geometry = shapely.from_wkb(np.array(wkb, dtype=object)) if rows else np.array([], dtype=object)
        crs = None if (self.pixel_coordinates or not self.has_crs) else _crs_for_output(self.scene.crs)
        return geopandas.GeoDataFrame(_typed_columns(columns, rows), geometry=geopandas.GeoSeries(geometry, crs=crs))

    def write_gpkg(self, path) -> None:
        import geopandas

        self._require_closed()
        frame = self.frame()
        geometry_type = _geometry_type(frame.geometry.values)
        if geometry_type == "MultiPolygon":  # one geometry type per layer, as GIS software expects
            frame = frame.set_geometry(geopandas.GeoSeries(_promote(frame.geometry.values), crs=frame.crs))
        _write(frame, path, driver="GPKG", geometry_type=geometry_type)

    def write_geojson(self, path) -> None:
        self._require_closed()
        if self.pixel_coordinates or not self.has_crs:
            what = "pixel coordinates are" if self.pixel_coordinates else f"{self.scene.path} (no CRS) is"
            raise UsageError(f"{path}: GeoJSON must be lon/lat (RFC 7946), which {what} not; write a .gpkg instead")
        frame = self.frame()
        lonlat = to_rfc7946(frame.geometry.values, self.scene.crs, self.transform)
        import geopandas

        frame = frame.set_geometry(geopandas.GeoSeries(lonlat, crs="EPSG:4326"))
        # A region wholly beyond a pole has no place on the Earth.
        frame = frame[~frame.geometry.is_empty]
        _write(
            frame,
            path,
            driver="GeoJSON",
            geometry_type="Unknown" if len(frame) else "Polygon",
            layer_options={"RFC7946": "YES", "COORDINATE_PRECISION": str(GEOJSON_DECIMALS), "WRITE_NAME": "NO"},
        )

    def _require_closed(self) -> None:
        if not self.closed:
            raise RuntimeError("VectorSink.close() must be called before writing")


def _refuse_unmeasurable(scene_path, has_grid: bool, has_crs: bool, pixel_coordinates: bool, in_metres: bool) -> None:
    if not has_grid and not pixel_coordinates:
        raise UsageError(f"{scene_path}: has no georeferencing; pass --pixel-coordinates to write pixel-space polygons")
    if not has_crs and in_metres:
        raise UsageError(
            f"{scene_path}: has no coordinate reference system, so --min-area and --simplify (metres) cannot be measured"
        )


def _collect_columns(answers: Sequence[tuple[str, list[_Batch]]]) -> tuple[list, dict[str, list]]:
    """(WKB of every polygon, its columns), from (question, its batches) in output order."""
    wkb: list = []
    columns: dict[str, list] = {"question": [], "area_m2": [], "mean_probability": [], "pixel_count": []}
    for question, batches in answers:
        for batch in batches:
            wkb.extend(batch.wkb)
            columns["question"].extend([question] * len(batch.wkb))
            columns["area_m2"].extend(batch.area_m2.tolist())
            columns["mean_probability"].extend(batch.mean_probability.tolist())
            columns["pixel_count"].extend(batch.pixel_count.tolist())
    return wkb, columns


def _typed_columns(columns: dict, rows: int) -> dict:
    typed = {}
    for name, values in columns.items():
        if name in ("area_m2", "mean_probability"):
            typed[name] = np.asarray(values, dtype=np.float64)
        elif name == "pixel_count":
            typed[name] = np.asarray(values, dtype=np.int64)
        elif rows == 0:
            typed[name] = np.asarray(values, dtype=object)
        else:
            typed[name] = values
    return typed


def _geometry_type(geometries: np.ndarray) -> str:
    kinds = set(shapely.get_type_id(geometries).tolist()) if len(geometries) else set()
    return "MultiPolygon" if 6 in kinds else "Polygon"


def _promote(geometries: np.ndarray) -> np.ndarray:
    return np.array(
        [g if g.geom_type == "MultiPolygon" else shapely.MultiPolygon([g]) for g in geometries], dtype=object
    )


def _crs_for_output(crs):
    epsg = crs.to_epsg() if hasattr(crs, "to_epsg") else None
    return f"EPSG:{epsg}" if epsg else (crs.to_wkt() if hasattr(crs, "to_wkt") else crs)


def _write(frame, path, driver: str, geometry_type: str, layer_options: Optional[dict] = None) -> None:
    import pyogrio

    try:
        with warnings.catch_warnings():
            # A layer without CRS is deliberate here (pixel coordinates); pyogrio warns about it.
            warnings.filterwarnings("ignore", message=".*crs.* was not provided")
            pyogrio.write_dataframe(
                frame,
                str(path),
                layer=LAYER_NAME,
                driver=driver,
                geometry_type=geometry_type,
                promote_to_multi=False,
                layer_options=layer_options,
            )
    except Exception as error:  # pyogrio/GDAL errors carry no common base class
        raise OutputError(f"{path}: cannot be written ({first_line(error)})") from None


# -- RFC 7946 ----------------------------------------------------------------------------------


def to_rfc7946(geometries: np.ndarray, crs, transform: Optional[Affine] = None) -> np.ndarray:
    """Geometries in ``crs`` -> EPSG:4326 lon/lat, RFC 7946 style.

    Edges are first densified to at most 64 pixels so that long straight edges of a
    projected grid keep their shape in lon/lat. Rings that cross the antimeridian (a jump
    of more than 180 degrees between neighbouring vertices, or longitudes beyond +-180 in
    the source) are unwrapped into one continuous longitude range, cut at every multiple
    of 180 degrees east or west, and the pieces shifted back into [-180, 180]. Whatever
    lies beyond a pole (a grid whose cells are centred on +-90) is cut off there. Exteriors
    run counter-clockwise, holes clockwise; coordinates are rounded to 7 decimals (1 cm).
    """

    if len(geometries) == 0:
        return np.array([], dtype=object)
    source = _pyproj_crs(crs)
    if transform is not None:
        pixel = math.hypot(transform.a, transform.d)
        geometries = shapely.segmentize(geometries, 64 * pixel)
    to_wgs84 = pyproj.Transformer.from_crs(source, "EPSG:4326", always_xy=True)
    lonlat = shapely.transform(geometries, _pyproj_function(to_wgs84), interleaved=False)
    result = np.array([_split_antimeridian(g) for g in lonlat], dtype=object)
    result = shapely.orient_polygons(result, exterior_cw=False)
    return shapely.transform(result, lambda xy: np.round(xy, GEOJSON_DECIMALS))


def _split_antimeridian(geometry):
    polygons = list(shapely.get_parts(geometry))
    parts = []
    for polygon in polygons:
        parts.extend(_split_polygon(polygon))
    if len(parts) == 1:
        return parts[0]
    return shapely.MultiPolygon(parts)


def _unwrapped_rings(rings: list[np.ndarray], reference: Optional[float] = None) -> list[np.ndarray]:
    """Rings (N, 2) with longitudes made continuous, holes (and later rings) joining the
    first ring's longitude range, or ``reference``'s."""
    unwrapped = []
    for ring in rings:
        lon = np.unwrap(ring[:, 0], period=360.0)
        if reference is None:
            reference = lon[0]
        else:
            lon = lon - 360.0 * np.round((lon[0] - reference) / 360.0)
        unwrapped.append(np.column_stack([lon, ring[:, 1]]))
    return unwrapped


def _continuous_longitudes(geometry):
    """A (Multi)Polygon in lon/lat with every part in one continuous longitude range."""
    parts, reference = [], None
    for polygon in shapely.get_parts(geometry):
        rings = _unwrapped_rings([np.asarray(polygon.exterior.coords)]
                                 + [np.asarray(ring.coords) for ring in polygon.interiors], reference)
        reference = rings[0][0, 0]
        parts.append(Polygon(rings[0], rings[1:]))
    return parts[0] if len(parts) == 1 else shapely.MultiPolygon(parts)


def _split_polygon(polygon: Polygon) -> list:
    exterior = np.asarray(polygon.exterior.coords)
    holes = [np.asarray(ring.coords) for ring in polygon.interiors]
    rings = [exterior, *holes]
    crosses = any(np.any(np.abs(np.diff(ring[:, 0])) > 180.0) for ring in rings)
    outside = any(np.any(np.abs(ring[:, 0]) > 180.0) for ring in rings)
    # A global grid of cell-centred values (edges at +-90.125) reaches past the poles; the
    # part beyond is not on the Earth, and GeoJSON writers refuse it.
    beyond_pole = any(np.any(np.abs(ring[:, 1]) > 90.0) for ring in rings)
    if not crosses and not outside and not beyond_pole:
        return [polygon]
    unwrapped = _unwrapped_rings(rings)
    whole = shapely.make_valid(Polygon(unwrapped[0], unwrapped[1:]))
    west, _, east, _ = whole.bounds
    pieces = []
    for turn in range(int(math.floor((west + 180.0) / 360.0)), int(math.floor((east + 180.0) / 360.0)) + 1):
        offset = 360.0 * turn
        piece = shapely.intersection(whole, box(-180.0 + offset, -90.0, 180.0 + offset, 90.0))
        for part in shapely.get_parts(piece):
            if isinstance(part, Polygon) and not part.is_empty and part.area > 0:
                pieces.append(shapely.transform(part, lambda xy, o=offset: xy - np.array([o, 0.0])))
    return pieces
