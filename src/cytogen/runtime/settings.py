"""Resolve the requested speed settings against the machine, once per run.

Defaults (``fast=True``, ``precision="auto"``):

- **channels-last** memory format for 2D and 3D convolutions (``channels_last`` /
  ``channels_last_3d``): on GPUs and in training always, in prediction on a CPU only where
  timing the model shows it faster than NCHW (:mod:`cytogen.runtime.layout`);
- **BatchNorm folded** into the convolution before it for prediction
  (:mod:`cytogen.runtime.fold`);
- **bf16 autocast** on a GPU that supports bf16 (else fp16 mixed precision), and on a CPU only
  where a short probe (:func:`~cytogen.runtime.probe.precision_probe`) shows bf16 convolutions
  to be at least ``BF16_MIN_SPEEDUP`` times faster than float32; otherwise float32 with a
  one-line note saying why;
- ``torch.compile`` only when asked (``compile=True``): the first steps then take tens of
  seconds to compile;
- one intra-op thread pool per process sized to the CPUs it may use, and no data-loader worker
  processes on small machines (patches are cut from fields already in memory).

``fast=False`` (``--no-fast``) gives plain float32 in the default layout: bit-exact with a
plain PyTorch loop on the same machine.
"""

from __future__ import annotations

import os
import platform
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from cytogen.errors import CytogenError
from cytogen.io.atomic import write_json

PRECISIONS = ("auto", "32", "bf16-mixed", "16-mixed")
_ALIASES = {"32-true": "32", "fp32": "32", "float32": "32", "bf16": "bf16-mixed",
            "16": "16-mixed", "fp16": "16-mixed"}
#: Precisions of prediction only (``resolve_runtime(..., inference=True)``): int8 through ONNX
#: Runtime, see :mod:`cytogen.runtime.int8`.
INFERENCE_PRECISIONS = (*PRECISIONS, "int8")
#: What runs the network in prediction: PyTorch, or ONNX Runtime on the CPU (float32, or int8
#: with ``precision="int8"``; see :mod:`cytogen.predict.onnx_backend`).
BACKENDS = ("torch", "onnxruntime")
#: bf16 must beat float32 by this factor in the probe to be chosen on a CPU.
BF16_MIN_SPEEDUP = 1.2


def _cpus() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS / Windows
        return os.cpu_count() or 1


