"""The pieces of a bioimage.io model package that come from cytogen: processing steps, weights,
cover image and README (assembled by :mod:`cytogen.predict.bioimageio_export`).

Normalisation as the bioimage.io model spec 0.5 expresses it
-------------------------------------------------------------
cytogen normalises each source channel of a field as ``(x - offset) / scale``
(:class:`cytogen.data.normalize.Normalizer`) and brings the prediction back to target units with
the target's fitted statistics, ``y * scale + offset``. In the spec:

* ``percentile`` with ``scope: field`` is ``scale_range`` per sample and channel (reduced over the
  spatial axes) with the same percentiles. The spec computes
  ``(x - p_low) / (p_high - p_low + eps)`` with ``eps = 1e-6``; cytogen divides by
  ``p_high - p_low`` itself, which differs by a relative ``1e-6 / (p_high - p_low)`` (6e-9 for a
  spread of 175 grey values). Both take linear-interpolated percentiles (numpy's default). cytogen
  estimates the percentiles of fields over 2 million pixels per channel from 2 million random
  pixels (streamed predictions from a 4-million-pixel lattice) where the spec uses every pixel;
  and for a constant channel (no spread) cytogen divides by 1, the spec by ``eps``.
* ``zscore`` with ``scope: field`` is ``zero_mean_unit_variance`` per sample and channel
  (``(x - mean) / (std + eps)``, the same ``eps`` remark).
* ``scope: dataset`` (fixed statistics) is ``scale_linear`` along the channel axis with
  ``gain = 1 / scale`` and ``offset = -offset / scale``.
* The target's denormalisation is the postprocessing ``scale_linear`` with ``gain = scale`` and
  ``offset = offset`` of the target statistics in ``model.json``.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytogen.errors import CytogenError
from cytogen.predict.model_folder import LoadedModel

#: Weight formats of an exported package, the first being the parent of the others.
WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")

#: Papers to cite per architecture (DOI), added to cytogen's own entry.
ARCHITECTURE_CITES: dict[str, list[tuple[str, str]]] = {
    "unet": [("Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical Image "
              "Segmentation. MICCAI 2015", "10.1007/978-3-319-24574-4_28")],
    "unet_chain": [("Ronneberger O, Fischer P, Brox T. U-Net: Convolutional Networks for Biomedical "
                    "Image Segmentation. MICCAI 2015", "10.1007/978-3-319-24574-4_28")],
    "r2unet": [("Alom MZ et al. Recurrent Residual Convolutional Neural Network based on U-Net "
                "(R2U-Net) for Medical Image Segmentation. 2018", "10.48550/arXiv.1802.06955")],
    "tfill_coarse": [("Zheng C, Cham T-J, Cai J, Phung D. Bridging Global Context Interactions for "
                      "High-Fidelity Image Completion. CVPR 2022", "10.48550/arXiv.2104.00845")],
}
#: Label-free prediction, the task a cytogen translator performs.
VIRTUAL_STAINING_CITE = ("Ounkomol C, Seshamani S, Maleckar MM, Collman F, Johnson GR. Label-free "
                         "prediction of three-dimensional fluorescence images from transmitted-light "
                         "microscopy. Nature Methods 2018", "10.1038/s41592-018-0111-2")


def preprocessing(model: LoadedModel, spatial: list[str]) -> list[Any]:
    """The spec's preprocessing steps equal to cytogen's source normalisation (module docstring).

    Raises
    ------
    CytogenError
        A masks -> image model (its label-image encoding has no spec equivalent).
    """
    from bioimageio.spec.model import v0_5 as s

    if model.mask_channels is not None:
        raise CytogenError(
            f"{model.folder}: a masks -> image model spreads one instance label image over "
            f"{model.in_channels} channels before the network, which the bioimage.io spec cannot "
            "express as preprocessing; export it with --format onnx (the network on encoded channels)")
    norm = model.source_norm
    axes = [s.AxisId(a) for a in spatial]
    if norm.method == "none":
        return []
    if norm.scope == "dataset":
        offset, scale = np.asarray(norm.offset, float), np.asarray(norm.scale, float)
        return [_scale_linear(list(1.0 / scale), list(-offset / scale))]
    if norm.method == "percentile":
        lo, hi = norm.percentiles
        return [s.ScaleRangeDescr(kwargs=s.ScaleRangeKwargs(axes=axes, min_percentile=lo,
                                                            max_percentile=hi))]
    return [s.ZeroMeanUnitVarianceDescr(kwargs=s.ZeroMeanUnitVarianceKwargs(axes=axes))]


def postprocessing(model: LoadedModel) -> list[Any]:
    """``scale_linear`` with the target statistics (cytogen's denormalisation), or none."""
    norm = model.target_norm
    if norm.method == "none" or norm.offset is None:
        return []
    gain, offset = [float(v) for v in norm.scale], [float(v) for v in norm.offset]
    if all(g == 1.0 for g in gain) and all(o == 0.0 for o in offset):
        return []
    return [_scale_linear(gain, offset)]


def _scale_linear(gain: list[float], offset: list[float]) -> Any:
    from bioimageio.spec.model import v0_5 as s

    if len(gain) == 1:
        return s.ScaleLinearDescr(kwargs=s.ScaleLinearKwargs(gain=gain[0], offset=offset[0]))
    return s.ScaleLinearDescr(kwargs=s.ScaleLinearAlongAxisKwargs(axis=s.AxisId("channel"),
                                                                  gain=gain, offset=offset))


def write_weights(net: torch.nn.Module, folder: Path, formats: tuple[str, ...], example: torch.Tensor,
                  size_multiple: tuple[int, ...]) -> dict[str, Any]:
    """Write each weight format into ``folder``; returns ``{format: (file, info)}``.

    ``pytorch_state_dict``: ``torch.save`` of the state dict (tensors only, loadable with
    ``weights_only=True``); ``torchscript``: :func:`torch.jit.trace` on ``example``, checked at a
    second size (one more size multiple per axis) against the network; ``onnx``:
    :func:`cytogen.predict.onnx_backend.export_onnx` (dynamic batch and spatial axes).
    """
    out: dict[str, Any] = {}
    net = net.eval()
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    if "pytorch_state_dict" in formats:
        torch.save(state, folder / "weights.pt")
        out["pytorch_state_dict"] = (folder / "weights.pt", {})
    if "torchscript" in formats:
        out["torchscript"] = (_torchscript(net, folder / "weights_torchscript.pt", example, size_multiple), {})
    if "onnx" in formats:
        from cytogen.predict.onnx_export import export_checked, onnx_opset

        path = folder / "weights.onnx"
        export_checked(net, torch.cat([example, example]), path, size_multiple, "onnx weights",
                       "; leave onnx out of --weights")
        out["onnx"] = (path, {"opset_version": onnx_opset(path)})
    return out


def _torchscript(net: torch.nn.Module, path: Path, example: torch.Tensor,
                 size_multiple: tuple[int, ...]) -> Path:
    with torch.no_grad(), warnings.catch_warnings():
        # the size checks of the network's forward are constants in the trace (sizes that are
        # multiples of size_multiple pass them): the trace is checked at a second size below
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        try:
            traced = torch.jit.trace(net, example, check_trace=False)
        except Exception as exc:
            raise CytogenError(f"the network cannot be traced to TorchScript ({type(exc).__name__}: "
                               f"{str(exc).splitlines()[0][:200]}); leave torchscript out of --weights") from exc
        other = torch.randn(1, example.shape[1], *(s + m for s, m in zip(example.shape[2:], size_multiple)))
        want, got = net(other), traced(other)
        if got.shape != want.shape or not torch.allclose(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max())):
            raise CytogenError("the TorchScript trace does not generalise to other input sizes (its output "
                               "differs from the network at another size); leave torchscript out of --weights")
    traced.save(str(path))
    return path


