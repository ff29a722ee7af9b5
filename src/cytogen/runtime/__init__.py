"""Run-time speed settings: precision, memory layout, compilation, threads.

Chosen once per run from what the hardware measurably does well, recorded in the run folder
(``runtime.json``), and applied by the training and prediction workflows. ``models`` and
``tasks`` know nothing of this package; they only receive a memory format or a callable.
"""

from cytogen.runtime.probe import matmul_gflops, precision_probe
from cytogen.runtime.settings import PRECISIONS, RuntimeSettings, resolve_runtime

__all__ = ["PRECISIONS", "RuntimeSettings", "matmul_gflops", "precision_probe", "resolve_runtime"]
