"""Instance masks spread over K channels, for generators that turn masks into images.

Cosacak & Kizil (paper 003) feed pix2pix an instance label image as 4 binary channels: every
mask goes to one channel, and two masks on one channel never come closer than a gap, so that the
generator sees each object's outline even where nuclei touch. This module does that for 2D and
3D label images:

- :func:`conflict_pairs`: pairs of labels that may not share a channel: some pixel of one lies
  within ``gap_px`` (Euclidean, pixel centre to pixel centre) of a pixel of the other. Touching
  masks are 1 px apart; with the default gap of 2 px, two masks on one channel have at least two
  background pixels between them along every axis-aligned and diagonal line.
- :func:`assign_channels`: a proper colouring of that conflict graph with K colours: DSatur order
  with random tie-breaking and a random choice among the free channels (so that every call with
  a fresh generator is a new arrangement), retried, then an exhaustive backtracking search with a
  step budget; a clear error when K channels cannot hold the layout.
- :func:`spread`: the ``(K[+1], ...)`` float32 channel stack (optionally with the union last).
- :class:`MaskChannels`: these settings as a recipe section (``data.mask_channels``), stored in
  the model folder and applied the same way at prediction; ``rearrange`` draws a new assignment
  for every training patch (the paper's re-arrangement augmentation).
"""

from __future__ import annotations

import itertools
import math
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from cytogen.errors import CytogenError

__all__ = ["MaskChannels", "assign_channels", "check_label_image", "conflict_pairs", "spread"]

#: Backtracking steps per connected component before :func:`assign_channels` gives up.
SEARCH_BUDGET = 200_000


def check_label_image(labels: Any, name: str = "labels") -> np.ndarray:
    """An integer ``(Y, X)`` / ``(Z, Y, X)`` label image (a leading channel axis of 1 is dropped)."""
    arr = np.asarray(labels)
    if arr.ndim in (3, 4) and arr.shape[0] == 1:
        arr = arr[0]
    if arr.ndim not in (2, 3):
        raise CytogenError(f"{name}: an instance label image is 2D or 3D with one channel, got shape {arr.shape}")
    if arr.dtype.kind == "f":
        if not np.all(np.isfinite(arr)) or not np.all(arr == np.round(arr)):
            raise CytogenError(f"{name}: not a label image (non-integer values); give instance labels "
                               "(0 = background, 1..N = objects), e.g. a uint16 TIFF")
    elif arr.dtype.kind not in "iub":
        raise CytogenError(f"{name}: not a label image (dtype {arr.dtype})")
    if arr.size and arr.min() < 0:
        raise CytogenError(f"{name}: negative labels; use 0 for background and 1..N for objects")
    return arr.astype(np.int64, copy=False)


def _offsets(ndim: int, gap_px: float) -> list[tuple[int, ...]]:
    """Integer offsets ``d`` with ``0 < |d| <= gap_px``, one of each ``+-d`` pair."""
    r = int(math.floor(gap_px))
    out = []
    for d in itertools.product(range(-r, r + 1), repeat=ndim):
        if d > (0,) * ndim and sum(v * v for v in d) <= gap_px * gap_px + 1e-9:
            out.append(d)
    return out


def conflict_pairs(labels: np.ndarray, gap_px: float = 2.0) -> np.ndarray:
    """``(P, 2)`` int64 label pairs ``a < b`` closer than or at ``gap_px`` (they may not share a channel)."""
    labels = check_label_image(labels)
    gap_px = float(gap_px)
    if not (np.isfinite(gap_px) and gap_px >= 1):
        raise CytogenError(f"gap_px must be >= 1 (touching masks are 1 px apart), got {gap_px}")
    found = []
    for d in _offsets(labels.ndim, gap_px):
        a_sl = tuple(slice(0, n - v) if v >= 0 else slice(-v, n) for v, n in zip(d, labels.shape))
        b_sl = tuple(slice(v, n) if v >= 0 else slice(0, n + v) for v, n in zip(d, labels.shape))
        a, b = labels[a_sl], labels[b_sl]
        m = (a > 0) & (b > 0) & (a != b)
        if m.any():
            found.append(np.stack([np.minimum(a[m], b[m]), np.maximum(a[m], b[m])], axis=1))
    if not found:
        return np.zeros((0, 2), np.int64)
    return np.unique(np.concatenate(found), axis=0)