def _display(a: np.ndarray) -> np.ndarray:
    """A 2D plane scaled to 0..255 between its 1st and 99.8th percentiles."""
    lo, hi = np.percentile(a, (1.0, 99.8))
    return (np.clip((a - lo) / (hi - lo if hi > lo else 1.0), 0, 1) * 255).astype(np.uint8)


def write_cover(path: Path, x: np.ndarray, y: np.ndarray) -> Path:
    """PNG ``input | prediction`` of the first channels (the middle plane of a 3D stack)."""
    from PIL import Image as PILImage

    def plane(a: np.ndarray) -> np.ndarray:
        a = np.asarray(a[0], np.float64)
        return a[a.shape[0] // 2] if a.ndim == 3 else a

    gap = np.full((plane(x).shape[0], max(2, plane(x).shape[1] // 64)), 255, np.uint8)
    PILImage.fromarray(np.concatenate([_display(plane(x)), gap, _display(plane(y))], axis=1)).save(path)
    return path


def readme(model: LoadedModel, *, name: str, description: str, test_source: str, crop: tuple[int, ...],
           pre: str, post: str, formats: tuple[str, ...], training: str) -> str:
    """The package's documentation (``README.md``)."""
    arch = model.meta["architecture"]
    pix = model.meta.get("pixel_size_um")
    src = ", ".join(model.meta.get("source_channels") or [])
    tgt = ", ".join(model.meta.get("target_channels") or [])
    mult = "x".join(str(m) for m in model.net.size_multiple)
    pixel = ("x".join(f"{p:g}" for p in pix) + " um; give images of this pixel size (the model has not "
             "seen other scales)." if pix else "not recorded in the model folder; give images at the "
             "pixel size of the training fields.")
    return f"""# {name}

{description}

Exported by cytogen {model.meta.get('cytogen_version', '?')} (`cytogen export --format bioimageio`)
from the model folder `{Path(str(model.folder)).name}` (a `cytogen train` run's model).

## Model
* Architecture: `{arch['name']}` ({arch['dims']}D), arguments `{arch.get('kwargs', {})}`;
  {model.in_channels} input channel(s) ({src}) -> {model.out_channels} output channel(s) ({tgt}).
* Input sizes: any multiple of {mult} px per spatial axis (the network's size multiple).
* Pixel size: {pixel}
* Weights: {', '.join(formats)} (torchscript and onnx converted from the PyTorch state dict).

## Normalisation
* Preprocessing: {pre}
* Postprocessing: {post}
* cytogen computes the same steps (see `cytogen.predict.bioimageio_parts`): percentiles are
  linear-interpolated; the spec adds eps = 1e-6 to the denominator, a relative change of
  1e-6 / (p_high - p_low).

## Training data
{training}

## Test tensors
`test_input.npy` is a {'x'.join(map(str, crop))} px centred crop of `{Path(test_source.partition('#')[0]).name}`; `test_output.npy` is
cytogen's own tiled prediction of that crop (one tile), so the package test proves that the
bioimage.io pipeline (preprocessing, network, postprocessing) reproduces cytogen.

## Running it
* **Fiji / deepImageJ**: Plugins > deepImageJ > Install Model (from this zip), then
  deepImageJ Run on an open image of the input channel(s); deepImageJ applies the pre- and
  postprocessing of `rdf.yaml` and tiles with the declared size step ({mult} px).
* **napari / any tool**: `bioimageio predict --inputs IMAGE.tif PKG.zip` (bioimageio.core's
  command line, `pip install bioimageio.core`) writes the prediction, which napari opens; napari
  plugins built on bioimageio.core run the package directly.
* **ilastik**: the Neural Network Workflow loads bioimage.io packages by file; it is built for
  pixel classification, so check that it shows this model's continuous output.
* **Python**: `from bioimageio.core import load_model_description, predict`.
* **cytogen**: `cytogen predict MODEL_FOLDER IMAGE.tif --out DIR` (the same model, tiled with
  blended seams at any image size).
"""


def centre_crop(shape: tuple[int, ...], size: tuple[int, ...] | None, multiple: tuple[int, ...],
                source: str) -> tuple[slice, ...]:
    """Slices of a centred crop: ``size`` (multiples of ``multiple`` that fit), or by default
    the largest multiple of ``multiple`` up to 256 px per axis."""
    if size is not None and len(size) == 1:
        size = size * len(shape)
    if size is not None and len(size) != len(shape):
        raise CytogenError(f"--crop {size}: give one size or one per spatial axis ({len(shape)})")
    sl = []
    for a, (s, m) in enumerate(zip(shape, multiple)):
        if size is not None:
            w = int(size[a])
            if w % m or w < m or w > s:
                raise CytogenError(f"--crop {size}: each size must be a multiple of the model's size "
                                   f"multiple {multiple} and fit the test field ({shape} px)")
        else:
            w = (min(256, s) // m) * m
            if w < m:
                raise CytogenError(f"{source}: the field ({shape} px) is smaller than the model's size "
                                   f"multiple {multiple}; give a larger test field")
        start = (s - w) // 2
        sl.append(slice(start, start + w))
    return tuple(sl)


def pixel_scale(model: LoadedModel) -> list[tuple[float, str | None]]:
    """Per spatial axis ``(scale, unit)``: the model's pixel size in micrometres, or (1, None)."""
    pix = model.meta.get("pixel_size_um")
    if not pix:
        return [(1.0, None)] * model.dims
    pix = list(pix)[-model.dims:] if len(pix) >= model.dims else [pix[0]] * model.dims
    return [(float(p), "micrometer") if p and math.isfinite(p) and p > 0 else (1.0, None) for p in pix]
