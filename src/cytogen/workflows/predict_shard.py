"""``cytogen predict --devices N [--num-nodes M]``: one prediction run shared by many processes.

The fields of a manifest (or a list of files) are split across processes, GPUs and nodes with
Lightning Fabric's DDP launcher, the machinery ``cytogen train`` uses: ``fabric.launch()``
starts the other processes of this node (or joins those that SLURM or torchrun started) and
sets up a ``torch.distributed`` process group. Rank 0 plans the run: which outputs already
exist (``resume``), and which rank predicts which field (largest first to the least-loaded
rank, by pixel count, so ranks finish together); the plan is broadcast, so every rank works
from the same list even while others start writing. Each rank predicts its share with the
single-process code (:func:`cytogen.workflows.predict._predict_jobs`): every field is written
once, atomically. At the end every rank reports to rank 0 what it wrote or why it failed; rank
0 writes ``OUT/runtime.json`` and the summary, and the run fails (on every rank) if any rank
failed. A rerun with ``resume=True`` then predicts only the fields whose output is missing.

The process group uses gloo on CPUs and GPUs alike: it only carries the plan and the reports
(small Python objects), never tensors. A rank that raises still reports, so nobody waits for it;
a process that dies is noticed by Lightning's launcher (on its node) or by its closed
connections (elsewhere); :data:`WAIT_FOR_RANKS` only bounds a rank that hangs.
"""

from __future__ import annotations

import glob
import io
import re
import shutil
import socket
import sys
import time
import traceback
from contextlib import nullcontext, redirect_stderr
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytogen.errors import CytogenError
from cytogen.io.atomic import write_json
from cytogen.io.lazy import open_spec_lazy
from cytogen.predict.defaults import resolve_tiling
from cytogen.predict.model_folder import load_model_folder
from cytogen.runtime import resolve_runtime
from cytogen.workflows.predict import (OUTPUT_FORMATS, _is_zarr, _predict_jobs, check_out_folder,
                                       image_jobs)
from cytogen.workflows.train_support import is_rank_zero

#: How long a rank waits for the others, at the start (rank 0 plans) and at the end (slower
#: ranks finish their share). A rank that fails reports at once; this bounds a rank that hangs.
WAIT_FOR_RANKS = timedelta(hours=24)
ASSIGNMENT = "largest field first to the least-loaded rank (spatial pixels)"
#: Temporary names of cytogen's atomic writers (``cytogen.io.atomic.temp_sibling``).
_TEMP = re.compile(r"\.\d+-[0-9a-f]{8}\.(tmp|old|rows)")


class RankStopped(CytogenError):
    """Raised on ranks other than 0 when the run failed; rank 0 raises the error that says why."""


@dataclass
class ShardJob:
    """One field of the plan: what to read, where to write, its size and the rank that predicts it."""

    name: str
    specs: list[str]
    pixel_um: float | None
    target: Path
    pixels: int | None
    rank: int = 0


@dataclass
class ShardSummary:
    """What a sharded run did (the same on every rank).

    Attributes
    ----------
    rank, world_size : int
        This process's global rank and the number of processes.
    written : list of pathlib.Path
        Predictions written by all ranks in this run, in input order.
    skipped : list of str
        Fields skipped because their output existed (``resume``).
    by_rank : dict
        Field name -> rank that wrote it.
    """

    rank: int
    world_size: int
    written: list[Path] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    by_rank: dict[str, int] = field(default_factory=dict)


