"""``cytogen export --format onnx``: a model folder's generator as one ONNX file.

The network is exported by :func:`cytogen.predict.onnx_backend.export_onnx` (the torch.export
based exporter; dynamic batch and spatial axes, spatial sizes multiples of the network's
``size_multiple``), then checked: ONNX Runtime runs it at a second size and batch (one more size
multiple per axis, batch 1) and must agree with PyTorch within :data:`PARITY` of the PyTorch
output's range, otherwise nothing is written. The file carries cytogen's metadata as ONNX
``metadata_props`` (``cytogen_model_json``: architecture, normalisation, channel names, pixel
size, size multiple), because normalisation happens outside the graph: the graph maps
*normalised* source channels to *normalised* target channels (``cytogen predict --backend
onnxruntime`` applies the same normalisation and tiling around it).
"""

from __future__ import annotations

import io
import json
from contextlib import redirect_stderr
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_file
from cytogen.predict.model_folder import LoadedModel

#: Largest accepted ``max|ort - torch| / (max - min of torch)`` of the export check.
PARITY = 1e-4


def _example_shape(model: LoadedModel) -> tuple[int, ...]:
    """Spatial size of the export example: up to 64 px in size multiples, never the training
    patch size (a network may take a shortcut at its reference size, e.g. ``tfill_coarse``
    skips resizing its position embedding, and the exporter would keep only that branch)."""
    mult = tuple(int(m) for m in model.net.size_multiple)
    patch = [int(p) for p in list(model.meta.get("patch_size") or [0] * model.dims)[-model.dims:]]
    shape = tuple(max(m, (min(64, p or 64) // m) * m) for p, m in zip(patch, mult))
    return tuple(s + m for s, m in zip(shape, mult)) if list(shape) == patch else shape


def check_onnx(net: torch.nn.Module, path: str | Path, shape: tuple[int, ...], channels: int,
               what: str) -> float:
    """:func:`onnx_parity` at ``shape``, refusing an export that fails there or disagrees."""
    try:
        err = onnx_parity(net, path, shape, channels)
    except CytogenError:
        raise
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidArgument types
        raise CytogenError(f"{what}: the ONNX export does not run at {shape} px, another size than the "
                           f"export's ({' '.join(str(exc).split())[:200]}); the network's graph depends on "
                           "the input size in a way the exporter fixed") from exc
    if not err <= PARITY:
        raise CytogenError(f"{what}: the ONNX export differs from PyTorch by {err:.2e} of the output range "
                           f"at {shape} px (above {PARITY}); nothing was written")
    return err


def onnx_parity(net: torch.nn.Module, path: str | Path, shape: tuple[int, ...], channels: int,
                seed: int = 0) -> float:
    """``max|ort - torch| / range(torch)`` of ``net`` and the ONNX file on a random input."""
    from cytogen.predict.onnx_backend import ort_session

    x = torch.from_numpy(np.random.default_rng(seed).standard_normal((1, channels, *shape)).astype(np.float32))
    with torch.no_grad():
        ref = net.eval()(x).numpy()
    got = ort_session(Path(path).read_bytes(), 1).run(None, {"x": x.numpy()})[0]
    if got.shape != ref.shape:
        raise CytogenError(f"ONNX output shape {got.shape} differs from PyTorch's {ref.shape}")
    span = float(ref.max() - ref.min())
    return float(np.abs(got - ref).max()) / (span if span > 0 else 1.0)


def onnx_opset(path: str | Path) -> int:
    """The default-domain opset an ONNX file was written with."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return int(next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx")))


def export_checked(net: torch.nn.Module, example: torch.Tensor, path: str | Path,
                   size_multiple: tuple[int, ...], what: str, hint: str = "") -> float:
    """Export ``net`` on ``example`` to ``path`` (dynamic batch and spatial axes), then
    :func:`check_onnx` it one size multiple larger per axis; returns the parity there.

    Raises
    ------
    CytogenError
        ``"<what>: the network does not export to ONNX (<the exporter's reason>)<hint>"``, or
        the refusals of :func:`check_onnx`.
    """
    from cytogen.predict.onnx_backend import export_onnx

    try:
        with redirect_stderr(io.StringIO()):  # a failing export prints its graph: the reason is raised
            export_onnx(net, example, path, size_multiple)
    except CytogenError:
        raise
    except Exception as exc:  # the exporter raises many types for unsupported operators
        raise CytogenError(f"{what}: the network does not export to ONNX "
                           f"({type(exc).__name__}: {' '.join(str(exc).split())[:300]}){hint}") from exc
    other = tuple(int(n) + int(m) for n, m in zip(example.shape[2:], size_multiple))
    return check_onnx(net, path, other, int(example.shape[1]), what)


def write_onnx(model: LoadedModel, out: str | Path) -> dict[str, Any]:
    """Export ``model.net`` to ``out`` (``.onnx``, atomically) and check it (module docstring).

    Raises
    ------
    CytogenError
        A wrong suffix, a network whose operators do not export (the exporter's reason is
        named), or an export that ONNX Runtime does not run within :data:`PARITY` of PyTorch.
    """
    import onnx

    out = Path(out)
    if out.suffix.lower() != ".onnx":
        raise CytogenError(f"{out}: give --out NAME.onnx")
    net = model.net.eval().to(memory_format=torch.contiguous_format)
    mult = tuple(int(m) for m in net.size_multiple)
    shape = _example_shape(model)
    example = torch.randn(2, model.in_channels, *shape)
    arch = model.meta["architecture"]["name"]
    out.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(out) as tmp:
        err = export_checked(net, example, tmp, mult, f"{model.folder} ({arch})")
        graph = onnx.load(str(tmp))
        meta = {"architecture": model.meta["architecture"], "normalization": model.meta["normalization"],
                "source_channels": model.meta.get("source_channels"),
                "target_channels": model.meta.get("target_channels"),
                "pixel_size_um": model.meta.get("pixel_size_um"), "size_multiple": list(mult),
                "mask_channels": model.meta.get("mask_channels"),
                "cytogen_version": model.meta.get("cytogen_version")}
        onnx.helper.set_model_props(graph, {"cytogen_model_json": json.dumps(meta)})
        onnx.save(graph, str(tmp))
        opset = onnx_opset(tmp)
    other = tuple(s + m for s, m in zip(shape, mult))
    return {"out": str(out), "format": "onnx", "architecture": arch, "opset": opset,
            "example_shape": list(shape), "check_shape": list(other), "parity_rel_range": err,
            "dynamic_axes": ["batch", *[f"spatial (multiples of {m})" for m in mult]],
            "bytes": out.stat().st_size}
