"""Object evaluation of one field: are the predicted nuclei where the real ones are?

For each field: segment real and predicted nucleus images into objects (or take label images),
build the cell regions, match the objects (optimal one-to-one centroid matching, one-to-one
bounding-box overlap maximisation, or the best-overlap rule of Vasudevan et al.), measure
centroid distances (um when the pixel size is known), and compute, per predicted nucleus, the
chance of landing that close by random placement under each null model of
:mod:`cytogen.evaluate.chance`. :mod:`cytogen.evaluate.summary` pools the fields.
"""

from __future__ import annotations

from collections.abc import Callable

from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.filters import threshold_otsu
from skimage.segmentation import watershed

from cytogen.errors import CytogenError
from cytogen.evaluate.chance import (chance_probability_image, chance_probability_region,
                                     chance_union_image, chance_union_region)
from cytogen.evaluate.instances import instance_scores, jaccard_binary
from cytogen.evaluate.markers import detect_markers, marker_errors
from cytogen.evaluate.matching import Matching, match_bboxes, match_bboxes_best, match_centroids
from cytogen.evaluate.objects import ObjectTable, as_labels, measure_objects, segment_nuclei
from cytogen.io.images import Image

MATCH_RULES = {
    "centroid": "one-to-one optimal assignment of centroids within the matching cut-off",
    "bbox": "one-to-one assignment of bounding boxes maximising the total overlap ratio (IoU)",
    "bbox-best": ("each predicted nucleus paired with the real bounding box it overlaps most "
                  "(Vasudevan et al.; not one-to-one: several predictions may share a real nucleus)"),
}
REGIONS = ("source", "none")
PIXEL_SOURCES = ("--pixel-size-um", "manifest pixel_size_um column", "image metadata", "unknown (px)")


@dataclass
class ObjectSettings:
    """Options of the object evaluation (the CLI flags of ``cytogen evaluate objects`` map one-to-one)."""

    pixel_size_um: float | None = None
    radii: list[str | float] | None = None  # None: 4 um, 1 um and one nuclear radius (px: nuclear only)
    labels: bool = False
    match: str = "centroid"
    max_distance_um: float | None = None
    threshold: str | float = "otsu"
    sigma_px: float = 1.0
    min_area_um2: float | None = None
    min_area_px: int = 20
    exclude_border: bool = False
    region: str = "source"
    marker_distance_um: float = 15.0
    channel: int = 0
    #: instance labels of an intensity image ``f(image, spacing)`` instead of the threshold
    #: segmentation (e.g. a trained nucleus segmenter, given by the workflow), and its name
    segmenter: Callable[[np.ndarray, tuple[float, ...] | None], np.ndarray] | None = None
    segmenter_name: str | None = None

    def __post_init__(self) -> None:
        if self.match not in MATCH_RULES:
            raise CytogenError(f"match={self.match!r}: use one of {', '.join(MATCH_RULES)} (--match)")
        if self.region not in REGIONS:
            raise CytogenError(f"region={self.region!r}: use 'source' or 'none' (--region)")
        if self.pixel_size_um is not None and not (np.isfinite(self.pixel_size_um) and self.pixel_size_um > 0):
            raise CytogenError(f"--pixel-size-um must be a positive number, got {self.pixel_size_um}")


@dataclass
class FieldPair:
    """One field's real and predicted images, its source image (for the cell regions) and the
    in-plane pixel size given for it by a manifest (``pixel_size_um`` column), if any."""

    name: str
    truth: Image
    pred: Image
    source: Image | None = None
    pixel_size_um: float | None = None


@dataclass
class FieldChance:
    """Per radius: successes and, per predicted nucleus, its chance under each null model.

    ``image_*`` and ``region_*`` hold one probability per predicted nucleus of the field (the
    field's, or its own cell's); ``region_*`` are None without cell regions.
    """

    label: str
    radius: float
    k: int
    image_union: np.ndarray
    image_per_nucleus: np.ndarray
    region_union: np.ndarray | None
    region_per_nucleus: np.ndarray | None


