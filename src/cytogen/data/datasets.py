"""Paired fields in memory and random-patch datasets over them."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch
from scipy import ndimage
from skimage.filters import threshold_otsu
from torch.utils.data import Dataset

from cytogen.data.augment import random_dihedral
from cytogen.data.manifest import FieldEntry
from cytogen.data.masks import MaskChannels, assign_channels, check_label_image, spread
from cytogen.data.normalize import Normalizer
from cytogen.data.patches import crop, foreground_coords, sample_corner
from cytogen.errors import CytogenError
from cytogen.io.images import Image, read_spec, stack_channels


@dataclass
class RawField:
    """Images of one manifest row as read from disk (not normalised)."""

    name: str
    source: Image
    target: Image | None
    mask: np.ndarray | None  # spatial bool array
    split: str = "train"
    #: the manifest's ``reference`` image (C, ...) float32, as read (no normalisation), or None
    reference: np.ndarray | None = None


@dataclass
class Field:
    """A normalised field ready for patch sampling."""

    name: str
    source: np.ndarray
    target: np.ndarray | None
    mask: np.ndarray | None  # (1, ...) float32 in {0, 1}
    fg_index: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    #: label -> channel of a label-image source whose arrangement is fixed (no re-arrangement)
    assignment: dict[int, int] | None = None
    #: aligned reference (C, ...) float32 cropped with each patch as ``"reference"`` (exclusivity)
    reference: np.ndarray | None = None


def _read_stack(specs: list[str], what: str, name: str) -> Image:
    images = [read_spec(s) for s in specs]
    try:
        return stack_channels(images)
    except CytogenError as exc:
        raise CytogenError(f"field {name!r}, {what}: {exc}") from exc


def read_field(entry: FieldEntry, *, require_target: bool = True, source_labels: bool = False) -> RawField:
    """Read the source, target and mask images of a manifest row and check they agree
    (``source_labels``: the source must be one instance label image, for ``data.mask_channels``)."""
    src = _read_stack(entry.source, "source", entry.name)
    if source_labels:
        try:
            src.data = check_label_image(src.data, f"field {entry.name!r}, source {';'.join(entry.source)}")[None]
        except CytogenError as exc:
            raise CytogenError(f"{exc} (the recipe's data.mask_channels spreads a label image over channels)") from None
    tgt = None
    if entry.target:
        tgt = _read_stack(entry.target, "target", entry.name)
    elif require_target:
        raise CytogenError(f"field {entry.name!r} has no target; add a 'target' column entry")
    if entry.pixel_size_um is not None:
        ps = (entry.pixel_size_um,) * 2
        if src.ndim_spatial == 3:
            z = src.pixel_size_um[0] if src.pixel_size_um else entry.pixel_size_um
            ps = (z,) + ps
        src.pixel_size_um = ps
        if tgt is not None:
            tgt.pixel_size_um = ps
    if tgt is not None and tgt.spatial_shape != src.spatial_shape:
        raise CytogenError(
            f"field {entry.name!r}: source {entry.source[0]} is {src.spatial_shape} but target "
            f"{entry.target[0]} is {tgt.spatial_shape}; source and target must be the same size"
        )
    mask = _read_aligned(entry, entry.mask, "mask", src)
    mask = None if mask is None else np.any(mask > 0, axis=0)
    reference = _read_aligned(entry, entry.reference, "reference", src)
    reference = None if reference is None else reference.astype(np.float32)
    for what, arr in (("source", src.data), ("target", None if tgt is None else tgt.data),
                      ("reference", reference)):
        if arr is not None and not np.all(np.isfinite(arr)):
            raise CytogenError(
                f"field {entry.name!r}: {what} contains NaN/Inf pixels; replace them before training"
            )
    return RawField(entry.name, src, tgt, mask, entry.split, reference)


def _read_aligned(entry: FieldEntry, spec: str | None, what: str, src: Image) -> np.ndarray | None:
    """The data of an optional per-field image (mask, reference) that must cover the source's pixels."""
    if not spec:
        return None
    img = read_spec(spec)
    if img.spatial_shape != src.spatial_shape:
        raise CytogenError(
            f"field {entry.name!r}: {what} {spec} is {img.spatial_shape}, source is "
            f"{src.spatial_shape}; the {what} must cover the same pixels"
        )
    return img.data


def otsu_mask(target: np.ndarray, sigma: float = 1.0) -> np.ndarray:
    """Foreground of a (normalised) target ``(C, ...)``: Otsu threshold of the smoothed max-projection over channels."""
    img = ndimage.gaussian_filter(target.max(axis=0).astype(np.float32), sigma)
    if float(img.max()) <= float(img.min()):
        return np.zeros(img.shape, dtype=bool)
    return img > threshold_otsu(img)


