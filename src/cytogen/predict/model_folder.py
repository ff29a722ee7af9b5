"""A trained model as a folder: ``weights.safetensors`` + ``model.json``.

``model.json`` holds everything needed to rebuild and apply the generator: architecture name
and arguments, normalisation parameters of source and target, channel names, pixel size,
patch size, the training recipe and the cytogen version. No pickles are ever written or read.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cytogen import __version__
from cytogen.data.normalize import Normalizer
from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_dir
from cytogen.models import build_model, list_models

FORMAT = "cytogen-model"
FORMAT_VERSION = 1


@dataclass
class LoadedModel:
    """A generator ready for prediction with its metadata (``folder``: where it was loaded from)."""

    net: torch.nn.Module
    meta: dict[str, Any]
    source_norm: Normalizer
    target_norm: Normalizer
    folder: Path | None = None

    @property
    def dims(self) -> int:
        return int(self.meta["architecture"]["dims"])

    @property
    def in_channels(self) -> int:
        return int(self.meta["architecture"]["in_channels"])

    @property
    def out_channels(self) -> int:
        return int(self.meta["architecture"]["out_channels"])


def save_model_folder(folder: str | Path, net: torch.nn.Module, *, architecture: dict[str, Any],
                      source_norm: Normalizer, target_norm: Normalizer,
                      source_channels: list[str], target_channels: list[str],
                      pixel_size_um: list[float] | None, patch_size: list[int],
                      recipe: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the model folder atomically (built in a temporary folder, then swapped in by
    :func:`cytogen.io.atomic.atomic_dir`, so a crash leaves the previous folder or none)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "cytogen_version": __version__,
        "architecture": architecture,
        "normalization": {"source": source_norm.to_dict(), "target": target_norm.to_dict()},
        "source_channels": source_channels, "target_channels": target_channels,
        "pixel_size_um": pixel_size_um, "patch_size": patch_size,
        "recipe": recipe or {}, **(extra or {}),
    }
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_dir(folder) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / "weights.safetensors"))
        (tmp / "model.json").write_text(json.dumps(meta, indent=2))
    return folder


def load_model_folder(folder: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a generator from a model folder; refuses unknown formats and architectures."""
    folder = Path(folder)
    meta_path, weights_path = folder / "model.json", folder / "weights.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise CytogenError(
            f"{folder}: not a cytogen model folder (needs model.json and weights.safetensors); "
            "pass RUN/model from 'cytogen train'"
        )
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CytogenError(f"{meta_path}: not valid JSON ({exc}); the model folder is damaged") from exc
    if meta.get("format") != FORMAT or meta.get("format_version") != FORMAT_VERSION:
        raise CytogenError(
            f"{meta_path}: model format {meta.get('format')!r} v{meta.get('format_version')} is not "
            f"{FORMAT!r} v{FORMAT_VERSION}; re-export it with this cytogen version"
        )
    arch = meta.get("architecture", {})
    if arch.get("name") not in list_models():
        raise CytogenError(
            f"{meta_path}: unknown architecture {arch.get('name')!r}; known: {list_models()}"
        )
    net = build_model(arch["name"], in_channels=arch["in_channels"], out_channels=arch["out_channels"],
                      dims=arch["dims"], **arch.get("kwargs", {}))
    try:
        state = load_file(str(weights_path))
        net.load_state_dict(state)
    except Exception as exc:  # safetensors raises several types for damaged files
        raise CytogenError(f"{weights_path}: weights cannot be loaded ({exc}); the model folder is damaged") from exc
    net.to(device).eval()
    norm = meta["normalization"]
    return LoadedModel(net, meta, Normalizer.from_dict(norm["source"]),
                       Normalizer.from_dict(norm["target"]), folder)
