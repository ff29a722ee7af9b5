"""LPIPS (Zhang et al. 2018) in plain torch, from weight files the user supplies.

LPIPS compares two images through an ImageNet network: at five layers (AlexNet relu1..relu5, or
VGG16 relu1_2, relu2_2, relu3_3, relu4_3, relu5_3) the activations of each image are divided by
their norm over channels at each position, the squared differences are weighted per channel by a
learned 1x1 linear layer, averaged over positions and summed over layers. 0 for identical images;
larger = less alike as people judge (2AFC-calibrated only with the learned weights).

Two files, neither shipped nor fetched by cytogen (it never downloads weights and never uses random
ones):

- ``backbone``: torchvision's ImageNet weights, ``alexnet-owt-7be5be79.pth`` (``net="alex"``) or
  ``vgg16-397923af.pth`` (``net="vgg"``), as torchvision's model zoo serves them (the files that
  ``torchvision.models.alexnet(weights="IMAGENET1K_V1")`` caches in ``~/.cache/torch/hub/checkpoints``);
  only the ``features.*`` entries are used.
- ``lin``: the learned LPIPS weights, ``weights/v0.1/alex.pth`` or ``vgg.pth`` inside the ``lpips``
  wheel on PyPI (keys ``lin0.model.1.weight`` ... ``lin4.model.1.weight``, shapes ``(1, C, 1, 1)``).
  Without it the paper's *baseline* is computed (every channel weighted 1: the sum over channels),
  reported as ``lpips_baseline`` -- not LPIPS, and not on LPIPS' scale.

Preprocessing (:meth:`LPIPS.distance`): each 2D image scaled to its own 1st-99.8th percentiles,
clipped to [0, 1], mapped to [-1, 1], grey copied to R, G, B, then lpips' ScalingLayer
(``(x - shift) / scale`` with ImageNet-derived constants); no resizing (both images one shape,
at least 32 x 32).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from cytogen.errors import CytogenError

__all__ = ["LPIPS", "NETS"]

# (torchvision features layout as (kind, out_channels, kernel, stride, padding), taps after these indices)
_ALEX = [("conv", 64, 11, 4, 2), ("relu",), ("pool",), ("conv", 192, 5, 1, 2), ("relu",), ("pool",),
         ("conv", 384, 3, 1, 1), ("relu",), ("conv", 256, 3, 1, 1), ("relu",), ("conv", 256, 3, 1, 1), ("relu",)]
_VGG_CFG = [64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512]
NETS = {"alex": (1, 4, 7, 9, 11), "vgg": (3, 8, 15, 22, 29)}
_SHIFT = (-0.030, -0.088, -0.188)
_SCALE = (0.458, 0.448, 0.450)
_WHERE = ("torchvision's ImageNet weights file (alexnet-owt-7be5be79.pth for net='alex', vgg16-397923af.pth "
          "for net='vgg', from torchvision's model zoo, e.g. ~/.cache/torch/hub/checkpoints after "
          "torchvision.models.alexnet(weights='IMAGENET1K_V1')); cytogen never downloads weights nor uses random ones")
MIN_SIZE = 32


def _vgg_layout() -> list[tuple]:
    out: list[tuple] = []
    for v in _VGG_CFG:
        out += [("pool",)] if v == "M" else [("conv", v, 3, 1, 1), ("relu",)]
    return out


def _features(net: str) -> nn.Sequential:
    layers, c_in = [], 3
    for spec in (_ALEX if net == "alex" else _vgg_layout()):
        if spec[0] == "conv":
            _, c_out, k, s, p = spec
            layers.append(nn.Conv2d(c_in, c_out, k, stride=s, padding=p))
            c_in = c_out
        elif spec[0] == "relu":
            layers.append(nn.ReLU())
        else:
            layers.append(nn.MaxPool2d(3, 2) if net == "alex" else nn.MaxPool2d(2, 2))
    return nn.Sequential(*layers)


def _load(path: str | Path, what: str) -> dict[str, torch.Tensor]:
    path = Path(path)
    if not path.is_file():
        raise CytogenError(f"LPIPS {what} file {path} does not exist; LPIPS needs {_WHERE}"
                           if what == "backbone" else
                           f"LPIPS lin file {path} does not exist; it is weights/v0.1/<net>.pth inside the lpips "
                           "wheel on PyPI (pip download lpips --no-deps, unzip); cytogen never downloads weights")
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:
        raise CytogenError(f"LPIPS {what} file {path} is not a torch state dict: {exc}") from None
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CytogenError(f"LPIPS {what} file {path} is not a state dict of tensors")
    return sd


def _check_keys(path: str | Path, got: dict[str, torch.Tensor], want: dict[str, torch.Tensor], what: str) -> None:
    missing = [k for k in want if k not in got]
    wrong = [f"{k} {tuple(got[k].shape)} (expected {tuple(want[k].shape)})" for k in want
             if k in got and got[k].shape != want[k].shape]
    if missing or wrong:
        msg = f"LPIPS {what} file {path} does not fit this network"
        if missing:
            msg += f"; missing keys: {', '.join(missing[:8])}{' ...' if len(missing) > 8 else ''}"
        if wrong:
            msg += f"; wrong shapes: {', '.join(wrong[:4])}{' ...' if len(wrong) > 4 else ''}"
        raise CytogenError(msg + (f" (it must be {_WHERE})" if what == "backbone" else
                                  " (it must be the lpips package's weights/v0.1/<net>.pth of the same net)"))


class LPIPS:
    """LPIPS distance between two 2D images, from a torchvision backbone file and an lpips lin file.

    Parameters
    ----------
    backbone
        torchvision's ``alexnet-owt-7be5be79.pth`` or ``vgg16-397923af.pth`` (``features.*`` keys).
    lin
        lpips' ``weights/v0.1/alex.pth`` / ``vgg.pth``; ``None`` computes the baseline (equal
        channel weights), named ``lpips_baseline`` in :attr:`name`.
    net
        ``"alex"`` or ``"vgg"``.
    """

    def __init__(self, backbone: str | Path, lin: str | Path | None = None, net: str = "alex") -> None:
        if net not in NETS:
            raise CytogenError(f"unknown LPIPS net {net!r}: use one of {', '.join(NETS)}")
        self.net, self.taps = net, NETS[net]
        self.features = _features(net).eval()
        want = {f"features.{k}": v for k, v in self.features.state_dict().items()}
        sd = _load(backbone, "backbone")
        _check_keys(backbone, sd, want, "backbone")
        self.features.load_state_dict({k[len("features."):]: sd[k] for k in want})
        chans = [self.features[i - 1].out_channels for i in self.taps]
        self.lins: list[torch.Tensor] | None = None
        if lin is not None:
            want_lin = {f"lin{k}.model.1.weight": torch.empty(1, c, 1, 1) for k, c in enumerate(chans)}
            lsd = _load(lin, "lin")
            _check_keys(lin, lsd, want_lin, "lin")
            self.lins = [lsd[k].float() for k in want_lin]
        self.name = "lpips" if self.lins is not None else "lpips_baseline"
        self.shift = torch.tensor(_SHIFT).view(1, 3, 1, 1)
        self.scale = torch.tensor(_SCALE).view(1, 3, 1, 1)

    def _input(self, image: np.ndarray, which: str) -> torch.Tensor:
        img = np.asarray(image, np.float64)
        if img.ndim != 2 or min(img.shape) < MIN_SIZE:
            raise CytogenError(f"LPIPS needs 2D images (Y, X) of at least {MIN_SIZE} px a side; {which} has shape {img.shape}")
        if not np.isfinite(img).all():
            raise CytogenError(f"LPIPS: {which} has NaN or infinite values")
        lo, hi = np.percentile(img, [1.0, 99.8])
        x = np.clip((img - lo) / (hi - lo), 0.0, 1.0) if hi > lo else np.zeros_like(img)
        t = torch.from_numpy((2.0 * x - 1.0).astype(np.float32))[None, None].expand(1, 3, -1, -1)
        return (t - self.shift) / self.scale

    def _taps(self, x: torch.Tensor) -> list[torch.Tensor]:
        out = []
        for i, layer in enumerate(self.features[: self.taps[-1] + 1]):
            x = layer(x)
            if i in self.taps:
                out.append(x / (x.pow(2).sum(1, keepdim=True).sqrt() + 1e-10))
        return out

    def distance(self, a: np.ndarray, b: np.ndarray) -> float:
        """LPIPS (or the baseline, see :attr:`name`) between two 2D images of one shape."""
        a, b = np.asarray(a), np.asarray(b)
        if a.shape != b.shape:
            raise CytogenError(f"LPIPS compares images of one shape, got {a.shape} and {b.shape}")
        with torch.inference_mode():
            total = 0.0
            for k, (fa, fb) in enumerate(zip(self._taps(self._input(a, "a")), self._taps(self._input(b, "b")))):
                d = (fa - fb) ** 2
                d = (d * self.lins[k]).sum(1) if self.lins is not None else d.sum(1)
                total += float(d.mean())
        return total