def prepare_fields(raw: list[RawField], src_norm: Normalizer, tgt_norm: Normalizer,
                   patch_size: tuple[int, ...], *, mask_mode: str = "auto",
                   encoder: MaskChannels | None = None) -> list[Field]:
    """Normalise raw fields, derive masks and foreground indices (fields must hold a patch).

    With an ``encoder`` the source is a label image, kept as labels (spread over channels per
    patch by :class:`RandomPatches`); without re-arrangement each field gets its one fixed
    arrangement here.
    """
    out = []
    for rf in raw:
        small = [s for s, p in zip(rf.source.spatial_shape, patch_size) if s < p]
        if small:
            raise CytogenError(
                f"field {rf.name!r} is {rf.source.spatial_shape} but data.patch_size is {list(patch_size)}; "
                "lower data.patch_size (e.g. --set data.patch_size=[64,64]) or use larger fields"
            )
        src = rf.source.data if encoder is not None else src_norm.normalize(rf.source.data)
        tgt = tgt_norm.normalize(rf.target.data) if rf.target is not None else None
        if rf.mask is not None:
            mask = rf.mask
        elif mask_mode == "manifest":
            raise CytogenError(
                f"field {rf.name!r} has no mask but loss.mask is 'manifest'; add a 'mask' column "
                "or set loss.mask=auto (Otsu threshold of the target)"
            )
        else:
            mask = otsu_mask(tgt) if tgt is not None else None
        mask_arr = mask[None].astype(np.float32) if mask is not None else None
        fg = foreground_coords(mask_arr[0] > 0) if mask_arr is not None else np.zeros(0, np.int64)
        fixed = None
        if encoder is not None and not encoder.rearrange:
            try:
                fixed = assign_channels(src[0], encoder.channels, encoder.gap_px,
                                        rng=np.random.default_rng(encoder.seed))
            except CytogenError as exc:
                raise CytogenError(f"field {rf.name!r}, source: {exc}") from None
        out.append(Field(rf.name, src, tgt, mask_arr, fg, fixed, rf.reference))
    return out


class RandomPatches(Dataset):
    """Random (optionally foreground-biased, augmented) patches from in-memory fields.

    Deterministic: item ``i`` of epoch ``e`` depends only on ``(seed, e, i)``, so a resumed run
    sees the same patches as an uninterrupted one, whatever the number of workers. Indices at or
    beyond ``length`` encode the epoch (``k = e * length + i``, see
    :class:`~cytogen.data.sampling.EpochSampler`).
    With ``unpaired=True`` (CycleGAN) the target patch comes from an independent random field
    and position, so no pairing is learned from the data. With an ``encoder``
    (:class:`~cytogen.data.masks.MaskChannels`) the fields' sources are label images and each
    patch's labels are spread over the mask channels, re-arranged per draw unless the field
    holds a fixed arrangement.
    """

    def __init__(self, fields: list[Field], patch_size: tuple[int, ...], length: int, *,
                 augment: bool = True, fg_bias: float = 0.0, seed: int = 0,
                 unpaired: bool = False, encoder: MaskChannels | None = None,
                 groups: list[str | None] | None = None) -> None:
        if not fields:
            raise CytogenError("no fields to sample patches from; check the manifest splits")
        self.fields = fields
        self.patch = tuple(int(p) for p in patch_size)
        self.length = int(length)
        self.augment = augment
        self.fg_bias = float(fg_bias)
        self.seed = int(seed)
        self.unpaired = bool(unpaired)
        self.encoder = encoder
        sizes = np.array([np.prod(f.source.shape[1:]) for f in fields], dtype=np.float64)
        self.weights = sizes / sizes.sum()
        if groups is not None:  # equal share per group, by area within a group
            if len(groups) != len(fields):
                raise CytogenError(f"{len(groups)} groups for {len(fields)} fields")
            keys = [g or "" for g in groups]
            total = {k: sizes[[i for i, g in enumerate(keys) if g == k]].sum() for k in set(keys)}
            self.weights = np.array([sizes[i] / total[k] for i, k in enumerate(keys)]) / len(total)
        # rng.choice(n, p=weights) draws one uniform and searches this normalised CDF; doing it
        # here once gives the same fields without re-validating p on every item (400 fields: O(n))
        self._cdf = np.cumsum(self.weights)
        self._cdf /= self._cdf[-1]

    def __len__(self) -> int:
        return self.length

    def _pick(self, rng: np.random.Generator) -> Field:
        """A field drawn by area weight: the same draw as ``rng.choice(len(fields), p=weights)``."""
        return self.fields[int(self._cdf.searchsorted(rng.random(), side="right"))]

    def __getitem__(self, i: int) -> dict[str, torch.Tensor]:
        epoch, i = divmod(int(i), self.length)
        rng = np.random.default_rng([self.seed, epoch, i])
        f = self._pick(rng)
        spatial = f.source.shape[1:]
        corner = sample_corner(rng, spatial, self.patch, f.fg_index, self.fg_bias)
        arrays = {"source": crop(f.source, corner, self.patch)}
        if self.encoder is not None:  # label patch -> mask channels (a fresh arrangement per draw)
            enc, labels = self.encoder, arrays["source"][0]
            arrays["source"] = (spread(labels, f.assignment, enc.channels, merged=enc.merged)
                                if f.assignment is not None else enc.encode(labels, rng, name=f"field {f.name!r}"))
        if f.target is not None:
            arrays["target"] = crop(f.target, corner, self.patch)
        if f.mask is not None:
            arrays["mask"] = crop(f.mask, corner, self.patch)
        if f.reference is not None:  # aligned with the source, augmented with it
            arrays["reference"] = crop(f.reference, corner, self.patch)
        if self.unpaired and f.target is not None:
            g = self._pick(rng)
            corner_b = sample_corner(rng, g.source.shape[1:], self.patch, g.fg_index, self.fg_bias)
            arrays["target"] = crop(g.target, corner_b, self.patch)
            arrays.pop("mask", None)
        # one float32 copy of all channels, transformed once, handed out as channel views
        sizes = [v.shape[0] for v in arrays.values()]
        stack = np.concatenate([v.astype(np.float32, copy=False) for v in arrays.values()], axis=0)
        if self.augment:
            t = random_dihedral(rng, len(self.patch), square=self.patch[-1] == self.patch[-2])
            stack = t.apply(stack)
        whole = torch.from_numpy(np.ascontiguousarray(stack))
        return dict(zip(arrays, whole.split(sizes, dim=0)))
