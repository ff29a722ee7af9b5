"""Marker-centred patches for unsupervised cell segmentation (paper 004, "Segmentation model").

Every marker (a nucleus centre) gets one ``k x k`` patch of the cell image centred on it, plus a
last channel holding a Gaussian disk (sigma 15 px in the paper) at the marker, which tells the
network which cell of the patch to segment. Parts of a patch outside the image are zero (a cell at
the border is padded, not dropped). A training batch is every patch whose marker falls inside one
``area x area`` window of a field (640 x 640 in the paper), so that the patches overlap and the
consistency loss (:mod:`cytogen.losses.consistency`) can compare them on a common *canvas*: the
bounding box of the batch's patches, on which the foreground mask is laid (0 outside the image).

Augmentation is a random flip/transpose per patch (:func:`dihedral_batch`), undone on the
network's output (:func:`invert_dihedral_batch`) before the loss.

Coordinates are pixel coordinates in image axis order: 2D markers are ``(y, x)``, 3D markers
``(z, y, x)``; images are channels first, ``(C, Y, X)`` or ``(C, Z, Y, X)``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset

from cytogen.errors import CytogenError

#: Redraws of an area without markers before falling back to an area centred on a marker.
MAX_REDRAWS = 64


def _per_axis(value: float | Sequence[float], d: int, what: str) -> tuple[float, ...]:
    """A scalar or one value per spatial axis, as a ``d``-tuple."""
    if np.ndim(value) == 0:
        return (float(value),) * d
    out = tuple(float(v) for v in value)
    if len(out) != d:
        raise CytogenError(f"{what} {value!r} must be one number or one per spatial axis ({d})")
    return out


def _sizes(size: int | Sequence[int], d: int) -> tuple[int, ...]:
    """Patch size per spatial axis (an int means the same size on every axis)."""
    out = tuple(int(round(s)) for s in _per_axis(size, d, "patch size"))
    if any(s < 1 for s in out):
        raise CytogenError(f"patch size {size!r} must be positive")
    return out


def gaussian_disk(size: int | Sequence[int], offset: Sequence[float],
                  sigma_px: float | Sequence[float]) -> np.ndarray:
    """Gaussian position channel ``exp(-r^2 / (2 sigma^2))`` centred at ``offset``.

    Parameters
    ----------
    size
        Patch size ``k`` (every axis) or one size per axis; the number of axes is ``len(offset)``.
    offset
        Centre in patch coordinates, ``(y, x)`` (3D: ``(z, y, x)``), sub-pixel allowed.
    sigma_px
        Standard deviation in pixels, one number or one per axis.

    Returns
    -------
    numpy.ndarray
        float32 array of shape ``size``, 1 at the centre pixel when ``offset`` is integral.
    """
    offset = tuple(float(o) for o in offset)
    d = len(offset)
    shape = _sizes(size, d)
    sigma = _per_axis(sigma_px, d, "sigma_px")
    if any(s <= 0 for s in sigma):
        raise CytogenError(f"sigma_px {sigma_px!r} must be positive")
    r2 = np.zeros(shape, np.float64)
    for ax, (n, o, s) in enumerate(zip(shape, offset, sigma)):
        view = [1] * d
        view[ax] = n
        r2 = r2 + ((np.arange(n, dtype=np.float64) - o) / s).reshape(view) ** 2
    return np.exp(-0.5 * r2).astype(np.float32)


def patch_origins(markers: np.ndarray, size: int | Sequence[int]) -> np.ndarray:
    """Top-left corner of every marker's patch: ``round(marker) - k // 2`` (may be negative).

    Rounding is half up (``floor(m + 0.5)``), so a marker at 2.5 belongs to pixel 3.

    Returns
    -------
    numpy.ndarray
        int64 array ``(N, d)``.
    """
    m = np.asarray(markers, dtype=np.float64)
    if m.ndim != 2:
        raise CytogenError(f"markers must be an (N, d) array of pixel coordinates, got shape {m.shape}")
    k = np.asarray(_sizes(size, m.shape[1]), dtype=np.int64)
    return np.floor(m + 0.5).astype(np.int64) - k // 2


def _check_image_markers(image: np.ndarray, markers: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    img = np.asarray(image)
    m = np.asarray(markers, dtype=np.float64)
    if m.ndim == 1 and m.size == 0:
        m = m.reshape(0, img.ndim - 1)
    if img.ndim not in (3, 4):
        raise CytogenError(f"image must be (C, Y, X) or (C, Z, Y, X), got shape {img.shape}; "
                           "add a channel axis to a single-channel image")
    if m.ndim != 2 or m.shape[1] != img.ndim - 1:
        raise CytogenError(f"markers of shape {m.shape} do not match the {img.ndim - 1}D image "
                           f"{img.shape}: give an (N, {img.ndim - 1}) array of pixel coordinates")
    if not np.isfinite(m).all():
        raise CytogenError("markers contain NaN or infinite coordinates; remove those rows")
    return img, m


def extract_patches(image: np.ndarray, markers: np.ndarray, size: int | Sequence[int] = (64, 64),
                    sigma_px: float | Sequence[float] = 15.0) -> tuple[np.ndarray, np.ndarray]:
    """Marker-centred patches with the Gaussian position channel appended.

    Parameters
    ----------
    image
        ``(C, Y, X)`` (or ``(C, Z, Y, X)``) normalised image.
    markers
        ``(N, 2)`` (or ``(N, 3)``) marker coordinates.
    size
        Patch size ``(k, k)`` (3D ``(kz, k, k)``); an int means the same on every axis.
    sigma_px
        Standard deviation of the Gaussian disk in pixels (one or one per axis).

    Returns
    -------
    patches : numpy.ndarray
        float32 ``(N, C + 1, *size)``; image channels zero outside the image, last channel the
        Gaussian disk centred at ``marker - origin`` (sub-pixel).
    origins : numpy.ndarray
        int64 ``(N, d)`` patch corners in image coordinates (:func:`patch_origins`).
    """
    img, m = _check_image_markers(image, markers)
    d = m.shape[1]
    k = _sizes(size, d)
    spatial = img.shape[1:]
    origins = patch_origins(m, k)
    out = np.zeros((len(m), img.shape[0] + 1) + k, np.float32)
    for i, o in enumerate(origins):
        lo = np.maximum(o, 0)
        hi = np.minimum(o + np.asarray(k), spatial)
        if np.all(hi > lo):
            src = (slice(None),) + tuple(slice(a, b) for a, b in zip(lo, hi))
            dst = (i, slice(0, img.shape[0])) + tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, o))
            out[dst] = img[src]
        out[i, -1] = gaussian_disk(k, m[i] - o, sigma_px)
    return out, origins


def canvas_for(origins: np.ndarray, size: int | Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Bounding box of the patches at ``origins``: ``(canvas_origin (d,), canvas_shape (d,))``."""
    o = np.asarray(origins, dtype=np.int64)
    if o.ndim != 2 or len(o) == 0:
        raise CytogenError(f"canvas_for needs at least one patch origin (an (N, d) array), got {o.shape}")
    k = np.asarray(_sizes(size, o.shape[1]), dtype=np.int64)
    lo = o.min(axis=0)
    return lo, o.max(axis=0) + k - lo


