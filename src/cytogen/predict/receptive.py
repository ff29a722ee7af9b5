"""How far a network looks, and the tiling that follows from it and a memory budget.

A tile's output is exact where the network's receptive field lies inside the tile; near the
tile's sides the network sees its own zero padding instead of the neighbouring pixels. The
*theoretical* receptive field of a U-Net (hundreds of pixels) is a loose upper bound: the
*effective* receptive field (ERF, Luo et al. 2016) — the input pixels an output pixel actually
depends on, weighted by the gradient — is much narrower and nearly Gaussian. So a tile needs a
margin of the ERF radius, not a fraction of its size, and can be as large as memory allows.

:func:`measure_erf` takes the gradient of the central output pixel (summed over output
channels) with respect to the input, in ``eval()`` mode, on unit-variance noise (the scale of
normalised images) or a real normalised tile, and returns per axis the radius that holds
``fraction`` of the gradient's absolute mass. Why ``fraction = 0.999``: to first order, the
change of an output pixel when the input beyond the radius is replaced by the tile's zero
padding is at most ``tail x max|x|``, with ``tail = (1 - fraction) x G`` and ``G = sum |dy/dx|``
the pixel's total gradient mass; for a translator between normalised images ``G`` and ``|x|``
are of order one, so the seam error is of order 1e-3 of the output range. The margin is in
fact at least the radius rounded up to the pooling grid, and measured seam errors are far
smaller: ``tests/predict/test_receptive.py`` checks < 1e-3 of the output range on a trained
U-Net, and ``benchmarks/tiling.py`` reports max and RMS on real data.

:func:`auto_tiling` picks the largest tile whose activation memory fits a budget. Bytes per
tile pixel come from one forward pass of a small tile under ``torch.inference_mode()`` with
hooks that add up the output sizes of all leaf modules (an upper bound of the peak: inference
frees most of them; on CUDA the measured peak allocation is used instead).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from cytogen.errors import CytogenError

__all__ = ["ERF", "AutoTiling", "activation_bytes_per_pixel", "auto_tiling",
           "available_memory_bytes", "default_budget_bytes", "largest_tile", "margin_from_erf",
           "measure_erf", "theoretical_radius"]

#: Gradient mass inside the margin (see the module docstring).
ERF_FRACTION = 0.999
#: First input size of the ERF measurement per dimensionality (rounded up to size_multiple,
#: at most the theoretical receptive field) ...
ERF_INPUT = {2: (128, 128), 3: (32, 64, 64)}
#: ... doubled per axis (up to this) while the measured radius reaches the probe's side.
ERF_MAX_INPUT = {2: (1024, 1024), 3: (128, 512, 512)}
#: The budget: min(DEFAULT_BUDGET_GIB, BUDGET_FRACTION x available memory).
DEFAULT_BUDGET_GIB, BUDGET_FRACTION = 2.0, 0.25
GIB = 1024 ** 3
_GLOBAL = (nn.MultiheadAttention, nn.AdaptiveAvgPool1d, nn.AdaptiveAvgPool2d,
           nn.AdaptiveAvgPool3d, nn.AdaptiveMaxPool2d, nn.AdaptiveMaxPool3d,
           nn.InstanceNorm2d, nn.InstanceNorm3d, nn.GroupNorm, nn.LayerNorm)


@dataclass(frozen=True)
class ERF:
    """A measured effective receptive field.

    Attributes
    ----------
    radius : tuple of int
        Per spatial axis, the distance from the output pixel within which ``fraction`` of the
        gradient's absolute mass lies (the largest over the probed pixels).
    fraction : float
        The mass fraction.
    input_shape : tuple of int
        Spatial shape of the probe input.
    theoretical : tuple of int or None
        Upper bound per axis from the layers' kernels (:func:`theoretical_radius`); None where
        a layer sees the whole input (attention, global pooling, instance/group norm).
    seconds : float
        Time the measurement took.
    """

    radius: tuple[int, ...]
    fraction: float
    input_shape: tuple[int, ...]
    theoretical: tuple[int, ...] | None
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {"radius": list(self.radius), "fraction": self.fraction,
                "probe_shape": list(self.input_shape),
                "theoretical_radius": None if self.theoretical is None else list(self.theoretical),
                "seconds": round(self.seconds, 3)}


def _multiple(net: nn.Module, nd: int) -> tuple[int, ...]:
    m = getattr(net, "size_multiple", 1)
    return (int(m),) * nd if isinstance(m, (int, np.integer)) else tuple(int(v) for v in m)


def _round_up(v: int, m: int) -> int:
    return max(m, math.ceil(v / m) * m)


def _leaves(net: nn.Module) -> list[nn.Module]:
    return [m for m in net.modules() if not list(m.children()) or isinstance(m, _GLOBAL)]


def theoretical_radius(net: nn.Module, dims: int, in_channels: int | None = None
                       ) -> tuple[int, ...] | None:
    """Upper bound of the receptive-field radius per axis from the layers' kernels.

    One forward pass of a small zero input records every convolution and pooling layer in
    execution order with the input-pixel spacing of its input (image size / feature size);
    each adds ``(k - 1) * dilation * spacing`` (a transposed conv ``(ceil(k / stride) - 1) *
    spacing``) to the diameter. Summed over all layers this is the receptive field of the
    longest path (in a U-Net, through the bottleneck).

    Returns
    -------
    tuple of int or None
        Half the diameter per axis; None when a layer sees the whole input (attention, global
        pooling, instance/group/layer norm).
    """
    mult = _multiple(net, dims)
    shape = tuple(_round_up(2 * m, m) for m in mult)
    c = in_channels if in_channels is not None else int(getattr(net, "in_channels", 1))
    diam = [0.0] * dims
    unbounded = []

    def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
        if isinstance(mod, _GLOBAL):
            unbounded.append(type(mod).__name__)
            return
        if not isinstance(mod, (nn.modules.conv._ConvNd, nn.modules.pooling._MaxPoolNd,
                                nn.modules.pooling._AvgPoolNd)):
            return
        x = inputs[0]
        spacing = [s / f for s, f in zip(shape, x.shape[2:])]
        k = _per(getattr(mod, "kernel_size", 1), dims)
        d = _per(getattr(mod, "dilation", 1), dims)
        s = _per(getattr(mod, "stride", 1), dims)
        for a in range(dims):
            if isinstance(mod, nn.modules.conv._ConvTransposeNd):
                diam[a] += (math.ceil(k[a] / s[a]) - 1) * spacing[a]
            else:
                diam[a] += (k[a] - 1) * d[a] * spacing[a]

    handles = [m.register_forward_hook(hook) for m in _leaves(net)]
    try:
        with torch.inference_mode():
            net(torch.zeros(1, c, *shape, device=_device(net)))
    finally:
        for h in handles:
            h.remove()
    return None if unbounded else tuple(math.ceil(v / 2) for v in diam)


def _per(v: Any, nd: int) -> tuple[int, ...]:
    return tuple(int(x) for x in v) if isinstance(v, (tuple, list)) else (int(v),) * nd


def _device(net: nn.Module) -> torch.device:
    p = next(net.parameters(), None)
    return p.device if p is not None else torch.device("cpu")


def _radius(mass: np.ndarray, centre: int, fraction: float) -> int:
    """Smallest r with ``sum(mass[centre - r : centre + r + 1]) >= fraction * sum(mass)``."""
    total = mass.sum()
    if total <= 0:
        return 0
    n = mass.size
    for r in range(n):
        if mass[max(centre - r, 0):centre + r + 1].sum() >= fraction * total:
            return r
    return n


def measure_erf(net: nn.Module, dims: int, *, x: np.ndarray | torch.Tensor | None = None,
                shape: Sequence[int] | None = None, fraction: float = ERF_FRACTION,
                in_channels: int | None = None, seed: int = 0, samples: int = 1,
                both_phases: bool = False) -> ERF:
    """Measure the effective receptive field of ``net`` by the input gradient.

    The channel-summed value of the central output pixel is back-propagated to the input in
    ``eval()`` mode, for ``samples`` inputs at once (one batch); per axis the absolute
    gradient, summed over the samples, channels and the other axes, gives the radius that holds
    ``fraction`` of its mass around that pixel (the expected ERF, as Luo et al. average over
    inputs). With ``both_phases`` a second pixel, shifted by half the ``size_multiple`` (the
    other pooling phase), is probed too (twice the batch) and the larger radius is returned.

    The input's scale matters: a trained ReLU network can be flat around zero (all units of
    the probed pixel off, gradient 0), so the default probe is unit-variance noise, the scale
    of normalised images; a real normalised tile is better still.

    Parameters
    ----------
    net : torch.nn.Module
        A generator ``(B, C_in, *S) -> (B, C_out, *S)``; its train/eval mode is restored.
    dims : {2, 3}
        Spatial dimensionality.
    x : array, optional
        A ``(C_in, *S)`` or ``(N, C_in, *S)`` normalised input (best: real tiles); default:
        ``samples`` draws of unit Gaussian noise (seeded) of ``shape``.
    shape : sequence of int, optional
        Probe size when ``x`` is not given. Default: :data:`ERF_INPUT` (at most the theoretical
        field), rounded up to ``net.size_multiple``, and doubled per axis (up to
        :data:`ERF_MAX_INPUT`) while the radius reaches the probe's side.
    fraction : float
        Gradient mass inside the radius, in (0, 1).
    in_channels : int, optional
        Default ``net.in_channels``.
    seed : int
        Seed of the noise input.
    samples : int
        Noise inputs probed when ``x`` is not given.
    both_phases : bool
        Probe two pixel phases (twice the cost).

    Returns
    -------
    ERF

    Raises
    ------
    CytogenError
        When the probed outputs do not depend on the input at all (zero gradient).
    """
    import time

    if not 0.0 < fraction < 1.0:
        raise CytogenError(f"ERF fraction must be in (0, 1), got {fraction!r}")
    t0 = time.perf_counter()
    mult = _multiple(net, dims)
    c = in_channels if in_channels is not None else int(getattr(net, "in_channels", 1))
    theo = theoretical_radius(net, dims, c)
    if x is not None:
        xt = torch.as_tensor(np.asarray(x, dtype=np.float32))
        xt = xt[None] if xt.ndim == dims + 1 else xt
        shape_t = tuple(int(v) for v in xt.shape[2:])
        if any(v % m for v, m in zip(shape_t, mult)):
            raise CytogenError(f"ERF probe of shape {shape_t} is not a multiple of the model's "
                               f"size_multiple {mult}; crop it")
        radius = _probe(net, xt, mult, fraction, both_phases)
        return ERF(radius, float(fraction), shape_t, theo, time.perf_counter() - t0)
    base = ERF_INPUT[dims] if shape is None else tuple(shape)
    if theo is not None and shape is None:  # no need to probe beyond the theoretical field
        base = tuple(min(b, 2 * t + 1) for b, t in zip(base, theo))
    shape_t = tuple(_round_up(int(v), m) for v, m in zip(base, mult))
    gen = torch.Generator().manual_seed(seed)
    while True:
        xt = torch.randn(max(int(samples), 1), c, *shape_t, generator=gen)
        radius = _probe(net, xt, mult, fraction, both_phases)
        # the mass reached the probe's side: the field is wider than the probe, enlarge it
        # (not for layers that see the whole input: their share grows with any probe)
        wider = [a for a in range(dims) if radius[a] >= shape_t[a] // 2 - 2
                 and shape_t[a] < ERF_MAX_INPUT[dims][a]
                 and theo is not None and 2 * theo[a] + 1 > shape_t[a]]
        if not wider or shape is not None:
            return ERF(radius, float(fraction), shape_t, theo, time.perf_counter() - t0)
        shape_t = tuple(_round_up(2 * v, m) if a in wider else v
                        for a, (v, m) in enumerate(zip(shape_t, mult)))


def _probe(net: nn.Module, xt: torch.Tensor, mult: tuple[int, ...], fraction: float,
           both_phases: bool) -> tuple[int, ...]:
    """ERF radius per axis of the central output pixel(s) for the batch of inputs ``xt``."""
    dims = xt.ndim - 2
    shape_t = tuple(xt.shape[2:])
    centres = [tuple(v // 2 for v in shape_t)]
    if both_phases and max(mult) > 1:  # the other pooling phase
        centres.append(tuple(v // 2 + m // 2 for v, m in zip(shape_t, mult)))
    n = xt.shape[0]
    xb = xt.repeat(len(centres), *([1] * (xt.ndim - 1))).to(_device(net)).requires_grad_(True)
    was_training = net.training
    net.eval()
    try:
        with torch.enable_grad():
            y = net(xb)
            sel = sum(y[(slice(i * n, (i + 1) * n), slice(None), *c)].sum()
                      for i, c in enumerate(centres))
            (grad,) = torch.autograd.grad(sel, xb)
    finally:
        net.train(was_training)
    g = grad.abs().sum(dim=1).double().cpu().numpy()  # (len(centres) * n, *S)
    if not g.sum() > 0:
        raise CytogenError("the model's output does not depend on its input at the probed "
                           "pixels (zero gradient), so its receptive field cannot be measured; "
                           "give the tile and overlap explicitly (--tile, --overlap)")
    radius = [0] * dims
    for i, c in enumerate(centres):
        gi = g[i * n:(i + 1) * n].sum(axis=0)
        for a in range(dims):
            other = tuple(b for b in range(dims) if b != a)
            radius[a] = max(radius[a], _radius(gi.sum(axis=other), c[a], fraction))
    return tuple(radius)


def activation_bytes_per_pixel(net: nn.Module, dims: int, in_channels: int | None = None,
                               dtype: torch.dtype = torch.float32) -> tuple[float, str]:
    """Activation memory per tile pixel of one forward pass, and how it was found.

    On CUDA: the peak allocated memory of a forward pass of a 4 x ``size_multiple`` tile under
    ``inference_mode`` minus what was allocated before. Elsewhere: the summed output sizes of all
    leaf modules of that pass (plus input), an upper bound of the peak, since inference frees
    intermediate outputs as soon as they are used.

    Returns
    -------
    (float, str)
        Bytes per pixel and the method (``"cuda peak"`` or ``"sum of module outputs"``).
    """
    mult = _multiple(net, dims)
    shape = tuple(max(4 * m, 32 if dims == 2 else 8) for m in mult)
    shape = tuple(_round_up(s, m) for s, m in zip(shape, mult))
    c = in_channels if in_channels is not None else int(getattr(net, "in_channels", 1))
    dev = _device(net)
    x = torch.zeros(1, c, *shape, device=dev, dtype=dtype)
    n_px = math.prod(shape)
    if dev.type == "cuda":
        torch.cuda.synchronize(dev)
        before = torch.cuda.memory_allocated(dev)
        torch.cuda.reset_peak_memory_stats(dev)
        with torch.inference_mode():
            net(x)
        torch.cuda.synchronize(dev)
        return (torch.cuda.max_memory_allocated(dev) - before) / n_px, "cuda peak"
    total = [x.numel() * x.element_size()]

    def hook(mod: nn.Module, inputs: tuple, output: Any) -> None:
        outs = output if isinstance(output, (tuple, list)) else (output,)
        total[0] += sum(o.numel() * o.element_size() for o in outs if isinstance(o, torch.Tensor))

    handles = [m.register_forward_hook(hook) for m in _leaves(net)]
    try:
        with torch.inference_mode():
            net(x)
    finally:
        for h in handles:
            h.remove()
    return total[0] / n_px, "sum of module outputs"


def available_memory_bytes(device: torch.device | str = "cpu") -> int:
    """Free memory of ``device``: ``torch.cuda.mem_get_info`` on CUDA, else ``MemAvailable`` of
    ``/proc/meminfo`` (else the physical memory from ``os.sysconf``)."""
    device = torch.device(device)
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    try:
        with open("/proc/meminfo") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return int(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))


def default_budget_bytes(device: torch.device | str = "cpu") -> int:
    """``min(2 GiB, 0.25 x available memory)`` of ``device``."""
    return int(min(DEFAULT_BUDGET_GIB * GIB, BUDGET_FRACTION * available_memory_bytes(device)))


@dataclass(frozen=True)
class AutoTiling:
    """A tiling chosen from the ERF and a memory budget (see :func:`auto_tiling`).

    Attributes
    ----------
    tile, margin, overlap : tuple of int
        Pixels per axis; ``overlap = 2 * margin``, ``2 x`` the ERF radius rounded up to the
        ``size_multiple`` (:func:`margin_from_erf`).
    batch_size : int
        Tiles per call that fit the budget (at least 1).
    budget_bytes : int
        The memory budget.
    bytes_per_pixel : float
        Estimated activation memory per tile pixel, and ``memory_method`` how.
    erf : ERF
        The measured receptive field.
    """

    tile: tuple[int, ...]
    margin: tuple[int, ...]
    overlap: tuple[int, ...]
    batch_size: int
    budget_bytes: int
    bytes_per_pixel: float
    memory_method: str
    erf: ERF
    notes: tuple[str, ...] = field(default_factory=tuple)
    size_multiple: tuple[int, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready record."""
        return {"tile": list(self.tile), "margin": list(self.margin),
                "overlap_px": list(self.overlap), "size_multiple": list(self.size_multiple),
                "batch_size": self.batch_size,
                "memory_budget_gib": round(self.budget_bytes / GIB, 3),
                "memory_budget_bytes": int(self.budget_bytes),
                "bytes_per_pixel": round(self.bytes_per_pixel, 1),
                "memory_method": self.memory_method, "erf": self.erf.to_dict()}


