"""A fast tile function for prediction: eval mode, BatchNorm folded, the faster layout,
autocast, optional compile."""

from __future__ import annotations

from typing import Callable

import torch

from cytogen.runtime.fold import fold_batchnorm
from cytogen.runtime.layout import choose_layout
from cytogen.runtime.settings import RuntimeSettings


def inference_fn(net: torch.nn.Module, dims: int, settings: RuntimeSettings
                 ) -> Callable[[torch.Tensor], torch.Tensor]:
    """Wrap ``net`` for batched inference under ``settings``.

    Parameters
    ----------
    net : torch.nn.Module
        The generator; it is put in eval mode. On the fast path (``settings.fast``) the tile
        function runs a copy with BatchNorm folded into the convolutions
        (:func:`~cytogen.runtime.fold.fold_batchnorm`), in the layout
        :func:`~cytogen.runtime.layout.choose_layout` finds faster on this machine (which may
        set ``settings.channels_last`` to False, recorded in ``settings.probe``); otherwise
        ``net`` itself, converted in place when channels-last is on.
    dims : {2, 3}
        Spatial dimensionality (chooses ``channels_last`` or ``channels_last_3d``).
    settings : RuntimeSettings
        From :func:`~cytogen.runtime.resolve_runtime`.

    Returns
    -------
    callable
        ``fn(x) -> y`` mapping a float32 ``(B, C, *tile)`` tensor to a float32 prediction.
        With ``settings.compile`` the graph is compiled for static shapes, so every new batch
        size compiles once more: give it equal batches, e.g. with
        ``predict_tiled(..., pad_batches=True)``, which pads short batches to the batch size
        in use (after an out-of-memory back-off, the smaller one).
    """
    net.eval()
    if settings.fast:
        net, folded = fold_batchnorm(net)
        settings.probe["batchnorm_folded"] = folded
        if next(net.parameters(), torch.empty(0)).device.type == "cpu":
            choose_layout(settings, net, dims)
    fmt = settings.memory_format(dims)
    net.to(memory_format=fmt if fmt is not None else torch.contiguous_format)
    model: Callable[[torch.Tensor], torch.Tensor] = net
    if settings.compile:
        model = torch.compile(net, dynamic=False)
    dtype = settings.autocast_dtype
    device_type = next(net.parameters()).device.type

    def fn(x: torch.Tensor) -> torch.Tensor:
        if fmt is not None:
            x = x.contiguous(memory_format=fmt)
        with torch.autocast(device_type, dtype=dtype or torch.bfloat16, enabled=dtype is not None):
            y = model(x)
        return y.float()

    return fn
