"""Choose the memory layout of prediction (NCHW or channels-last) by timing the model here.

channels-last is what oneDNN and cuDNN are tuned for, but on CPUs the gain depends on the
machine, the model and the tile (measured on one AVX2 CPU: a U-Net's inference 1.15x faster
channels-last on 128x128 tiles, 1.4-1.5x from 256x256 up; on another CPU of the same kind it was
13 % slower). So on a CPU the prediction fast path times the network both ways
(:func:`cytogen.runtime.probe.layout_probe`, about a second) and keeps channels-last only where
it is at least ``CHANNELS_LAST_MIN_SPEEDUP`` times faster. The two layouts agree to float32
rounding (1e-5 relative, ``tests/runtime/test_numerics.py``). GPUs keep channels-last (what
cuDNN's tensor-core kernels want). Training is not probed: a measured choice can flip between
runs, and runs and resumes must stay bit-identical (see
:func:`cytogen.workflows.train_support.speed_up_task`). The decision and its figures go into
``settings.probe["layout_predict"]`` (hence ``runtime.json``) and one line into ``notes``.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch

from cytogen.runtime.probe import CHANNELS_LAST_MIN_SPEEDUP, layout_probe
from cytogen.runtime.settings import RuntimeSettings

#: Default spatial size of the probe batch per axis: 2D (Y, X) and 3D (Z, Y, X). The ratio
#: depends on the size (one AVX2 CPU: 1.15x at 128x128, 1.4-1.5x from 256x256 up), so prediction
#: probes one 256x256 tile, the small end of the tiles auto tiling picks.
PROBE_SHAPE = {2: (256, 256), 3: (16, 64, 64)}


def probe_example(net: torch.nn.Module, dims: int, batch: int = 1,
                  spatial: Sequence[int] | None = None) -> torch.Tensor | None:
    """A random input batch the network accepts (None when it does not say its input channels).

    The spatial size is ``spatial`` (default :data:`PROBE_SHAPE`) rounded up to the network's
    ``size_multiple``.
    """
    channels = getattr(net, "in_channels", None)
    if not isinstance(channels, int):
        return None
    spatial = tuple(spatial or PROBE_SHAPE[dims])
    mult = getattr(net, "size_multiple", 1)
    mult = tuple(mult) if isinstance(mult, (tuple, list)) else (int(mult),) * dims
    shape = tuple(-(-int(s) // int(m)) * int(m) for s, m in zip(spatial, mult))
    gen = torch.Generator().manual_seed(0)
    return torch.randn((batch, channels, *shape), generator=gen)


def choose_layout(settings: RuntimeSettings, net: torch.nn.Module, dims: int, *,
                  example: torch.Tensor | None = None,
                  probe: Callable[..., dict[str, float]] | None = None) -> bool:
    """Decide ``settings.channels_last`` for ``net`` (in place) and return it.

    Only probes on the CPU fast path with channels-last still on; the first decision is kept
    (so calling again costs nothing). Networks whose input the probe cannot build keep
    channels-last, with a note saying it was not measured.

    Parameters
    ----------
    settings : RuntimeSettings
        From :func:`~cytogen.runtime.resolve_runtime`; updated in place.
    net : torch.nn.Module
        The network as it will run, in eval mode (not modified).
    dims : {2, 3}
        Spatial dimensionality.
    example : torch.Tensor, optional
        The probe batch (default :func:`probe_example`: one :data:`PROBE_SHAPE` tile).
    probe : callable, optional
        Replaces :func:`~cytogen.runtime.probe.layout_probe` (tests).
    """
    key = "layout_predict"
    if not settings.channels_last or settings.device != "cpu" or not settings.fast:
        return settings.channels_last
    if key in settings.probe:
        settings.channels_last = bool(settings.probe[key]["channels_last"])
        return settings.channels_last
    if example is None:
        example = probe_example(net, dims)
    if example is None:
        settings.probe[key] = {"channels_last": True, "measured": False}
        settings.notes.append("layout (prediction): channels-last "
                              "(not measured: the network does not name its input channels)")
        return True
    figures = dict((probe or layout_probe)(net, example, autocast=settings.autocast_dtype))
    speedup = float(figures["channels_last_speedup"])
    chosen = speedup >= CHANNELS_LAST_MIN_SPEEDUP
    settings.probe[key] = {**figures, "channels_last": chosen, "measured": True}
    settings.channels_last = chosen
    settings.notes.append(f"layout (prediction): {'channels-last' if chosen else 'NCHW'} (channels-last "
                          f"{speedup:.2f}x NCHW here; kept only at >= {CHANNELS_LAST_MIN_SPEEDUP}x)")
    return chosen