@dataclass
class FieldResult:
    """Everything measured on one field (distances in ``unit``: um when the pixel size is known)."""

    name: str
    spacing: tuple[float, ...] | None
    pixel_size_source: str
    truth_image: np.ndarray
    pred_image: np.ndarray
    labels_true: np.ndarray
    labels_pred: np.ndarray
    objects_true: ObjectTable
    objects_pred: ObjectTable
    region: np.ndarray | None
    nuclear_radius: float
    matching: Matching | None = None
    distance: np.ndarray = field(default_factory=lambda: np.zeros(0))
    nearest: np.ndarray = field(default_factory=lambda: np.zeros(0))
    chance: list[FieldChance] = field(default_factory=list)
    instance: list[dict] = field(default_factory=list)
    jaccard: float = float("nan")
    markers: dict | None = None

    @property
    def unit(self) -> str:
        """``"um"`` with a pixel size, else ``"px"``."""
        return "um" if self.spacing else "px"

    @property
    def px(self) -> np.ndarray:
        """Pixel size per axis in ``unit`` (ones without a pixel size)."""
        return np.asarray(self.spacing) if self.spacing else np.ones(self.truth_image.ndim)

    @property
    def c_true(self) -> np.ndarray:
        """Real centroids in ``unit``."""
        return self.objects_true.centroid_um if self.spacing else self.objects_true.centroid_px

    @property
    def c_pred(self) -> np.ndarray:
        """Predicted centroids in ``unit``."""
        return self.objects_pred.centroid_um if self.spacing else self.objects_pred.centroid_px


def field_spacing(pair: FieldPair, s: ObjectSettings) -> tuple[tuple[float, ...] | None, str]:
    """Pixel size of a field and where it came from: flag > manifest column > file metadata.

    The flag and the manifest give the in-plane size; a 3D field keeps the z step of its file
    metadata, or takes the in-plane size when the file records none (as training does).
    """
    nd = pair.truth.ndim_spatial
    own = pair.truth.pixel_size_um or pair.pred.pixel_size_um
    for given, source in ((s.pixel_size_um, PIXEL_SOURCES[0]), (pair.pixel_size_um, PIXEL_SOURCES[1])):
        if given is not None:
            z = ((own[0],) if own else (float(given),)) if nd == 3 else ()
            return z + (float(given),) * 2, source
    if own:
        return tuple(own), PIXEL_SOURCES[2]
    return None, PIXEL_SOURCES[3]


def _channel(img: Image, k: int, what: str, name: str) -> np.ndarray:
    if k >= img.data.shape[0]:
        raise CytogenError(f"field {name!r}: {what} has {img.data.shape[0]} channel(s), --channel {k} asked")
    return img.data[k]


def _labels(img: np.ndarray, spacing, s: ObjectSettings) -> np.ndarray:
    if s.labels:
        return as_labels(img)
    if s.segmenter is not None:
        return as_labels(s.segmenter(img, spacing))
    return segment_nuclei(img, pixel_size_um=spacing, sigma_px=s.sigma_px, threshold=s.threshold,
                          min_area_um2=s.min_area_um2, min_area_px=s.min_area_px,
                          exclude_border=s.exclude_border)


def cell_regions(source: np.ndarray, truth_labels: np.ndarray) -> np.ndarray:
    """One cell region per real nucleus: the source's Otsu foreground (plus the real nuclei),
    split by a watershed seeded by the real nuclei (as CellProfiler's propagation of secondary
    objects). ``source`` is ``(C, [Z,] Y, X)``; returns an integer label image."""
    src = ndimage.gaussian_filter(np.asarray(source, np.float32).max(axis=0), 2.0)
    fg = src > threshold_otsu(src) if src.max() > src.min() else np.zeros(src.shape, bool)
    fg = ndimage.binary_fill_holes(fg | (truth_labels > 0))
    return watershed(-src, markers=truth_labels, mask=fg)