def _components(n: int, adj: list[set[int]]) -> list[list[int]]:
    seen, comps = [False] * n, []
    for s in range(n):
        if seen[s]:
            continue
        seen[s], stack, comp = True, [s], []
        while stack:
            v = stack.pop()
            comp.append(v)
            for w in adj[v]:
                if not seen[w]:
                    seen[w] = True
                    stack.append(w)
        comps.append(comp)
    return comps


def _dsatur(comp: list[int], adj: list[set[int]], k: int, rng: np.random.Generator, random_choice: bool,
            colour: np.ndarray) -> bool:
    """Greedy DSatur over one component; False when some vertex has no free channel."""
    left = set(comp)
    tie = {v: rng.random() for v in comp}
    while left:
        v = max(left, key=lambda u: (len({colour[w] for w in adj[u] if colour[w] >= 0}), len(adj[u]), tie[u]))
        free = [c for c in range(k) if all(colour[w] != c for w in adj[v])]
        if not free:
            return False
        colour[v] = int(rng.choice(free)) if random_choice else free[0]
        left.discard(v)
    return True


def _backtrack(comp: list[int], adj: list[set[int]], k: int, rng: np.random.Generator,
               colour: np.ndarray) -> bool | None:
    """Exhaustive search (DSatur order, random channel order); None when the budget runs out."""
    order = sorted(comp, key=lambda u: (-len(adj[u]), rng.random()))
    pos = {v: i for i, v in enumerate(order)}
    choices: list[list[int]] = [[] for _ in order]
    i, steps = 0, 0
    for v in order:
        colour[v] = -1
    while 0 <= i < len(order):
        steps += 1
        if steps > SEARCH_BUDGET:
            return None
        v = order[i]
        if colour[v] < 0:  # first visit: the channels its earlier neighbours leave free
            used = {colour[w] for w in adj[v] if pos[w] < i}
            choices[i] = [int(c) for c in rng.permutation(k) if c not in used]
        if choices[i]:
            colour[v] = choices[i].pop()
            i += 1
        else:
            colour[v] = -1
            i -= 1
            while i >= 0 and not choices[i]:
                colour[order[i]] = -1
                i -= 1
    return i == len(order)


def assign_channels(labels: np.ndarray, channels: int = 4, gap_px: float = 2.0, *,
                    rng: np.random.Generator | None = None, retries: int = 20) -> dict[int, int]:
    """Channel (0..channels-1) of every label, no two labels within ``gap_px`` on one channel.

    Parameters
    ----------
    labels
        2D or 3D instance label image.
    channels
        K, the number of mask channels (paper: 4).
    gap_px
        Minimum separation on one channel, pixel centre to pixel centre (must exceed it).
    rng
        Source of randomness: a fresh generator gives a fresh valid arrangement.
    retries
        Randomised DSatur attempts per connected group of touching masks before the exhaustive search.

    Raises
    ------
    CytogenError
        When ``channels`` cannot hold the layout (a group of masks needs more channels), or the
        search ran out of its budget.
    """
    channels = int(channels)
    if channels < 1:
        raise CytogenError(f"mask channels must be >= 1, got {channels}")
    rng = np.random.default_rng(0) if rng is None else rng
    ids = np.unique(labels[labels > 0]) if np.asarray(labels).size else np.zeros(0, np.int64)
    pairs = conflict_pairs(labels, gap_px)
    index = {int(v): i for i, v in enumerate(ids)}
    adj: list[set[int]] = [set() for _ in ids]
    for a, b in pairs:
        adj[index[int(a)]].add(index[int(b)])
        adj[index[int(b)]].add(index[int(a)])
    colour = np.full(len(ids), -1, np.int64)
    for comp in _components(len(ids), adj):
        ok = False
        for attempt in range(max(1, int(retries))):
            colour[comp] = -1
            if _dsatur(comp, adj, channels, rng, random_choice=attempt < retries - 1, colour=colour):
                ok = True
                break
        if not ok:
            found = _backtrack(comp, adj, channels, rng, colour)
            if not found:
                largest = max(len(adj[v]) for v in comp) + 1
                why = ("no valid arrangement exists" if found is False
                       else f"no arrangement found in {SEARCH_BUDGET} search steps")
                raise CytogenError(
                    f"{channels} mask channels cannot hold this layout at a gap of {gap_px:g} px: {why} for a "
                    f"group of {len(comp)} touching masks (one mask has {largest - 1} neighbours within the gap); "
                    "raise data.mask_channels.channels or lower data.mask_channels.gap_px")
    return {int(v): int(colour[i]) for i, v in enumerate(ids)}


