"""Inference with Statistical Cell models: posterior means, ELBOs, prior samples, decoding.

Every function runs batched, without gradients, in float32, with the network in eval mode
(its previous mode is restored afterwards), on the device the model was loaded on. Random draws
come from a seeded :class:`torch.Generator`, so the same seed gives the same cells.

Arrays in and out are numpy: references ``(n, 2, *size)`` (channels cell, dna), targets
``(n, 1, *size)``, latents ``(n, D)``; decoded images are in [0, 1] (the decoders end in a sigmoid).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from cytogen.errors import CytogenError

if TYPE_CHECKING:  # pragma: no cover - typing only
    from cytogen.data.cellset import CellSet
    from cytogen.predict.model_folder import LoadedStatCell

__all__ = ["decode_reference", "decode_target", "elbo_cells", "embed_cells", "model_structure_ids",
           "sample_reference", "sample_target"]


@contextmanager
def _evaluating(net: torch.nn.Module) -> Iterator[torch.device]:
    """Eval mode and no grad for the block; yields the model's device; restores the mode."""
    was_training = net.training
    net.eval()
    try:
        with torch.no_grad():
            p = next(net.parameters(), None)
            yield p.device if p is not None else torch.device("cpu")
    finally:
        net.train(was_training)


def _chunks(n: int, batch_size: int) -> Iterator[slice]:
    if batch_size < 1:
        raise CytogenError(f"batch_size must be at least 1, got {batch_size}")
    for start in range(0, n, batch_size):
        yield slice(start, min(start + batch_size, n))


def _rows(cellset: CellSet, indices: np.ndarray) -> np.ndarray:
    """float32 crops ``(b, C, *size)`` of some rows (reads only those rows of the memory map)."""
    idx = np.asarray(indices, dtype=np.int64)
    return np.asarray(cellset.images[idx], dtype=np.float32)


def _split_crops(cellset: CellSet, crops: np.ndarray) -> tuple[np.ndarray, np.ndarray | None]:
    """Reference ``(b, 2, *size)`` and target ``(b, 1, *size)`` (None in a set without a target)."""
    ref = np.ascontiguousarray(crops[:, list(cellset.reference_channels)])
    t = cellset.target_channel
    return ref, (None if t is None else np.ascontiguousarray(crops[:, [t]]))


def model_structure_ids(model: LoadedStatCell, cellset: CellSet, indices: np.ndarray) -> np.ndarray:
    """The target model's structure index of each cell (the model's own order, not the set's).

    Raises
    ------
    CytogenError
        If a cell's structure is not one the model was trained on.
    """
    if cellset.target_channel is None:
        raise CytogenError(f"{cellset.root}: this cell set has no target channel, so a target model "
                           f"({model.folder}) cannot be applied; extract cells with a target column")
    known = list(model.structures)
    names = [cellset.structures[int(i)] for i in np.asarray(cellset.structure_index())[np.asarray(indices)]]
    missing = sorted(set(names) - set(known))
    if missing:
        raise CytogenError(f"{cellset.root}: structure(s) {missing} are not among the target model's "
                           f"{known} ({model.folder}); use cells of those structures or a model trained on them")
    lookup = {s: i for i, s in enumerate(known)}
    return np.array([lookup[s] for s in names], dtype=np.int64)


def _check_latents(model: LoadedStatCell, z: np.ndarray) -> np.ndarray:
    z = np.asarray(z, dtype=np.float32)
    if z.ndim != 2 or z.shape[1] != model.latent_dim:
        raise CytogenError(f"latent codes must be (n, {model.latent_dim}) for {model.folder}, got {z.shape}")
    return z


def _check_reference(model: LoadedStatCell, reference: np.ndarray) -> np.ndarray:
    ref = np.asarray(reference, dtype=np.float32)
    size = tuple(int(s) for s in model.meta["architecture"]["kwargs"]["size"])
    ref_ch = int(model.meta["architecture"]["kwargs"].get("ref_channels", 2))
    if ref.ndim != 2 + len(size) or ref.shape[1] != ref_ch or tuple(ref.shape[2:]) != size:
        raise CytogenError(f"reference images must be (n, {ref_ch}, {', '.join(map(str, size))}) for "
                           f"{model.folder}, got {ref.shape}")
    return ref