def _check_counts(devices: Any, num_nodes: Any) -> None:
    for flag, value in (("--devices", devices), ("--num-nodes", num_nodes)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise CytogenError(f"{flag} {value!r}: give a whole number >= 1 (processes per node "
                               "for --devices, machines for --num-nodes)")


def _check_gpus(device: str, devices: int, num_nodes: int) -> None:
    """Refuse more GPUs per node than this node has, and several processes on one Apple GPU."""
    if device == "cuda" and devices > torch.cuda.device_count():
        raise CytogenError(f"--devices {devices}: only {torch.cuda.device_count()} GPU(s) visible on this "
                           f"node; use --devices {torch.cuda.device_count()} or fewer, or --accelerator cpu "
                           "for CPU processes")
    if device == "mps" and devices * num_nodes > 1:
        raise CytogenError("an Apple GPU (mps) runs one process; use --devices 1 or --accelerator cpu")


def output_target(out: Path, name: str, specs: list[str], output_format: str | None) -> Path:
    """Where :func:`~cytogen.workflows.predict._predict_jobs` writes a job (same rule; each
    rank checks the paths it returns against this, so the two cannot drift apart silently)."""
    fmt = output_format or ("ome-zarr" if all(_is_zarr(s) for s in specs) else "tif")
    return out / (f"{name}.ome.zarr" if fmt == "ome-zarr" else f"{name}.tif")


def assign_ranks(pixels: list[int], world: int) -> list[int]:
    """The rank of each job: largest first to the least-loaded rank (ties: the lower rank).

    Deterministic, and no rank gets more than the lightest one plus the largest job.

    Examples
    --------
    >>> assign_ranks([100, 50, 50, 40, 10], 2)
    [0, 1, 1, 0, 1]
    """
    load = [0] * world
    ranks = [0] * len(pixels)
    for i in sorted(range(len(pixels)), key=lambda i: (-pixels[i], i)):
        r = min(range(world), key=lambda r: (load[r], r))
        ranks[i] = r
        load[r] += pixels[i]
    return ranks


def _pixels(specs: list[str]) -> int | None:
    """Spatial pixels of a job's first source from its header, or None where the lazy reader
    refuses it (the rank that predicts it reads it whole, or reports its error)."""
    try:
        with open_spec_lazy(specs[0]) as image:
            return int(np.prod(image.spatial_shape))
    except CytogenError:
        return None


def remove_stale_temps(target: Path) -> int:
    """Delete the hidden temporaries a killed writer of ``target`` left; returns how many.

    Only names of cytogen's atomic writers for this very target (``.<name>.<pid>-<hex>.tmp``,
    ``.old``, ``.rows``) are touched.
    """
    n = 0
    prefix = f".{target.name}"
    for p in target.parent.glob(f".{glob.escape(target.name)}.*"):
        if _TEMP.match(p.name[len(prefix):]):
            shutil.rmtree(p) if p.is_dir() and not p.is_symlink() else p.unlink(missing_ok=True)
            n += 1
    return n


def _plan(jobs: list[tuple[str, list[str], float | None]], out: Path, output_format: str | None,
          resume: bool, world: int) -> dict[str, Any]:
    """Rank 0's plan: the jobs to predict with their ranks, and the names skipped as done."""
    todo, skipped = [], []
    for name, specs, pixel_um in jobs:
        target = output_target(out, name, specs, output_format)
        remove_stale_temps(target)
        if resume and target.exists():
            skipped.append(name)
        else:
            todo.append(ShardJob(name, specs, pixel_um, target, _pixels(specs)))
    known = [j.pixels for j in todo if j.pixels is not None]
    for j in todo:  # a field of unknown size counts as the largest one
        j.pixels = j.pixels if j.pixels is not None else max(known, default=1)
    for job, r in zip(todo, assign_ranks([j.pixels for j in todo], world)):
        job.rank = r
    return {"jobs": todo, "skipped": skipped}


def _check_unique(jobs: list[tuple[str, list[str], float | None]], out: Path,
                  output_format: str | None) -> None:
    seen: dict[Path, str] = {}
    for name, specs, _ in jobs:
        target = output_target(out, name, specs, output_format)
        if target in seen:
            raise CytogenError(f"{specs[0]} and {seen[target]} would both be written to {target}; "
                               "give fields unique names (rename a file or use a manifest 'name' column)")
        seen[target] = specs[0]


def _launch(device: str, devices: int, num_nodes: int) -> Any:
    """A launched Fabric: the other local processes started (or joined), the process group up."""
    from lightning.fabric import Fabric
    from lightning.fabric.strategies import DDPStrategy
    from lightning.fabric.utilities.exceptions import MisconfigurationException

    try:
        fabric = Fabric(accelerator=device, devices=devices, num_nodes=num_nodes,
                        strategy=DDPStrategy(process_group_backend="gloo", timeout=WAIT_FOR_RANKS))
        fabric.launch()
    except (ValueError, TypeError, MisconfigurationException) as exc:
        raise CytogenError(f"Lightning refused accelerator={device!r}, devices={devices}, "
                           f"num_nodes={num_nodes} ({str(exc).splitlines()[0]}); under SLURM or torchrun "
                           "give --devices and --num-nodes as the job has them") from None
    return fabric


def _collective(fn: Any, *args: Any) -> None:
    """Run a ``torch.distributed`` call; a lost peer becomes one clear error."""
    try:
        fn(*args)
    except (RuntimeError, ConnectionError) as exc:  # DistBackendError is a RuntimeError
        raise CytogenError(f"lost contact with another process of the run ({str(exc).splitlines()[0]}); "
                           "the outputs written so far are complete: rerun with --resume to predict the "
                           "rest") from None


def _broadcast(obj: Any) -> Any:
    import torch.distributed as dist

    box = [obj]
    if dist.is_available() and dist.is_initialized():
        _collective(dist.broadcast_object_list, box, 0)
    return box[0]


def _all_gather(obj: Any, world: int) -> list[Any]:
    import torch.distributed as dist

    if not (dist.is_available() and dist.is_initialized()):
        return [obj]
    box: list[Any] = [None] * world
    _collective(dist.all_gather_object, box, obj)
    return box


def _predict_share(model: Any, out: Path, mine: list[ShardJob], inputs: set[Path], tiling: Any,
                   settings: Any, output_format: str | None, loud: bool, rank: int,
                   device: str) -> dict[str, Any]:
    """Predict this rank's jobs, one at a time; a report of what was written, or the error."""
    report: dict[str, Any] = {"rank": rank, "host": socket.gethostname(), "device": device,
                              "fields": {}, "error": None}
    for i, job in enumerate(mine, 1):
        t0 = time.perf_counter()
        try:
            got = _predict_jobs(model, out, [(job.name, job.specs, job.pixel_um)], inputs, tiling,
                                settings, output_format, progress=False)
            if got != [job.target]:
                raise RuntimeError(f"internal: {job.name} written to {got}, planned {job.target}")
        except CytogenError as exc:
            report["error"] = str(exc)
            break
        except Exception as exc:  # a bug: its traceback goes to this rank's stderr
            traceback.print_exc()
            report["error"] = f"{type(exc).__name__}: {exc} (traceback above)"
            break
        seconds = time.perf_counter() - t0
        report["fields"][job.name] = {"output": job.target.name, "seconds": round(seconds, 3)}
        if loud:
            print(f"[{i}/{len(mine)}] {job.name} -> {job.target} ({seconds:.1f} s)", file=sys.stderr)
    return report


def predict_sharded(model_dir: str | Path, out: str | Path, *, files: list[str] | None = None,
                    data: str | Path | None = None, split: str | None = None, devices: int = 1,
                    num_nodes: int = 1, accelerator: str = "auto", resume: bool = False,
                    tile: tuple[int, ...] | None = None, overlap: float | None = None,
                    batch_size: int | None = None, blend: str | None = None,
                    output_format: str | None = None, precision: str = "auto", fast: bool = True,
                    compile: bool = False, memory_budget: float | None = None,
                    progress: bool = True, backend: str | None = None) -> ShardSummary:
    """Predict fields as :func:`~cytogen.workflows.predict.predict` does, on ``devices`` x
    ``num_nodes`` processes, each field once.

    Call it the same way in every process: it starts the other processes of this node itself
    (Lightning's launcher re-runs the command line), or joins a SLURM (``srun``) / torchrun job.

    Parameters
    ----------
    model_dir, out, files, data, split, tile, overlap, batch_size, blend, output_format, \
precision, fast, compile, memory_budget, backend
        As for :func:`~cytogen.workflows.predict.predict` (an ``auto`` tiling is resolved on
        each rank's device). ``out`` must be a folder every
        node sees (a shared file system).
    devices : int
        Processes per node: one per GPU (``cuda:<local rank>``), or CPU processes that share
        this node's cores (each gets cores / ``devices`` threads).
    num_nodes : int
        Machines of the job.
    accelerator : {"auto", "cpu", "gpu", "cuda"}
        ``auto``: GPUs where CUDA sees any, else CPU processes (with a note).
    resume
        Skip fields whose output exists (complete: outputs are written atomically) and
        predict only the missing ones; without it an existing output is overwritten.
    progress
        Rank 0 prints notes, one line per field of its own share and the summary to stderr;
        other ranks print only errors.

    Returns
    -------
    ShardSummary
        What was written and skipped, and by which rank.

    Raises
    ------
    CytogenError
        Bad input (before any process starts), or on rank 0 when any rank failed (it names
        the ranks and their errors; the fields written are complete, rerun with ``resume``).
    RankStopped
        On other ranks when the run failed (rank 0 says why).
    """
    _check_counts(devices, num_nodes)
    if output_format not in (None, *OUTPUT_FORMATS):
        raise CytogenError(f"output format {output_format!r} is not one of {OUTPUT_FORMATS}; "
                           "use --output-format tif or ome-zarr")
    zero = is_rank_zero()
    settings = resolve_runtime(precision, fast=fast, compile=compile, accelerator=accelerator,
                               devices=devices, inference=True, backend=backend)
    _check_gpus(settings.device, devices, num_nodes)
    if str(accelerator).lower() == "auto" and settings.device == "cpu":
        settings.notes.append(f"no GPU visible: {devices} CPU process(es) per node")
    model = load_model_folder(model_dir, device="cpu")
    tiling_args: dict[str, Any] = dict(tile=tile, overlap=overlap, batch_size=batch_size, blend=blend)
    if memory_budget is not None:  # GiB per batch of tiles for auto tiling
        tiling_args["memory_budget"] = memory_budget
    tiling = resolve_tiling(model, **tiling_args)  # bad settings are refused before any launch
    with nullcontext() if zero else redirect_stderr(io.StringIO()):  # "predicting split" once
        jobs = image_jobs(files, data, split)
    out = Path(out)
    inputs = check_out_folder(out, jobs)
    _check_unique(jobs, out, output_format)

    fabric = _launch(settings.device, devices, num_nodes)
    rank, world = fabric.global_rank, fabric.world_size
    loud = progress and rank == 0
    plan: dict[str, Any] | None = None
    if rank == 0:
        try:
            out.mkdir(parents=True, exist_ok=True)
            plan = _plan(jobs, out, output_format, resume, world)
        except CytogenError as exc:
            plan = {"error": str(exc)}
        except Exception as exc:  # a bug: tell the other ranks too, so none waits
            traceback.print_exc()
            plan = {"error": f"{type(exc).__name__}: {exc} (traceback above)"}
    plan = _broadcast(plan)
    if "error" in plan:
        raise CytogenError(plan["error"]) if rank == 0 else RankStopped(plan["error"])

    mine = [j for j in plan["jobs"] if j.rank == rank]
    if settings.device != "cpu":
        model = load_model_folder(model_dir, device=fabric.device)
        tiling = resolve_tiling(model, **tiling_args)
    settings.apply()
    if loud:
        for note in [tiling.describe(), *tiling.notes, *settings.notes]:
            print(f"note: {note}", file=sys.stderr)
        print(f"{len(plan['jobs'])} field(s) to predict on {world} process(es)"
              + (f", {len(plan['skipped'])} already done (skipped)" if plan["skipped"] else "")
              + f"; rank 0 predicts {len(mine)}", file=sys.stderr)
    report = _predict_share(model, out, mine, inputs, tiling, settings, output_format, loud, rank,
                            str(fabric.device))
    reports = _all_gather(report, world)

    done = {name: info for r in reports for name, info in r["fields"].items()}
    by_rank = {name: r["rank"] for r in reports for name in r["fields"]}
    failed = {r["rank"]: r["error"] for r in reports if r["error"]}
    written = [j.target for j in plan["jobs"] if j.name in by_rank]
    if rank == 0:
        write_json(out / "runtime.json", {
            **settings.to_dict(), "tiling": tiling.to_dict(),
            "distributed": {"world_size": world, "devices": devices, "num_nodes": num_nodes,
                            "backend": "gloo", "assignment": ASSIGNMENT},
            "resume": resume, "complete": not failed,
            "fields": {j.name: {"rank": j.rank, **done[j.name]} for j in plan["jobs"] if j.name in done},
            "skipped_existing": plan["skipped"],
            "ranks": [{k: r[k] for k in ("rank", "host", "device", "error")}
                      | {"n_fields": len(r["fields"]),
                         "seconds": round(sum(f["seconds"] for f in r["fields"].values()), 3)}
                      for r in reports],
        })
    _collective(fabric.barrier)  # nobody exits (and gets its node's processes killed) before rank 0 wrote
    if failed:
        missing = len(plan["jobs"]) - len(written)
        why = "; ".join(f"rank {r}: {msg}" for r, msg in sorted(failed.items()))
        message = (f"{len(failed)} of {world} process(es) failed ({why}); {len(written)} field(s) "
                   f"written, {missing} missing: fix the cause and rerun with --resume to predict "
                   "only the missing ones")
        raise CytogenError(message) if rank == 0 else RankStopped(message)
    return ShardSummary(rank, world, written, list(plan["skipped"]), by_rank)
