"""Training recipes: shallow YAML files validated against typed dataclasses.

A recipe has five sections (``model``, ``data``, ``loss``, ``optim``, ``train``) and the
optional ``predict``, ``gan``, ``discriminator``, ``vae`` and ``cellseg`` sections. Every key is checked on load: an unknown key or a value of the
wrong type raises :class:`~cytogen.errors.CytogenError` naming the recipe, the key and the
accepted keys. YAML is read with ``yaml.safe_load`` only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from cytogen.errors import CytogenError


@dataclass
class ModelConfig:
    """Generator architecture: a registry name plus its keyword arguments."""

    name: str = "unet"
    dims: int = 2
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class DataConfig:
    """How fields become training patches."""

    patch_size: list[int] = field(default_factory=lambda: [128, 128])
    batch_size: int = 8
    patches_per_epoch: int = 256
    val_patches: int = 64
    normalize: str = "percentile"
    normalize_scope: str = "field"
    percentiles: list[float] = field(default_factory=lambda: [1.0, 99.8])
    augment: bool = True
    foreground_bias: float = 0.5
    num_workers: int = -1
    #: The source is an instance label image spread over binary channels (masks -> images):
    #: ``{channels: 4, gap_px: 2, merged: false, rearrange: true, seed: 0}``; null: an image.
    mask_channels: dict[str, Any] | None = None
    #: each manifest ``group`` (fields without one form one group) gets an equal share of the
    #: training patches, split among its fields by area (default: every field by its area)
    balance_groups: bool = False


@dataclass
class DiscriminatorConfig:
    """Discriminator for adversarial tasks: a registry name plus keyword arguments."""

    name: str = "patchgan"
    kwargs: dict[str, Any] = field(default_factory=dict)


@dataclass
class GanConfig:
    """Adversarial training: loss kind, weights, discriminator optimiser and schedules."""

    adversarial: str = "vanilla"
    adv_weight: float = 1.0
    recon_weight: float = 100.0
    d_lr: float = 2e-4
    d_betas: list[float] = field(default_factory=lambda: [0.5, 0.999])
    soft_labels: bool = False
    soft_label_steps: int = 2500
    r1_gamma: float = 0.0
    ema_decay: float = 0.0
    cycle_weight: float = 10.0
    identity_weight: float = 0.5
    pool_size: int = 50


@dataclass
class LossConfig:
    """Reconstruction loss: ``l1``, ``mse`` or ``masked_l1`` (weight ``alpha`` on mask pixels)."""

    name: str = "l1"
    alpha: float = 10.0
    mask: str = "auto"
    #: weight p of the exclusivity term (Sun et al. 2022, Eq 1; :mod:`cytogen.losses.exclusivity`);
    #: > 0 needs a ``reference`` image per manifest row (frozen max of the other structures)
    exclusivity_weight: float = 0.0
    #: the term is zero once prediction and reference differ by this much (target-normalised units)
    exclusivity_margin: float = 1.0


@dataclass
class OptimConfig:
    """Optimiser and learning-rate schedule, for every task (the GAN discriminator uses the same
    ``name`` and ``weight_decay`` with ``gan.d_lr`` / ``gan.d_betas``).

    ``name``: ``adam`` (weight decay as an L2 gradient term), ``adamw`` (decoupled weight
    decay) or ``sgd`` (momentum ``betas[0]``; ``betas: [0, 0.999]`` for plain SGD).
    """

    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-4
    betas: list[float] = field(default_factory=lambda: [0.9, 0.999])
    scheduler: str = "cosine"
    warmup_steps: int = 0


@dataclass
class VaeConfig:
    """Statistical Cell beta-VAE objective (tasks ``statcell_reference`` / ``statcell_target``).

    ``beta`` in [0, 1] weighs the KL term against the reconstruction in the paper's
    reparameterised ELBO ``2 [(1 - beta) recon + beta KL]``; ``elbo_samples`` is the number of
    latent samples of the (unweighted) validation and evaluation ELBO.
    """

    beta: float = 0.5
    elbo_samples: int = 10


@dataclass
class InstancesConfig:
    """Supervised nucleus segmentation (task ``segment_nuclei``): the target is an instance label
    image, learned as three classes (background, interior, boundary) and turned back into
    instances by a seeded watershed."""

    boundary_px: int = 1            # width of the boundary class inside each object's edge
    boundary_weight: float = 3.0    # cross-entropy weight of boundary pixels (interior, background: 1)
    dice_weight: float = 1.0        # + this times the soft Dice loss of the foreground (0: none)
    fg_threshold: float = 0.5       # foreground where P(interior) + P(boundary) exceeds it
    seed_threshold: float = 0.5     # watershed seeds: connected regions with P(interior) above it
    min_size_px: float = 8.0        # objects smaller than this are dropped (pixels / voxels)
    min_size_um2: float | None = None  # the same in um^2 (um^3 in 3D) where the pixel size is known


@dataclass
class CellSegConfig:
    """Unsupervised marker-controlled cell segmentation (task ``cellseg_consistency``).

    Loss (the paper's Eq 1): ``lam`` weighs the overlap term ``-sum y_i log(1 - y_j)`` (logarithm
    of base ``log_base``; 10 makes 3.32 the balanced weight of Eq 3), ``beta`` the penalty on
    probability outside the foreground mask. Patches (``data.patch_size``) are centred on the
    markers with a Gaussian disk channel of ``sigma_px`` pixels (``sigma_um`` wins when the pixel
    size is known); one batch = the patches whose markers fall in a random ``area`` x ``area``
    window. ``threshold``: integration background level. ``marker_source``: the M.csv column the
    training markers come from (nuclei, nucleus_model, markers; None: the only one a row gives).
    Markers: ``markers`` (dog, log: blob
    detection; segment: nucleus segmentation centroids) with the nucleus diameter, minimum
    distance and size (px, or um when the pixel size is known). Foreground: graph cut with the
    cut penalty ``kappa`` and the prior ``alpha`` (None: estimated from the area covered), of the
    cell image smoothed by a Gaussian of ``foreground_sigma_px`` pixels (``foreground_sigma_um``
    wins when the pixel size is known; 0 = no smoothing; not used with scribbles or a mask).
    ``areas_per_epoch``: training batches per epoch.
    """

    lam: float = 3.32
    beta: float = 15.0
    log_base: float = 10.0
    sigma_px: float = 15.0
    sigma_um: float | None = None
    area: int = 640
    threshold: float = 0.5
    markers: str = "dog"
    marker_source: str | None = None
    nucleus_diameter_px: float = 10.0
    nucleus_diameter_um: float | None = None
    threshold_rel: float = 0.1
    min_distance_px: float | None = None
    min_distance_um: float | None = None
    min_size_px: float | None = None
    min_size_um2: float | None = None
    kappa: float | None = None
    alpha: float | None = None
    foreground_sigma_px: float = 1.0
    foreground_sigma_um: float | None = None
    areas_per_epoch: int = 64


@dataclass
class TrainConfig:
    """Loop length, validation cadence, seed and hardware."""

    max_steps: int = 2000
    max_time_min: float | None = None
    val_every: int = 100
    seed: int = 0
    precision: str = "auto"
    fast: bool = True
    compile: bool = False
    accelerator: str = "auto"
    devices: int | str = 1
    num_nodes: int = 1
    strategy: str = "auto"
    log_every: int = 10
    export: str = "best"
    checkpoint_every: int = 50
    grad_clip: float | None = None


@dataclass
class PredictConfig:
    """Defaults for tiled prediction with the trained model.

    ``tile``: pixels per axis, ``null`` (twice the training patch size) or ``auto`` (the
    largest tile in the memory budget); ``overlap``: a fraction of the tile in [0, 1), pixels
    per axis, or ``auto`` (twice the model's effective receptive-field radius, which becomes
    the tiles' zero-weighted margin); ``batch_size``: tiles per call or ``auto`` (as many as fit
    the budget). See :mod:`cytogen.predict.defaults`.
    """

    tile: list[int] | str | None = "auto"
    overlap: float | list[int] | str = "auto"
    batch_size: int | str = "auto"
    blend: str = "gaussian"


@dataclass
class Recipe:
    """A whole training recipe."""

    task: str = "translate"
    description: str = ""
    model: ModelConfig = field(default_factory=ModelConfig)
    discriminator: DiscriminatorConfig = field(default_factory=DiscriminatorConfig)
    gan: GanConfig = field(default_factory=GanConfig)
    data: DataConfig = field(default_factory=DataConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    vae: VaeConfig = field(default_factory=VaeConfig)
    cellseg: CellSegConfig = field(default_factory=CellSegConfig)
    instances: InstancesConfig = field(default_factory=InstancesConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    predict: PredictConfig = field(default_factory=PredictConfig)

    def to_dict(self) -> dict[str, Any]:
        """Plain nested dict (YAML/JSON serialisable)."""
        return asdict(self)


_CHOICES = {
    ("gan", "adversarial"): {"vanilla", "lsgan", "hinge"},
    ("train", "export"): {"best", "last"},
    ("data", "normalize"): {"percentile", "zscore", "none"},
    ("data", "normalize_scope"): {"field", "dataset"},
    ("loss", "name"): {"l1", "mse", "masked_l1"},
    ("loss", "mask"): {"auto", "manifest"},
    ("optim", "name"): {"adam", "adamw", "sgd"},
    ("optim", "scheduler"): {"cosine", "none"},
    ("predict", "blend"): {"gaussian", "linear", "constant"},
    ("cellseg", "markers"): {"dog", "log", "segment"},
    ("cellseg", "marker_source"): {"nuclei", "nucleus_model", "markers"},
}


def _choices(key: tuple[str, ...]) -> set[str] | None:
    """Accepted values of a setting; ``task`` comes from the task registry (imported lazily,
    so reading this module does not load torch)."""
    if key == ("task",):
        from cytogen.tasks import TASKS

        return set(TASKS.names())
    return _CHOICES.get(key)


def _check_type(value: Any, tp: Any, where: str, source: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in typing.get_args(tp):
            return None
        errors = []
        for arg in typing.get_args(tp):
            if arg is type(None):
                continue
            try:
                return _check_type(value, arg, where, source)
            except CytogenError as exc:
                errors.append(str(exc))
        raise CytogenError(errors[0] if errors else f"{source}: bad value for '{where}'")
    if origin is list:
        (item_tp,) = typing.get_args(tp)
        if not isinstance(value, (list, tuple)):
            raise CytogenError(
                f"{source}: '{where}' must be a list, got {value!r}; write it as [a, b, ...]"
            )
        return [_check_type(v, item_tp, f"{where}[{i}]", source) for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise CytogenError(f"{source}: '{where}' must be a mapping, got {value!r}")
        return dict(value)
    if tp is float:
        if isinstance(value, str):  # YAML 1.1 reads 1e-4 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CytogenError(f"{source}: '{where}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise CytogenError(f"{source}: '{where}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise CytogenError(f"{source}: '{where}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return str(value)
        if not isinstance(value, str):
            raise CytogenError(f"{source}: '{where}' must be a string, got {value!r}")
        return value
    raise CytogenError(f"{source}: unsupported type for '{where}'")


def _build(cls: type, data: dict[str, Any], prefix: str, source: str) -> Any:
    if not isinstance(data, dict):
        raise CytogenError(f"{source}: section '{prefix or 'top level'}' must be a mapping")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        where = f"section '{prefix}'" if prefix else "the top level"
        raise CytogenError(
            f"{source}: unknown key(s) {unknown} in {where}; accepted keys: {sorted(known)}"
        )
    kwargs = {}
    for name, value in data.items():
        tp = hints[name]
        where = f"{prefix}.{name}" if prefix else name
        if dataclasses.is_dataclass(tp):
            kwargs[name] = _build(tp, value or {}, where, source)
        else:
            kwargs[name] = _check_type(value, tp, where, source)
            choices = _choices(tuple(where.split(".")))
            if choices is not None and kwargs[name] is not None and kwargs[name] not in choices:
                raise CytogenError(
                    f"{source}: '{where}' is {kwargs[name]!r}; choose one of {sorted(choices)}"
                )
    return cls(**kwargs)


def _set_dotted(tree: dict[str, Any], key: str, value: Any) -> None:
    parts = key.split(".")
    node = tree
    for part in parts[:-1]:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise CytogenError(f"--set {key}: '{part}' is not a section")
    node[parts[-1]] = value


def parse_overrides(items: list[str] | None) -> dict[str, Any]:
    """Turn ``["train.max_steps=50", "model.kwargs.depth=3"]`` into a nested dict.

    Values are parsed as YAML scalars/lists (``50`` -> int, ``[64,64]`` -> list).
    """
    tree: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise CytogenError(f"--set {item!r}: expected key=value, e.g. train.max_steps=500")
        key, raw = item.split("=", 1)
        try:
            value = yaml.safe_load(raw) if raw.strip() else ""
        except yaml.YAMLError as exc:
            raise CytogenError(f"--set {item!r}: value is not valid YAML ({exc})") from exc
        _set_dotted(tree, key.strip(), value)
    return tree


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _check_predict(p: PredictConfig, source: str) -> None:
    """Values of the ``predict`` section: ``auto`` is the only word accepted."""
    for key in ("tile", "overlap", "batch_size"):
        value = getattr(p, key)
        if isinstance(value, str) and value != "auto":
            raise CytogenError(f"{source}: predict.{key} is {value!r}; the only word accepted is "
                               "'auto' (chosen from the model's receptive field and memory)")
    if isinstance(p.overlap, float) and not 0.0 <= p.overlap < 1.0:
        raise CytogenError(f"{source}: predict.overlap is {p.overlap}; it must be in [0, 1) "
                           "(a fraction of the tile), pixels per axis like [32, 32], or auto")
    if isinstance(p.overlap, list) and min(p.overlap, default=-1) < 0:
        raise CytogenError(f"{source}: predict.overlap is {p.overlap}; give pixels >= 0, one per "
                           "spatial axis")
    if isinstance(p.batch_size, int) and p.batch_size < 1:
        raise CytogenError(f"{source}: predict.batch_size is {p.batch_size}; it must be >= 1 (or auto)")
    if isinstance(p.tile, list) and min(p.tile, default=0) < 1:
        raise CytogenError(f"{source}: predict.tile is {p.tile}; give positive sizes, one per "
                           "spatial axis (or leave it out: twice the patch size; or auto)")


def recipe_from_dict(data: dict[str, Any], source: str = "recipe") -> Recipe:
    """Validate a nested dict and build a :class:`Recipe`."""
    recipe = _build(Recipe, data or {}, "", source)
    if len(recipe.data.patch_size) != recipe.model.dims:
        raise CytogenError(
            f"{source}: data.patch_size {recipe.data.patch_size} has {len(recipe.data.patch_size)} "
            f"axes but model.dims is {recipe.model.dims}; give one size per spatial axis"
        )
    if recipe.model.dims not in (2, 3):
        raise CytogenError(f"{source}: model.dims must be 2 or 3, got {recipe.model.dims}")
    if len(recipe.data.percentiles) != 2 or not (
        0 <= recipe.data.percentiles[0] < recipe.data.percentiles[1] <= 100
    ):
        raise CytogenError(f"{source}: data.percentiles must be [low, high] with 0 <= low < high <= 100")
    if not 0.0 <= recipe.data.foreground_bias <= 1.0:
        raise CytogenError(f"{source}: data.foreground_bias must be in [0, 1]")
    for key in ("batch_size", "patches_per_epoch", "val_patches"):
        if getattr(recipe.data, key) < 1:
            raise CytogenError(f"{source}: data.{key} must be >= 1")
    _check_predict(recipe.predict, source)
    if recipe.train.max_steps < 1:
        raise CytogenError(f"{source}: train.max_steps must be >= 1")
    if not 0.0 <= recipe.vae.beta <= 1.0:
        raise CytogenError(f"{source}: vae.beta is {recipe.vae.beta}; it must be in [0, 1] "
                           "(0: reconstruction only, 1: KL only; the paper's sweep spans 0.01-0.99)")
    if recipe.vae.elbo_samples < 1:
        raise CytogenError(f"{source}: vae.elbo_samples is {recipe.vae.elbo_samples}; it must be >= 1 "
                           "(the paper averages 10 samples)")
    _check_cellseg(recipe.cellseg, source)
    _check_instances(recipe.instances, source)
    if recipe.data.mask_channels:
        from cytogen.data.masks import MaskChannels

        try:
            MaskChannels.from_dict(recipe.data.mask_channels)
        except (CytogenError, TypeError, ValueError) as exc:
            raise CytogenError(f"{source}: {exc}") from None
    if recipe.data.num_workers < -1:
        raise CytogenError(f"{source}: data.num_workers must be >= 0, or -1 to choose automatically")
    if recipe.train.num_nodes < 1:
        raise CytogenError(f"{source}: train.num_nodes must be >= 1")
    from cytogen.runtime.settings import normalize_precision

    try:
        recipe.train.precision = normalize_precision(recipe.train.precision)
    except CytogenError as exc:
        raise CytogenError(f"{source}: train.{exc}") from None
    return recipe


def _check_instances(c: InstancesConfig, source: str) -> None:
    if c.boundary_px < 1:
        raise CytogenError(f"{source}: instances.boundary_px is {c.boundary_px}; it must be >= 1")
    if c.boundary_weight <= 0 or c.dice_weight < 0:
        raise CytogenError(f"{source}: instances.boundary_weight must be > 0 and instances.dice_weight >= 0")
    for key in ("fg_threshold", "seed_threshold"):
        if not 0.0 < getattr(c, key) < 1.0:
            raise CytogenError(f"{source}: instances.{key} is {getattr(c, key)}; it must be in (0, 1)")
    if c.min_size_px < 0 or (c.min_size_um2 is not None and c.min_size_um2 < 0):
        raise CytogenError(f"{source}: instances.min_size_px / min_size_um2 must be >= 0")


def _check_cellseg(c: CellSegConfig, source: str) -> None:
    positive = {"sigma_px": c.sigma_px, "log_base": c.log_base, "nucleus_diameter_px": c.nucleus_diameter_px,
                "sigma_um": c.sigma_um, "nucleus_diameter_um": c.nucleus_diameter_um,
                "min_distance_px": c.min_distance_px, "min_distance_um": c.min_distance_um,
                "min_size_px": c.min_size_px, "min_size_um2": c.min_size_um2}
    for key, value in positive.items():
        if value is not None and not value > 0:
            raise CytogenError(f"{source}: cellseg.{key} is {value}; it must be > 0 (or null where optional)")
    if c.log_base == 1.0:
        raise CytogenError(f"{source}: cellseg.log_base must not be 1")
    if c.lam < 0 or c.beta < 0:
        raise CytogenError(f"{source}: cellseg.lam and cellseg.beta must be >= 0 (the paper: 3.32 and 15)")
    if not 0.0 < c.threshold < 1.0:
        raise CytogenError(f"{source}: cellseg.threshold is {c.threshold}; it must be in (0, 1) (the paper: 0.5)")
    if not 0.0 < c.threshold_rel < 1.0:
        raise CytogenError(f"{source}: cellseg.threshold_rel is {c.threshold_rel}; it must be in (0, 1)")
    if c.alpha is not None and not 0.0 < c.alpha < 1.0:
        raise CytogenError(f"{source}: cellseg.alpha is {c.alpha}; it must be in (0, 1) or null (estimated)")
    if c.kappa is not None and c.kappa < 0:
        raise CytogenError(f"{source}: cellseg.kappa is {c.kappa}; it must be >= 0 or null (the default)")
    for key, value in (("foreground_sigma_px", c.foreground_sigma_px), ("foreground_sigma_um", c.foreground_sigma_um)):
        if value is not None and not value >= 0:
            raise CytogenError(f"{source}: cellseg.{key} is {value}; it must be >= 0 (0: no smoothing)")
    if c.area < 1 or c.areas_per_epoch < 1:
        raise CytogenError(f"{source}: cellseg.area and cellseg.areas_per_epoch must be >= 1")


def apply_overrides(recipe: Recipe, overrides: list[str] | None, source: str = "recipe") -> Recipe:
    """A new, validated :class:`Recipe`: ``recipe`` with ``--set`` style overrides applied.

    ``recipe`` itself is not modified (also when ``overrides`` is empty: a copy is returned).
    """
    return recipe_from_dict(_merge(recipe.to_dict(), parse_overrides(overrides)), source)


def load_recipe(path: str | Path | None, overrides: list[str] | None = None) -> Recipe:
    """Read a recipe YAML (or the defaults when ``path`` is None) and apply ``--set`` overrides."""
    data: dict[str, Any] = {}
    source = "recipe"
    if path is not None:
        path = Path(path)
        source = str(path)
        if not path.is_file():
            raise CytogenError(
                f"{path}: recipe file not found; pass a YAML file such as configs/translate_unet2d.yaml"
            )
        try:
            data = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise CytogenError(f"{path}: not valid YAML ({exc}); fix the syntax") from exc
        if not isinstance(data, dict):
            raise CytogenError(f"{path}: a recipe must be a YAML mapping of sections")
    data = _merge(data, parse_overrides(overrides))
    return recipe_from_dict(data, source)


def bundled_recipe(name: str) -> Path:
    """Path of a recipe shipped with the package (``cytogen/configs/<name>.yaml``)."""
    path = Path(__file__).parent / "configs" / f"{name}.yaml"
    if not path.is_file():
        available = sorted(p.stem for p in path.parent.glob("*.yaml"))
        raise CytogenError(f"no bundled recipe named {name!r}; available: {available}")
    return path
