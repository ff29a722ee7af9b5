"""A trained model as a folder: ``weights.safetensors`` + ``model.json``.

``model.json`` holds everything needed to rebuild and apply the generator: architecture name
and arguments, normalisation parameters of source and target, channel names, pixel size,
patch size, the training recipe and the cytogen version. No pickles are ever written or read.

Statistical Cell models (``"kind": "statcell_reference"`` / ``"statcell_target"``) use the same
folder format with their own metadata (structures, channels, crop size, beta, KL per latent
dimension): :func:`save_statcell_folder` / :func:`load_statcell_folder`.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from cytogen import __version__
from cytogen.data.masks import MaskChannels
from cytogen.data.normalize import Normalizer
from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_dir
from cytogen.models import build_model, list_models
from cytogen.models.vae import VAES, build_vae

FORMAT = "cytogen-model"
#: ``kind`` of the unsupervised cell segmenters' model folders.
CELLSEG_KIND = "cellseg"
#: ``kind`` of the supervised nucleus segmenters' model folders (task ``segment_nuclei``).
NUCLEUS_SEG_KIND = "nucleus_segmenter"
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

    @property
    def mask_channels(self) -> MaskChannels | None:
        """How a label-image source is spread over the input channels (None: an image source)."""
        return MaskChannels.from_dict(self.meta.get("mask_channels"))

    @property
    def input_channels(self) -> int:
        """Channels of the image a user gives: 1 label image for a masks -> image model."""
        return 1 if self.meta.get("mask_channels") else self.in_channels


def _write_folder(folder: str | Path, net: torch.nn.Module, meta: dict[str, Any]) -> Path:
    """``weights.safetensors`` + ``model.json``, written whole into a temporary folder and swapped
    in (:func:`cytogen.io.atomic.atomic_dir`): a crash leaves the previous folder or none."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    with atomic_dir(folder) as tmp:
        tmp.mkdir()
        save_file(state, str(tmp / "weights.safetensors"))
        (tmp / "model.json").write_text(json.dumps(meta, indent=2))
    return folder


def save_model_folder(folder: str | Path, net: torch.nn.Module, *, architecture: dict[str, Any],
                      source_norm: Normalizer, target_norm: Normalizer,
                      source_channels: list[str], target_channels: list[str],
                      pixel_size_um: list[float] | None, patch_size: list[int],
                      recipe: dict[str, Any] | None = None, extra: dict[str, Any] | None = None) -> Path:
    """Write the model folder atomically (built in a temporary folder, then swapped in by
    :func:`cytogen.io.atomic.atomic_dir`, so a crash leaves the previous folder or none)."""
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "cytogen_version": __version__,
        "architecture": architecture,
        "normalization": {"source": source_norm.to_dict(), "target": target_norm.to_dict()},
        "source_channels": source_channels, "target_channels": target_channels,
        "pixel_size_um": pixel_size_um, "patch_size": patch_size,
        "recipe": recipe or {}, **(extra or {}),
    }
    return _write_folder(folder, net, meta)