def mask_on_canvas(mask: np.ndarray, canvas_origin: Sequence[int],
                   canvas_shape: Sequence[int]) -> np.ndarray:
    """The image's foreground ``mask`` laid on a canvas: float32, 0 where the canvas leaves the image."""
    mask = np.asarray(mask)
    o = np.asarray(canvas_origin, dtype=np.int64)
    shape = tuple(int(s) for s in canvas_shape)
    if mask.ndim != len(shape) or len(o) != len(shape):
        raise CytogenError(f"mask of shape {mask.shape} and canvas {shape} must have the same axes")
    out = np.zeros(shape, np.float32)
    lo = np.maximum(o, 0)
    hi = np.minimum(o + np.asarray(shape), mask.shape)
    if np.all(hi > lo):
        out[tuple(slice(a - c, b - c) for a, b, c in zip(lo, hi, o))] = \
            mask[tuple(slice(a, b) for a, b in zip(lo, hi))]
    return out


@dataclass
class MarkerField:
    """One training field: normalised image, its markers and its foreground mask.

    Attributes
    ----------
    name
        Field name (for messages).
    image
        ``(C, Y, X)`` (or ``(C, Z, Y, X)``) float32, normalised; a ``(Y, X)`` image (``(Z, Y, X)``
        with 3D markers) is taken as one channel.
    markers
        ``(N, d)`` marker coordinates; each must round to a pixel of the image.
    foreground
        bool mask of the image's spatial shape (the paper's M).
    """

    name: str
    image: np.ndarray
    markers: np.ndarray
    foreground: np.ndarray

    def __post_init__(self) -> None:
        img = np.asarray(self.image, dtype=np.float32)
        m = np.asarray(self.markers, dtype=np.float64)
        if m.ndim == 1 and m.size == 0:
            m = m.reshape(0, 2 if img.ndim <= 3 else 3)
        if m.ndim == 2 and img.ndim == m.shape[1]:
            img = img[None]
        try:
            img, m = _check_image_markers(img, m)
        except CytogenError as err:
            raise CytogenError(f"field {self.name!r}: {err}") from None
        if not np.isfinite(img).all():
            raise CytogenError(f"field {self.name!r}: the image contains NaN or infinite values; "
                               "fix or mask them before training")
        fg = np.asarray(self.foreground).astype(bool)
        if fg.shape != img.shape[1:]:
            raise CytogenError(f"field {self.name!r}: foreground mask {fg.shape} must have the "
                               f"image's spatial shape {img.shape[1:]}")
        pix = np.floor(m + 0.5)
        bad = np.flatnonzero(((pix < 0) | (pix >= np.asarray(img.shape[1:]))).any(axis=1))
        if bad.size:
            raise CytogenError(f"field {self.name!r}: marker {int(bad[0])} at {tuple(m[bad[0]])} lies "
                               f"outside the image {img.shape[1:]} ({bad.size} such); remove those "
                               "markers or check the axis order (y, x)")
        self.image, self.markers, self.foreground = img, m, fg