def measure_field(pair: FieldPair, s: ObjectSettings) -> FieldResult:
    """Objects of one field: segmentation, measurements and cell regions."""
    spacing, source = field_spacing(pair, s)
    t_img = _channel(pair.truth, s.channel, "truth", pair.name)
    p_img = _channel(pair.pred, s.channel, "prediction", pair.name)
    if t_img.shape != p_img.shape:
        raise CytogenError(f"field {pair.name!r}: prediction is {p_img.shape}, truth {t_img.shape}")
    lt, lp = _labels(t_img, spacing, s), _labels(p_img, spacing, s)
    ot, op = measure_objects(lt, spacing), measure_objects(lp, spacing)
    radii = ot.equivalent_radius_um if spacing else ot.equivalent_radius_px
    region = None
    if s.region == "source" and pair.source is not None:  # no real nucleus: no cell, chance 0
        region = cell_regions(pair.source.data, lt) if len(ot) else np.zeros(lt.shape, np.int32)
    return FieldResult(pair.name, spacing, source, t_img, p_img, lt, lp, ot, op, region,
                       float(np.median(radii)) if len(ot) else float("nan"))


def match_field(f: FieldResult, match: str, max_distance: float) -> None:
    """Match the field's objects by the rule ``match``; fills ``matching``, ``distance``, ``nearest``."""
    if match == "centroid":
        m = match_centroids(f.c_true, f.c_pred, max_distance)
        d = m.distance
    else:
        rule = match_bboxes if match == "bbox" else match_bboxes_best
        m = rule(f.objects_true.bbox, f.objects_pred.bbox)
        d = np.linalg.norm(f.c_true[m.idx_true] - f.c_pred[m.idx_pred], axis=1) if m.n_matched else np.zeros(0)
    f.matching, f.distance = m, d
    if len(f.c_pred) and len(f.c_true):
        f.nearest = cKDTree(f.c_true).query(f.c_pred)[0]


def field_chance(f: FieldResult, label: str, r: float) -> FieldChance:
    """Successes within ``r`` and each predicted nucleus's chance under the four null models."""
    n_pred = len(f.objects_pred)
    ct, cp = f.objects_true.centroid_px, f.objects_pred.centroid_px
    k = int(np.count_nonzero(f.distance <= r))
    if len(ct) == 0:  # no real nucleus: no position is right
        z = np.zeros(n_pred)
        return FieldChance(label, r, k, z, z.copy(), None if f.region is None else z.copy(),
                           None if f.region is None else z.copy())
    px = f.px
    shape = f.truth_image.shape
    union = chance_union_image(ct, shape, r, spacing=px)
    per_nucleus = float(np.mean(chance_probability_image(ct, shape, r / px)))
    reg_u = reg_n = None
    if f.region is not None:
        reg_u = chance_union_region(ct, f.region, r, f.nuclear_radius, spacing=px, at_px=cp)
        reg_n = chance_probability_region(ct, f.region, r, f.nuclear_radius, spacing=px, at_px=cp)
    return FieldChance(label, r, k, np.full(n_pred, union), np.full(n_pred, per_nucleus), reg_u, reg_n)


def score_field(f: FieldResult, radii: list[tuple[str, float]], s: ObjectSettings, max_distance: float) -> None:
    """Matching, chances per radius, instance scores and markers of one measured field."""
    match_field(f, s.match, max_distance)
    f.chance = [field_chance(f, label, r) for label, r in radii]
    f.instance = instance_scores(f.labels_true, f.labels_pred)
    f.jaccard = jaccard_binary(f.labels_true, f.labels_pred)
    if f.unit == "um":
        diam = 2 * f.nuclear_radius if np.isfinite(f.nuclear_radius) else 10.0
        mt = detect_markers(f.truth_image, pixel_size_um=f.spacing, nucleus_diameter_um=diam)
        mp = detect_markers(f.pred_image, pixel_size_um=f.spacing, nucleus_diameter_um=diam)
        f.markers = marker_errors(mt * f.px, mp * f.px, s.marker_distance_um)