def margin_from_erf(erf: ERF, mult: Sequence[int]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Margin and overlap per axis from the ERF radius.

    The overlap is ``2 x radius`` rounded up to the axis's ``size_multiple``, and the margin
    half of it (so at least the radius): the tile stride is then a multiple of the network's
    pooling factor, so every tile sees the same pooling grid as the whole image (a U-Net is
    shift-equivariant only for such shifts), and each output pixel comes from the tile in which
    it lies farthest from the side (the zero-weighted margins meet in the overlap's middle).
    """
    overlap = tuple(_round_up(2 * int(r), m) if m > 1 else 2 * int(r)
                    for r, m in zip(erf.radius, mult))
    return tuple(o // 2 for o in overlap), overlap


def auto_tiling(net: nn.Module, dims: int, *, budget_bytes: int | None = None,
                image_shape: Sequence[int] | None = None, erf: ERF | None = None,
                bytes_per_pixel: tuple[float, str] | None = None,
                max_batch: int = 8) -> AutoTiling:
    """The largest tile that fits the memory budget, with an ERF margin.

    Starting from the image size (or 4096 per in-plane axis, 256 in Z, without an image),
    rounded up to ``net.size_multiple``, the largest axis is shrunk by one multiple at a time
    until one tile's activations (``bytes_per_pixel x tile pixels``) fit ``budget_bytes``, but
    not below ``2 x overlap + multiple``. The batch is as many such tiles as fit (at most
    ``max_batch``).

    Parameters
    ----------
    net : torch.nn.Module
        The generator (``size_multiple`` and ``in_channels`` are read from it).
    dims : {2, 3}
        Spatial dimensionality.
    budget_bytes : int, optional
        Default :func:`default_budget_bytes` of the net's device.
    image_shape : sequence of int, optional
        Spatial shape of the image(s) to predict; caps the tile.
    erf, bytes_per_pixel : optional
        Precomputed :func:`measure_erf` and :func:`activation_bytes_per_pixel` results.
    max_batch : int
        Upper limit of the batch size.

    Returns
    -------
    AutoTiling
    """
    mult = _multiple(net, dims)
    if budget_bytes is None:
        budget_bytes = default_budget_bytes(_device(net))
    if budget_bytes <= 0:
        raise CytogenError(f"memory budget must be positive, got {budget_bytes} bytes")
    erf = erf if erf is not None else measure_erf(net, dims)
    bpp, method = bytes_per_pixel if bytes_per_pixel is not None else \
        activation_bytes_per_pixel(net, dims)
    margin, overlap = margin_from_erf(erf, mult)
    cap = tuple(image_shape) if image_shape is not None else \
        ((256, 4096, 4096) if dims == 3 else (4096, 4096))
    tile, notes = largest_tile(cap, mult, overlap, bpp, budget_bytes)
    if erf.theoretical is None:
        notes += (f"the model has layers that see the whole tile (attention, global pooling or "
                  f"instance/group norm), so its output depends on the tile beyond any margin; "
                  f"the margin {margin} is the ERF radius within a {erf.input_shape} probe",)
    batch = int(max(1, min(max_batch, budget_bytes // max(bpp * math.prod(tile), 1))))
    return AutoTiling(tile, margin, overlap, batch, int(budget_bytes), float(bpp), method,
                      erf, notes, tuple(mult))


def largest_tile(cap: Sequence[int], mult: Sequence[int], overlap: Sequence[int],
                 bytes_per_pixel: float, budget_bytes: float
                 ) -> tuple[tuple[int, ...], tuple[str, ...]]:
    """The largest tile (multiples of ``mult``, at most ``cap`` rounded up) within the budget.

    From ``cap`` the largest axis is shrunk by one multiple at a time until
    ``bytes_per_pixel x tile pixels <= budget_bytes``, but no axis below
    ``overlap + multiple``; returns the tile and a note when even that is over the budget.
    """
    tile = [_round_up(int(s), m) for s, m in zip(cap, mult)]
    floor = [min(_round_up(o + m, m), t) for o, m, t in zip(overlap, mult, tile)]
    notes = []
    while bytes_per_pixel * math.prod(tile) > budget_bytes:
        shrinkable = [a for a in range(len(tile)) if tile[a] - mult[a] >= floor[a]]
        if not shrinkable:
            notes.append(f"the smallest tile {tuple(tile)} around the overlap {tuple(overlap)} "
                         f"needs {bytes_per_pixel * math.prod(tile) / GIB:.2f} GiB, over the "
                         f"budget {budget_bytes / GIB:.2f} GiB; using it anyway")
            break
        a = max(shrinkable, key=lambda b: (tile[b], b))
        tile[a] -= mult[a]
    return tuple(tile), tuple(notes)