def spread(labels: np.ndarray, assignment: dict[int, int], channels: int = 4, *,
           merged: bool = False) -> np.ndarray:
    """``(channels[+1], ...)`` float32 in {0, 1}: channel ``c`` holds the masks assigned to ``c``
    (the union of all masks last when ``merged``). Labels missing from ``assignment`` are an error."""
    labels = check_label_image(labels)
    lut_size = int(labels.max()) + 1 if labels.size else 1
    lut = np.full(lut_size, -1, np.int64)
    for lab, c in assignment.items():
        if 0 < lab < lut_size:
            lut[lab] = c
    chan = lut[labels]
    missing = (labels > 0) & (chan < 0)
    if missing.any():
        raise CytogenError(f"labels {sorted(set(labels[missing].tolist()))[:5]} have no channel")
    out = np.zeros((channels + int(merged), *labels.shape), np.float32)
    for c in range(channels):
        out[c] = chan == c
    if merged:
        out[channels] = labels > 0
    return out


@dataclass
class MaskChannels:
    """The ``data.mask_channels`` recipe section: the source is an instance label image spread
    over ``channels`` binary channels (plus the union when ``merged``); ``rearrange`` draws a new
    assignment for every training patch. Prediction uses one fixed arrangement (``seed``)."""

    channels: int = 4
    gap_px: float = 2.0
    merged: bool = False
    rearrange: bool = True
    seed: int = 0

    def __post_init__(self) -> None:
        if int(self.channels) < 1:
            raise CytogenError(f"data.mask_channels.channels must be >= 1, got {self.channels}")
        if not float(self.gap_px) >= 1:
            raise CytogenError(f"data.mask_channels.gap_px must be >= 1, got {self.gap_px}")
        self.channels, self.gap_px = int(self.channels), float(self.gap_px)
        self.merged, self.rearrange, self.seed = bool(self.merged), bool(self.rearrange), int(self.seed)

    @property
    def out_channels(self) -> int:
        return self.channels + int(self.merged)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> MaskChannels | None:
        if not d:
            return None
        unknown = set(d) - {"channels", "gap_px", "merged", "rearrange", "seed"}
        if unknown:
            raise CytogenError(f"data.mask_channels: unknown keys {sorted(unknown)}; "
                               "use channels, gap_px, merged, rearrange, seed")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    def channel_names(self) -> list[str]:
        return [f"masks_{c}" for c in range(self.channels)] + (["masks_union"] if self.merged else [])

    def encode(self, labels: np.ndarray, rng: np.random.Generator | None = None, name: str = "labels") -> np.ndarray:
        """The channel stack of ``labels`` (a random arrangement from ``rng``; the fixed one without)."""
        labels = check_label_image(labels, name)
        rng = np.random.default_rng(self.seed) if rng is None else rng
        try:
            assignment = assign_channels(labels, self.channels, self.gap_px, rng=rng)
        except CytogenError as exc:
            raise CytogenError(f"{name}: {exc}") from None
        return spread(labels, assignment, self.channels, merged=self.merged)