def embed_cells(ref: LoadedStatCell | None, tgt: LoadedStatCell | None, cellset: CellSet,
                indices: np.ndarray, batch_size: int = 64,
                progress: Callable[[str], None] | None = None) -> dict[str, np.ndarray]:
    """Posterior means of the cells: ``{"zr": (n, Dr), "zt": (n, Dt)}`` (keys of the given models).

    Parameters
    ----------
    ref, tgt
        Loaded reference / target models (either may be None).
    cellset
        The cells; ``indices`` are its row indices, in the order of the output rows.
    progress
        Called with a line of text now and then (e.g. a printer to stderr).
    """
    indices = np.asarray(indices, dtype=np.int64)
    out: dict[str, np.ndarray] = {}
    t_ids = model_structure_ids(tgt, cellset, indices) if tgt is not None else None
    models = [(k, m) for k, m in (("zr", ref), ("zt", tgt)) if m is not None]
    for key, model in models:
        parts: list[np.ndarray] = []
        with _evaluating(model.net) as dev:
            for sl in _chunks(len(indices), batch_size):
                x_r, x_t = _split_crops(cellset, _rows(cellset, indices[sl]))
                xr = torch.from_numpy(x_r).to(dev)
                if key == "zr":
                    mu, _ = model.net.encode(xr)
                else:
                    t = torch.from_numpy(t_ids[sl]).to(dev)
                    mu, _ = model.net.encode(torch.from_numpy(x_t).to(dev), xr, t)
                parts.append(mu.float().cpu().numpy())
                if progress is not None and (sl.stop % (20 * batch_size) == 0 or sl.stop == len(indices)):
                    progress(f"{key}: {sl.stop}/{len(indices)} cells")
        out[key] = np.concatenate(parts) if parts else np.zeros((0, model.latent_dim), np.float32)
    return out


def elbo_cells(model: LoadedStatCell, cellset: CellSet, indices: np.ndarray, n_samples: int = 10,
               reference_override: np.ndarray | None = None, batch_size: int = 64,
               seed: int = 0) -> dict[str, np.ndarray]:
    """ELBO estimates of cells: ``{"elbo": (n,), "recon": (n,), "kl": (n, D)}``.

    Uses :func:`cytogen.losses.elbo.elbo_estimate` (``n_samples`` reparameterised samples).
    ``reference_override`` ``(n, 2, *size)`` replaces the cells' reference images (row ``i`` for
    ``indices[i]``), e.g. with one channel swapped for another cell's (the coupling of Eq 4).
    The draws are seeded (``seed``), so repeated calls with the same ``batch_size`` give the
    same estimates.
    """
    from cytogen.losses.elbo import elbo_estimate

    if n_samples < 1:
        raise CytogenError(f"n_samples must be at least 1, got {n_samples}")
    indices = np.asarray(indices, dtype=np.int64)
    if reference_override is not None:
        reference_override = _check_reference(model, reference_override)
        if len(reference_override) != len(indices):
            raise CytogenError(f"reference_override has {len(reference_override)} images for "
                               f"{len(indices)} cells; give one per cell")
    is_target = model.kind == "statcell_target"
    t_ids = model_structure_ids(model, cellset, indices) if is_target else None
    parts: dict[str, list[np.ndarray]] = {"elbo": [], "recon": [], "kl": []}
    with _evaluating(model.net) as dev, torch.random.fork_rng(devices=[] if dev.type == "cpu" else [dev]):
        torch.manual_seed(seed)
        for sl in _chunks(len(indices), batch_size):
            x_r, x_t = _split_crops(cellset, _rows(cellset, indices[sl]))
            if reference_override is not None:
                x_r = reference_override[sl]
            xr = torch.from_numpy(np.ascontiguousarray(x_r)).to(dev)
            net = model.net
            if is_target:
                t = torch.from_numpy(t_ids[sl]).to(dev)
                xt = torch.from_numpy(x_t).to(dev)
                encode: Callable[[], Any] = lambda xt=xt, xr=xr, t=t: net.encode(xt, xr, t)  # noqa: E731
                decode: Callable[[torch.Tensor], torch.Tensor] = lambda z, xr=xr, t=t: net.decode(z, xr, t)  # noqa: E731
                x = xt
            else:
                encode, decode, x = (lambda xr=xr: net.encode(xr)), net.decode, xr
            est = elbo_estimate(encode, decode, x, n_samples=n_samples)
            for k in parts:
                parts[k].append(est[k].float().cpu().numpy())
    d = model.latent_dim
    empty = {"elbo": np.zeros(0, np.float32), "recon": np.zeros(0, np.float32), "kl": np.zeros((0, d), np.float32)}
    return {k: (np.concatenate(v) if v else empty[k]) for k, v in parts.items()}