def load_model_folder(folder: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a generator from a model folder; refuses unknown formats and architectures, and
    the cell segmenters of ``cytogen train configs/cellseg_consistency2d.yaml`` (their network
    maps marker patches to cell probabilities: use :func:`load_cellseg_folder`)."""
    loaded = _load_unet_folder(folder, device)
    if loaded.meta.get("kind") == CELLSEG_KIND:
        raise CytogenError(
            f"{folder}: this is a cell segmenter (kind {CELLSEG_KIND!r}) trained on marker patches, not an "
            f"image translator; use it with 'cytogen segment cells {folder} --data M.csv --out DIR'")
    if loaded.meta.get("kind") == NUCLEUS_SEG_KIND:
        raise CytogenError(
            f"{folder}: this is a nucleus segmenter (kind {NUCLEUS_SEG_KIND!r}), not an image translator; "
            f"use it with 'cytogen segment nuclei {folder} FILES... --out DIR'")
    return loaded


def load_nucleus_segmenter(folder: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild a supervised nucleus segmenter (kind ``"nucleus_segmenter"``): three class logits
    per pixel; ``meta["instances"]`` holds the recipe's ``instances`` section.

    Raises
    ------
    CytogenError
        Not a model folder, or a model of another kind.
    """
    loaded = _load_unet_folder(folder, device)
    if loaded.meta.get("kind") != NUCLEUS_SEG_KIND:
        raise CytogenError(
            f"{folder}: not a nucleus segmenter (kind {loaded.meta.get('kind')!r}); pass RUN/model of "
            "'cytogen train configs/segment_nuclei2d.yaml'")
    return loaded


def load_cellseg_folder(folder: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
    """Rebuild an unsupervised cell segmenter (kind ``"cellseg"``) from its model folder.

    ``meta["cellseg"]`` holds the recipe's ``cellseg`` section (markers, Gaussian sigma,
    threshold, foreground settings) and ``meta["patch_size"]`` the patch size it was trained on.

    Raises
    ------
    CytogenError
        Not a model folder, or a model of another kind (e.g. a translator).
    """
    loaded = _load_unet_folder(folder, device)
    if loaded.meta.get("kind") != CELLSEG_KIND:
        raise CytogenError(
            f"{folder}: not a cell segmenter (kind {loaded.meta.get('kind')!r}); pass RUN/model of "
            "'cytogen train configs/cellseg_consistency2d.yaml', or use --method propagate for the "
            "classical baseline")
    return loaded


def save_cellseg_folder(folder: str | Path, net: torch.nn.Module, *, architecture: dict[str, Any],
                        source_norm: Normalizer, source_channels: list[str], pixel_size_um: list[float] | None,
                        patch_size: list[int], cellseg: dict[str, Any], recipe: dict[str, Any] | None = None,
                        extra: dict[str, Any] | None = None) -> Path:
    """Write a cell segmenter's model folder (kind ``"cellseg"``) atomically.

    The network's inputs are the normalised source channels plus the Gaussian marker channel
    (``architecture["in_channels"]`` = channels + 1); its single output is a logit per pixel.
    """
    return save_model_folder(
        folder, net, architecture=architecture, source_norm=source_norm,
        target_norm=Normalizer("none"), source_channels=list(source_channels) + ["marker_gaussian"],
        target_channels=["cell_probability_logit"], pixel_size_um=pixel_size_um, patch_size=patch_size,
        recipe=recipe, extra={"kind": CELLSEG_KIND, "cellseg": dict(cellseg), **(extra or {})})


def _load_unet_folder(folder: str | Path, device: str | torch.device = "cpu") -> LoadedModel:
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
    if meta.get("kind") in STATCELL_KINDS:
        raise CytogenError(
            f"{folder}: this is a Statistical Cell model ({meta['kind']}), not an image translator; "
            "use it with 'cytogen statcell embed|sample|walk|features|coupling' (e.g. cytogen statcell "
            f"embed --reference {folder} --data CELLS/cells.csv --out EMB), not with predict/evaluate")
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


# ---------------------------------------------------------------- Statistical Cell models

#: The ``kind`` values of Statistical Cell model folders.
STATCELL_KINDS = ("statcell_reference", "statcell_target")


@dataclass
class LoadedStatCell:
    """A Statistical Cell beta-VAE with its metadata (``model.json``), in eval mode."""

    net: torch.nn.Module
    meta: dict[str, Any]
    folder: Path

    @property
    def kind(self) -> str:
        """``"statcell_reference"`` or ``"statcell_target"``."""
        return str(self.meta["kind"])

    @property
    def structures(self) -> list[str]:
        """Structure names; a structure's index in this list is the model's class ``t``."""
        return [str(s) for s in self.meta.get("structures", [])]

    @property
    def latent_dim(self) -> int:
        return int(self.meta["architecture"]["kwargs"]["latent_dim"])

    @property
    def beta(self) -> float:
        return float(self.meta["beta"])

    @property
    def dims(self) -> int:
        return int(self.meta["architecture"]["kwargs"]["dims"])

    @property
    def crop_size(self) -> tuple[int, ...]:
        return tuple(int(s) for s in self.meta["crop_size"])


def save_statcell_folder(folder: str | Path, net: torch.nn.Module, *, kind: str, architecture: dict[str, Any],
                         structures: list[str], channels: list[str], crop_size: list[int],
                         pixel_size_um: list[float] | None, beta: float, recipe: dict[str, Any] | None,
                         extra: dict[str, Any] | None = None) -> Path:
    """Write a Statistical Cell model folder atomically (``weights.safetensors`` + ``model.json``).

    Parameters
    ----------
    folder
        Destination (replaced as a whole).
    net
        The trained VAE (its ``state_dict`` is saved; float32 recommended).
    kind
        ``"statcell_reference"`` or ``"statcell_target"``.
    architecture
        ``{"name", "kwargs"}`` that :func:`~cytogen.models.vae.build_vae` rebuilds it from.
    structures, channels, crop_size, pixel_size_um
        From the cell set it was trained on (``pixel_size_um`` of the crops, or None).
    beta
        The objective's beta.
    recipe
        The training recipe (``Recipe.to_dict()``).
    extra
        More ``model.json`` keys, e.g. ``best_val_elbo`` and ``kl_per_dim``.
    """
    if kind not in STATCELL_KINDS:
        raise CytogenError(f"kind {kind!r} is not one of {list(STATCELL_KINDS)}")
    meta = {
        "format": FORMAT, "format_version": FORMAT_VERSION, "cytogen_version": __version__,
        "kind": kind, "architecture": {"name": architecture["name"], "kwargs": dict(architecture["kwargs"])},
        "structures": list(structures), "channels": list(channels), "crop_size": [int(s) for s in crop_size],
        "pixel_size_um": None if pixel_size_um is None else [float(p) for p in pixel_size_um],
        "beta": float(beta), "recipe": recipe or {}, **(extra or {}),
    }
    return _write_folder(folder, net, meta)


def load_statcell_folder(folder: str | Path, device: str | torch.device = "cpu",
                         kind: str | None = None) -> LoadedStatCell:
    """Rebuild a Statistical Cell model from its folder (eval mode, on ``device``).

    Parameters
    ----------
    folder
        ``RUN/model`` of ``cytogen train configs/statcell_*.yaml``.
    kind
        Require this kind (``"statcell_reference"`` or ``"statcell_target"``).

    Raises
    ------
    CytogenError
        Not a model folder, not a Statistical Cell model, the wrong kind, damaged weights.
    """
    folder = Path(folder)
    meta_path, weights_path = folder / "model.json", folder / "weights.safetensors"
    if not meta_path.is_file() or not weights_path.is_file():
        raise CytogenError(
            f"{folder}: not a cytogen model folder (needs model.json and weights.safetensors); pass RUN/model "
            "from 'cytogen train configs/statcell_reference2d.yaml' (or statcell_target2d.yaml)")
    try:
        meta = json.loads(meta_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CytogenError(f"{meta_path}: not valid JSON ({exc}); the model folder is damaged") from exc
    if meta.get("format") != FORMAT or meta.get("kind") not in STATCELL_KINDS:
        raise CytogenError(
            f"{folder}: not a Statistical Cell model (kind {meta.get('kind')!r}; an image translator has "
            "none); pass RUN/model from 'cytogen train configs/statcell_reference2d.yaml' "
            "(or statcell_target2d.yaml)")
    if kind is not None and meta["kind"] != kind:
        role = "reference" if kind == "statcell_reference" else "target"
        raise CytogenError(f"{folder}: is a {meta['kind']} model, but a {kind} model is needed here "
                           f"(the {role} model); pass the model folder of the other run")
    arch = meta.get("architecture", {})
    if arch.get("name") not in VAES:
        raise CytogenError(f"{meta_path}: unknown architecture {arch.get('name')!r}; known: {VAES.names()}")
    net = build_vae(arch["name"], **arch.get("kwargs", {}))
    try:
        net.load_state_dict(load_file(str(weights_path)))
    except Exception as exc:  # safetensors raises several types for damaged files
        raise CytogenError(f"{weights_path}: weights cannot be loaded ({exc}); the model folder is damaged") from exc
    net.to(device).eval()
    return LoadedStatCell(net, meta, folder)