def batch_for_area(field: MarkerField, start: Sequence[int], stop: Sequence[int], *,
                   size: int | Sequence[int], sigma_px: float | Sequence[float] = 15.0
                   ) -> dict[str, object] | None:
    """The batch of every patch whose marker pixel lies in ``[start, stop)`` (None when none does).

    Returns the arrays of :class:`AreaBatches` items (numpy), without the ``"field"`` entry; use
    it for fixed (e.g. validation) areas.
    """
    lo, hi = np.asarray(start, np.int64), np.asarray(stop, np.int64)
    pix = np.floor(field.markers + 0.5)
    sel = np.flatnonzero(((pix >= lo) & (pix < hi)).all(axis=1))
    if sel.size == 0:
        return None
    k = _sizes(size, field.markers.shape[1])
    patches, origins = extract_patches(field.image, field.markers[sel], k, sigma_px)
    c0, cshape = canvas_for(origins, k)
    return {"patches": patches, "offsets": origins - c0,
            "mask": mask_on_canvas(field.foreground, c0, cshape),
            "canvas_origin": c0, "area": np.stack([lo, hi]), "marker_index": sel.astype(np.int64)}


class AreaBatches(Dataset):
    """Batches of all marker patches inside one random ``area x area`` window of a field.

    Item ``k`` depends only on ``(seed, k)`` (any ``k >= 0``; with
    :class:`~cytogen.data.sampling.EpochSampler` ``k = epoch * length + i``), so a resumed run
    sees exactly the batches of an uninterrupted one. Use with ``DataLoader(batch_size=None)``.

    Parameters
    ----------
    fields
        Training fields; a field is drawn with probability proportional to its number of markers.
    size
        Patch size ``k`` / ``(k, k)`` (3D ``(kz, k, k)``).
    area
        Window side in pixels (the paper's 640); an int applies to Y and X (3D: Z whole), a
        sequence gives one side per axis. Axes shorter than the window are taken whole.
    sigma_px
        Gaussian disk sigma in pixels.
    length
        Items per epoch (``len(ds)``).
    seed
        Base seed.

    Notes
    -----
    An item is a dict: ``"patches"`` (n, C+1, *size) float32, ``"offsets"`` (n, d) int64 (patch
    origin minus canvas origin, >= 0), ``"mask"`` canvas float32 (foreground, 0 outside the
    image), ``"field"`` int, and for bookkeeping ``"canvas_origin"`` (d,) int64, ``"area"``
    (2, d) int64 (window start and stop in image pixels) and ``"marker_index"`` (n,) int64 (the
    patches' rows in the field's markers, in marker order). A window without markers is redrawn
    from the same random stream; after ``MAX_REDRAWS`` tries the window is centred on a random
    marker of the field.
    """

    def __init__(self, fields: Sequence[MarkerField], *, size: int | Sequence[int],
                 area: int | Sequence[int] = 640,
                 sigma_px: float | Sequence[float] = 15.0, length: int = 64, seed: int = 0) -> None:
        self.fields = list(fields)
        if not self.fields:
            raise CytogenError("no marker fields to train on; check the manifest splits")
        d = self.fields[0].markers.shape[1]
        if any(f.markers.shape[1] != d for f in self.fields):
            raise CytogenError("all fields must have the same number of spatial axes (2D or 3D)")
        counts = np.array([len(f.markers) for f in self.fields], dtype=np.float64)
        if counts.sum() == 0:
            raise CytogenError("no field has any marker; give markers (or a nucleus image) per field")
        self.weights = counts / counts.sum()
        self.size = _sizes(size, d)
        if np.ndim(area) == 0:
            self.area = (None,) * (d - 2) + (int(area),) * 2
        else:
            self.area = tuple(int(a) for a in _per_axis(area, d, "area"))
        if any(a is not None and a < 1 for a in self.area):
            raise CytogenError(f"area {area!r} must be positive")
        self.sigma_px = sigma_px
        self.length = int(length)
        if self.length < 1:
            raise CytogenError(f"length (areas per epoch) must be >= 1, got {length!r}")
        self.seed = int(seed)

    def __len__(self) -> int:
        return self.length

    def _window(self, rng: np.random.Generator, spatial: tuple[int, ...],
                centre: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
        lo, hi = [], []
        for ax, s in enumerate(spatial):
            a = self.area[ax]
            if a is None or a >= s:
                lo.append(0)
                hi.append(s)
                continue
            start = int(rng.integers(0, s - a + 1)) if centre is None else \
                int(np.clip(centre[ax] - a // 2, 0, s - a))
            lo.append(start)
            hi.append(start + a)
        return np.asarray(lo, np.int64), np.asarray(hi, np.int64)

    def __getitem__(self, k: int) -> dict[str, object]:
        if int(k) < 0:
            raise IndexError(k)
        rng = np.random.default_rng([self.seed, int(k)])
        fi = int(rng.choice(len(self.fields), p=self.weights))
        f = self.fields[fi]
        spatial = f.image.shape[1:]
        batch = None
        for _ in range(MAX_REDRAWS):
            lo, hi = self._window(rng, spatial)
            batch = batch_for_area(f, lo, hi, size=self.size, sigma_px=self.sigma_px)
            if batch is not None:
                break
        if batch is None:
            centre = np.floor(f.markers[int(rng.integers(len(f.markers)))] + 0.5).astype(np.int64)
            lo, hi = self._window(rng, spatial, centre)
            batch = batch_for_area(f, lo, hi, size=self.size, sigma_px=self.sigma_px)
        return {"patches": torch.from_numpy(batch["patches"]),
                "offsets": torch.from_numpy(np.ascontiguousarray(batch["offsets"], np.int64)),
                "mask": torch.from_numpy(batch["mask"]),
                "field": fi,
                "canvas_origin": torch.from_numpy(batch["canvas_origin"]),
                "area": torch.from_numpy(batch["area"]),
                "marker_index": torch.from_numpy(batch["marker_index"])}


def _code_bits(code: int) -> tuple[bool, bool, bool]:
    return bool(code & 4), bool(code & 2), bool(code & 1)


def _apply_code(x: torch.Tensor, code: int, inverse: bool) -> torch.Tensor:
    transpose, flip_y, flip_x = _code_bits(code)
    dims = [d for d, f in ((-2, flip_y), (-1, flip_x)) if f]
    if transpose and not inverse:
        x = x.transpose(-2, -1)
    if dims:
        x = torch.flip(x, dims)
    if transpose and inverse:
        x = x.transpose(-2, -1)
    return x


def _dihedral(x: torch.Tensor, codes: torch.Tensor, inverse: bool) -> torch.Tensor:
    codes = torch.as_tensor(codes, dtype=torch.long).reshape(-1).to(x.device)
    if x.ndim < 3 or codes.numel() != x.shape[0]:
        raise ValueError(f"need one code per patch: x {tuple(x.shape)}, codes {tuple(codes.shape)}")
    if codes.numel() == 0:
        return x
    used = torch.unique(codes).tolist()
    if min(used) < 0 or max(used) > 7:
        raise ValueError(f"dihedral codes must lie in 0..7, got {used}")
    if any(c & 4 for c in used) and x.shape[-1] != x.shape[-2]:
        raise ValueError(f"a transpose needs square patches, got {tuple(x.shape[-2:])}")
    if len(used) == 1:
        return _apply_code(x, used[0], inverse).contiguous()
    out = torch.empty_like(x)
    for c in used:
        idx = torch.nonzero(codes == c).squeeze(1)
        out = out.index_copy(0, idx, _apply_code(x.index_select(0, idx), c, inverse).contiguous())
    return out


def dihedral_batch(x: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Flip/transpose every patch of ``x`` (n, C, [Z,] k, k) by its own code.

    Code bits: ``4`` = transpose Y/X, ``2`` = flip Y, ``1`` = flip X, applied in that order
    (transpose first). In 3D only the Y/X plane is transformed. Differentiable.
    """
    return _dihedral(x, codes, inverse=False)


def invert_dihedral_batch(y: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Undo :func:`dihedral_batch`: ``invert_dihedral_batch(dihedral_batch(x, c), c) == x`` exactly."""
    return _dihedral(y, codes, inverse=True)


def random_codes(n: int, generator: torch.Generator | None = None, *, square: bool = True) -> torch.Tensor:
    """``n`` uniform dihedral codes in 0..7 (0..3, flips only, when ``square`` is False)."""
    return torch.randint(0, 8 if square else 4, (int(n),), generator=generator, dtype=torch.long)