def _prior(model: LoadedStatCell, n: int, seed: int) -> np.ndarray:
    if n < 1:
        raise CytogenError(f"the number of samples must be at least 1, got {n}")
    g = torch.Generator().manual_seed(int(seed))
    return torch.randn(n, model.latent_dim, generator=g).numpy()


def decode_reference(ref: LoadedStatCell, z: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """Decode reference latents ``(n, D)`` -> images ``(n, 2, *size)`` in [0, 1]."""
    z = _check_latents(ref, z)
    parts: list[np.ndarray] = []
    with _evaluating(ref.net) as dev:
        for sl in _chunks(len(z), batch_size):
            parts.append(ref.net.decode(torch.from_numpy(z[sl]).to(dev)).float().cpu().numpy())
    return np.concatenate(parts)


def decode_target(tgt: LoadedStatCell, z: np.ndarray, reference: np.ndarray, structure: int,
                  batch_size: int = 64) -> np.ndarray:
    """Decode target latents ``(n, D)`` in references ``(n, 2, *size)`` -> ``(n, 1, *size)``.

    ``structure`` is an index into ``tgt.structures``.
    """
    z = _check_latents(tgt, z)
    reference = _check_reference(tgt, reference)
    if len(reference) != len(z):
        raise CytogenError(f"{len(z)} latent codes for {len(reference)} references; give one each")
    _check_structure(tgt, structure)
    parts: list[np.ndarray] = []
    with _evaluating(tgt.net) as dev:
        for sl in _chunks(len(z), batch_size):
            t = torch.full((sl.stop - sl.start,), int(structure), dtype=torch.int64, device=dev)
            xr = torch.from_numpy(np.ascontiguousarray(reference[sl])).to(dev)
            parts.append(tgt.net.decode(torch.from_numpy(z[sl]).to(dev), xr, t).float().cpu().numpy())
    return np.concatenate(parts)


def _check_structure(tgt: LoadedStatCell, structure: int) -> None:
    if not 0 <= int(structure) < len(tgt.structures):
        raise CytogenError(f"structure index {structure} is out of range for {tgt.folder}: "
                           f"{list(enumerate(tgt.structures))}")


def sample_reference(ref: LoadedStatCell, n: int, seed: int = 0) -> np.ndarray:
    """``n`` new cells from the reference prior (z ~ N(0, I)), decoded: ``(n, 2, *size)``."""
    return decode_reference(ref, _prior(ref, n, seed))


def sample_target(tgt: LoadedStatCell, reference: np.ndarray, structure: int, n_draws: int,
                  seed: int = 0) -> np.ndarray:
    """``n_draws`` draws of a structure in given references (z_t ~ N(0, I) per draw).

    Parameters
    ----------
    reference
        One reference ``(2, *size)`` -> returns ``(n_draws, 1, *size)``; or ``m`` references
        ``(m, 2, *size)`` -> returns ``(m, n_draws, 1, *size)`` (independent draws per reference).
    structure
        Index into ``tgt.structures``.
    """
    ref = np.asarray(reference, dtype=np.float32)
    single = ref.ndim == len(tgt.meta["architecture"]["kwargs"]["size"]) + 1
    refs = _check_reference(tgt, ref[None] if single else ref)
    m = len(refs)
    z = _prior(tgt, m * n_draws, seed)
    out = decode_target(tgt, z, np.repeat(refs, n_draws, axis=0), structure)
    out = out.reshape(m, n_draws, *out.shape[1:])
    return out[0] if single else out