@dataclass
class RuntimeSettings:
    """What a run actually uses (written to ``runtime.json`` in the run folder).

    Attributes
    ----------
    device : {"cpu", "cuda", "mps"}
        Where the model runs.
    precision : {"32", "bf16-mixed", "16-mixed"}
        Resolved precision (Lightning's names); mixed = autocast with float32 weights.
    requested_precision : str
        What the user or recipe asked for (``"auto"`` by default).
    fast : bool
        The fast path is on (``--no-fast`` turns it off): fused optimiser steps, BatchNorm
        folded into convolutions for prediction, the layout probe.
    channels_last : bool
        Convert models and batches to channels-last. For prediction on a CPU the fast path
        starts with it on and :func:`cytogen.runtime.layout.choose_layout` keeps it only where
        the model runs measurably faster so.
    compile : bool
        Wrap the generator with ``torch.compile``.
    threads : int
        Intra-op threads per process.
    num_workers : int
        Data-loader worker processes.
    backend : {"torch", "onnxruntime"}
        What runs the network in prediction (training is always PyTorch).
    notes : list of str
        One line per decision a user may want to know about (printed once).
    probe : dict
        Measured figures behind the choices (CPU convolution GFLOP/s per precision, the layout
        timing, folded layers, the int8 check, the ONNX export time).
    """

    device: str = "cpu"
    precision: str = "32"
    requested_precision: str = "auto"
    fast: bool = False
    channels_last: bool = False
    compile: bool = False
    threads: int = 1
    num_workers: int = 0
    backend: str = "torch"
    notes: list[str] = field(default_factory=list)
    probe: dict[str, Any] = field(default_factory=dict)

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        """Autocast dtype for inference, or None for plain float32."""
        return {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(self.precision)

    def memory_format(self, dims: int) -> torch.memory_format | None:
        """``channels_last`` (2D) / ``channels_last_3d`` (3D), or None when off."""
        if not self.channels_last:
            return None
        return torch.channels_last if dims == 2 else torch.channels_last_3d

    def apply(self) -> None:
        """Set the process's intra-op thread count (and TF32 on GPUs when fast)."""
        torch.set_num_threads(self.threads)
        if self.device == "cuda" and self.channels_last:
            torch.backends.cudnn.benchmark = True
            torch.set_float32_matmul_precision("high")

    def to_dict(self) -> dict[str, Any]:
        """Settings plus machine facts, for ``runtime.json``."""
        info = asdict(self)
        info.update(torch_version=torch.__version__, python=platform.python_version(),
                    cpu_capability=torch.backends.cpu.get_cpu_capability(), cpus=_cpus())
        if self.device == "cuda" and torch.cuda.is_available():
            info["gpu"] = torch.cuda.get_device_name(0)
        return info

    def write(self, path: str | Path) -> Path:
        """Write :meth:`to_dict` as JSON (atomically)."""
        return write_json(path, self.to_dict())


def normalize_precision(value: str, inference: bool = False) -> str:
    """Canonical precision name; raises :class:`CytogenError` for unknown ones (and for
    ``int8`` unless ``inference``: it is for prediction only)."""
    key = str(value).strip().lower()
    key = _ALIASES.get(key, key)
    if key == "int8" and not inference:
        raise CytogenError("precision int8 is for prediction only (cytogen predict --precision "
                           "int8, one process); train and run other steps in 32 or bf16-mixed")
    allowed = INFERENCE_PRECISIONS if inference else PRECISIONS
    if key not in allowed:
        raise CytogenError(f"precision {value!r} is not one of {list(allowed)} "
                           "(aliases: 32-true, bf16, 16)")
    return key


def _device(accelerator: str) -> str:
    acc = str(accelerator).lower()
    if acc == "auto":
        if torch.cuda.is_available():
            return "cuda"
        return "cpu"
    if acc in ("gpu", "cuda"):
        if not torch.cuda.is_available():
            raise CytogenError(f"accelerator {accelerator!r} asked for but no CUDA GPU is visible; "
                               "use --accelerator cpu (or auto)")
        return "cuda"
    if acc in ("cpu", "mps"):
        return acc
    raise CytogenError(f"accelerator {accelerator!r} is not one of auto, cpu, gpu, cuda, mps")


def _local_processes(devices: int | str, device: str) -> int:
    """Training processes one node runs for Lightning's ``devices`` value."""
    if isinstance(devices, int) and devices > 0:
        return devices
    if isinstance(devices, str) and devices.strip().isdigit():
        return max(1, int(devices))
    if isinstance(devices, str) and "," in devices:
        return len([d for d in devices.split(",") if d.strip()])
    return max(1, torch.cuda.device_count()) if device == "cuda" else 1


def _cpu_bf16_ok() -> bool:
    check = getattr(torch.ops.mkldnn, "_is_mkldnn_bf16_supported", None)
    return bool(torch.backends.mkldnn.is_available() and check is not None and check())


def resolve_runtime(precision: str = "auto", *, fast: bool = True, compile: bool = False,
                    accelerator: str = "auto", devices: int | str = 1,
                    processes_per_node: int | None = None, num_workers: int = -1,
                    probe: Callable[[], dict[str, float]] | None = None,
                    inference: bool = False, backend: str | None = None) -> RuntimeSettings:
    """Turn requested settings into what this machine will run.

    Parameters
    ----------
    precision : {"auto", "32", "bf16-mixed", "16-mixed"}
        ``auto`` picks bf16/fp16 mixed precision where it is supported and (on CPUs) faster.
    fast : bool
        False gives plain float32, default memory layout, no compilation.
    compile : bool
        Use ``torch.compile`` (needs ``fast``).
    accelerator : str
        ``auto``, ``cpu``, ``gpu``/``cuda`` or ``mps``.
    devices : int or str
        Lightning's ``devices`` (``2``, ``"0,1"``, ``-1``): sets how many processes share
        this machine's CPUs.
    processes_per_node : int, optional
        Overrides the process count derived from ``devices``.
    num_workers : int
        Data-loader workers; ``-1`` chooses (0 where a process has <= 8 CPUs).
    probe : callable, optional
        Replaces :func:`~cytogen.runtime.probe.precision_probe` (tests).
    inference : bool
        Prediction only: also accepts ``precision="int8"`` (checked by
        :func:`~cytogen.runtime.int8.resolve_int8`) and ``backend``.
    backend : {"torch", "onnxruntime"}, optional
        Prediction only. ``onnxruntime`` runs the network through ONNX Runtime on the CPU in
        float32 (``precision`` auto or 32) or int8; default ``torch``, except for int8 (which
        only ONNX Runtime runs).

    Raises
    ------
    CytogenError
        Unknown precision, ``compile`` without ``fast``, a precision the device cannot run.
    """
    from cytogen.runtime.probe import precision_probe

    requested = normalize_precision(precision, inference=inference)
    device = _device(accelerator)
    if compile and not fast:
        raise CytogenError("--compile and --no-fast contradict each other; drop one")
    if not fast and requested not in ("auto", "32"):
        raise CytogenError(f"--no-fast means float32, but precision {requested!r} was asked for; "
                           "drop one of them")
    procs = processes_per_node if processes_per_node is not None else _local_processes(devices, device)
    per_proc = max(1, _cpus() // max(1, int(procs)))
    workers = int(num_workers) if num_workers >= 0 else (0 if device == "cpu" and per_proc <= 8
                                                         else min(4, per_proc // 2))
    settings = RuntimeSettings(device=device, requested_precision=requested, fast=fast, channels_last=fast,
                               compile=compile, threads=per_proc, num_workers=workers)
    notes = settings.notes
    chosen = _backend(backend, requested, inference, device, compile, fast)
    if chosen == "onnxruntime":
        from cytogen.runtime.int8 import resolve_int8, resolve_onnxruntime

        settings.backend, settings.channels_last = chosen, False  # the ONNX graph has its own layout
        return resolve_int8(settings) if requested == "int8" else resolve_onnxruntime(settings)
    if requested == "16-mixed" and device == "cpu":
        raise CytogenError("precision 16-mixed needs a GPU; on a CPU use bf16-mixed or 32")
    if requested == "bf16-mixed" and device == "cpu" and not _cpu_bf16_ok():
        raise CytogenError("this CPU has no bf16 support; use precision 32 (or auto)")
    if requested != "auto":
        settings.precision = requested
    elif not fast:
        settings.precision = "32"
    elif device == "cuda":
        settings.precision = "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    elif device == "mps":
        settings.precision = "32"
        notes.append("precision: float32 (mixed precision on Apple GPUs is left to --precision)")
    elif not _cpu_bf16_ok():
        settings.precision = "32"
        notes.append("precision: float32 (this CPU has no bf16 instructions)")
    else:
        settings.probe = dict((probe or precision_probe)())
        speedup = settings.probe.get("bf16_speedup", 0.0)
        if speedup >= BF16_MIN_SPEEDUP:
            settings.precision = "bf16-mixed"
            notes.append(f"precision: bf16 autocast (bf16 convolutions {speedup:.2f}x float32 here)")
        else:
            settings.precision = "32"
            notes.append(f"precision: float32 (bf16 is not faster on this CPU: "
                         f"{settings.probe.get('conv_bf16_gflops')} vs "
                         f"{settings.probe.get('conv_fp32_gflops')} GFLOP/s)")
    return settings


def _backend(backend: str | None, precision: str, inference: bool, device: str, compile: bool,
             fast: bool) -> str:
    """The prediction backend, or one clear refusal of a combination that cannot run."""
    if backend is None:
        return "onnxruntime" if precision == "int8" else "torch"
    key = str(backend).strip().lower().replace("-", "").replace("_", "")
    key = {"onnx": "onnxruntime", "ort": "onnxruntime", "pytorch": "torch"}.get(key, key)
    if key not in BACKENDS:
        raise CytogenError(f"backend {backend!r} is not one of {list(BACKENDS)}")
    if key == "torch":
        if precision == "int8":
            raise CytogenError("precision int8 runs through ONNX Runtime; drop --backend torch "
                               "(or use --backend onnxruntime)")
        return key
    if not inference:
        raise CytogenError("the onnxruntime backend is for prediction only (cytogen predict "
                           "--backend onnxruntime); training runs in PyTorch")
    if device != "cpu":
        raise CytogenError(f"the onnxruntime backend runs on the CPU here, not on {device}; add "
                           "--accelerator cpu, or use --backend torch on a GPU")
    if compile:
        raise CytogenError("--compile is a PyTorch option and --backend onnxruntime runs ONNX "
                           "Runtime; drop one of them")
    if not fast:
        raise CytogenError("--no-fast means plain PyTorch float32; drop it or --backend onnxruntime")
    if precision not in ("auto", "32", "int8"):
        raise CytogenError(f"--backend onnxruntime runs float32 (precision auto or 32) or int8, not "
                           f"{precision!r}")
    return key
