"""Is int8 inference worth it here? CPU flags, the override and the optional dependency.

int8 convolutions only beat float32 on CPUs with integer dot-product instructions: Intel AMX
(``amx_int8``), AVX-512 VNNI (``avx512_vnni``), AVX-VNNI (``avx_vnni``) and, on Arm, the
dot-product / int8 matrix extensions (``asimddp``, ``i8mm``). Without them (e.g. AVX2 only)
ONNX Runtime emulates int8 dot products with 16-bit multiplies and int8 is no faster than
float32 while it costs accuracy, so :func:`resolve_int8` refuses ``precision="int8"`` there
unless the environment variable ``CYTOGEN_INT8_ANYWAY=1`` says to run it anyway (to test the
path, or measure it). int8 runs through ONNX Runtime (``pip install 'cytogen[onnx]'``); the
backend itself is :mod:`cytogen.predict.onnx_backend`.
"""

from __future__ import annotations

import importlib.util
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from cytogen.errors import CytogenError

if TYPE_CHECKING:  # pragma: no cover
    from cytogen.runtime.settings import RuntimeSettings

#: /proc/cpuinfo flags of CPUs whose int8 dot products are faster than float32 ones.
FAST_INT8_FLAGS = ("amx_int8", "avx512_vnni", "avx_vnni", "asimddp", "i8mm")
#: Set to 1 to run ``precision="int8"`` on a CPU without fast int8 instructions.
OVERRIDE_ENV = "CYTOGEN_INT8_ANYWAY"
#: The packages the int8 path imports, and the extra that installs them.
ONNX_MODULES = ("onnx", "onnxruntime", "onnxscript")
ONNX_EXTRA = "pip install 'cytogen[onnx]'"
_SHOWN = ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "neon", "asimd")


def cpu_flags(cpuinfo: str | Path = "/proc/cpuinfo") -> frozenset[str] | None:
    """The CPU feature flags of the first processor in ``cpuinfo``, or None when unreadable.

    Reads the ``flags`` line (x86) or the ``Features`` line (Arm).
    """
    try:
        text = Path(cpuinfo).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip().lower() in ("flags", "features"):
            return frozenset(value.split())
    return None


def fast_int8_flags(flags: frozenset[str] | None) -> tuple[str, ...]:
    """The members of :data:`FAST_INT8_FLAGS` present in ``flags`` (empty when None)."""
    return tuple(f for f in FAST_INT8_FLAGS if flags and f in flags)


def missing_onnx_modules() -> list[str]:
    """Which of :data:`ONNX_MODULES` cannot be imported."""
    return [m for m in ONNX_MODULES if importlib.util.find_spec(m) is None]


def _override(environ: Mapping[str, str]) -> bool:
    value = environ.get(OVERRIDE_ENV, "").strip().lower()
    if value in ("", "0", "false", "no"):
        return False
    if value in ("1", "true", "yes"):
        return True
    raise CytogenError(f"{OVERRIDE_ENV}={environ[OVERRIDE_ENV]!r} is not 0 or 1; set "
                       f"{OVERRIDE_ENV}=1 to run int8 on a CPU without fast int8, or unset it")


def int8_refusal(flags: frozenset[str] | None, environ: Mapping[str, str] | None = None,
                 missing: list[str] | None = None) -> str | None:
    """Why ``precision="int8"`` cannot run here (one line), or None when it can.

    Parameters
    ----------
    flags : frozenset of str or None
        From :func:`cpu_flags` (None: unknown, treated as no fast int8).
    environ : mapping, optional
        Where :data:`OVERRIDE_ENV` is looked up; default ``os.environ``.
    missing : list of str, optional
        Modules that cannot be imported; default :func:`missing_onnx_modules`.
    """
    environ = os.environ if environ is None else environ
    if not fast_int8_flags(flags) and not _override(environ):
        seen = ("none (CPU flags unreadable)" if flags is None
                else ", ".join(f for f in _SHOWN if f in flags) or "none of " + ", ".join(_SHOWN))
        return (f"precision int8 refused: this CPU has no fast int8 instructions (none of "
                f"{', '.join(FAST_INT8_FLAGS)}; it has {seen}), so int8 would be no faster than "
                f"float32 and less exact; use --precision 32 (or auto), or set {OVERRIDE_ENV}=1 "
                "to run int8 anyway")
    missing = missing_onnx_modules() if missing is None else missing
    if missing:
        return (f"precision int8 runs through ONNX Runtime, but {', '.join(missing)} "
                f"{'is' if len(missing) == 1 else 'are'} not installed; {ONNX_EXTRA}")
    return None


def resolve_int8(settings: RuntimeSettings, *, flags: frozenset[str] | None = None,
                 environ: Mapping[str, str] | None = None) -> RuntimeSettings:
    """Turn ``settings`` into an int8 run, or refuse with the reason.

    Parameters
    ----------
    settings : RuntimeSettings
        Resolved so far by :func:`~cytogen.runtime.resolve_runtime`; changed in place
        (``precision="int8"``, a note, the flags seen in ``probe``).
    flags : frozenset of str, optional
        CPU flags; default :func:`cpu_flags` of this machine.
    environ : mapping, optional
        Default ``os.environ``.

    Raises
    ------
    CytogenError
        A GPU device, ``compile``, a CPU without fast int8 (without the override), or ONNX
        Runtime not installed.
    """
    if settings.device != "cpu":
        raise CytogenError(f"precision int8 runs on the CPU through ONNX Runtime, not on "
                           f"{settings.device}; add --accelerator cpu, or use bf16-mixed on a GPU")
    if settings.compile:
        raise CytogenError("--compile is a PyTorch option and int8 runs through ONNX Runtime; "
                           "drop --compile")
    flags = cpu_flags() if flags is None else flags
    why = int8_refusal(flags, environ)
    if why:
        raise CytogenError(why)
    fast = fast_int8_flags(flags)
    settings.precision = "int8"
    settings.channels_last = False  # the ONNX graph has its own layout
    settings.probe["int8_fast_flags"] = list(fast)
    settings.notes.append("precision: int8 through ONNX Runtime (" + (
        f"fast int8 instructions: {', '.join(fast)})" if fast
        else f"no fast int8 instructions; run anyway because {OVERRIDE_ENV}=1)"))
    return settings


def resolve_onnxruntime(settings: RuntimeSettings, missing: list[str] | None = None) -> RuntimeSettings:
    """Turn ``settings`` into a float32 ONNX Runtime prediction run (``--backend onnxruntime``),
    or refuse when ONNX Runtime is not installed. The combinations that cannot run (GPU,
    ``--compile``, ``--no-fast``, bf16) are refused by :func:`~cytogen.runtime.resolve_runtime`."""
    missing = missing_onnx_modules() if missing is None else missing
    if missing:
        raise CytogenError(f"--backend onnxruntime needs {', '.join(missing)}, which "
                           f"{'is' if len(missing) == 1 else 'are'} not installed; {ONNX_EXTRA}")
    settings.precision = "32"
    settings.notes.append("backend: ONNX Runtime, float32 (the network exported once with "
                          "torch.onnx; its graph optimiser fuses convolution, normalisation and "
                          "activation)")
    return settings
