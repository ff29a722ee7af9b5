"""Short throughput probes: is bf16 actually faster than float32 on this machine?

A CPU flag saying "bf16" is not enough: without AMX, or behind some hypervisors, bf16
convolutions run *slower* than float32. :func:`precision_probe` times the same
channels-last convolution in both precisions (interleaved, best of a few rounds, about 0.3 s)
and the caller picks bf16 only where it wins.
"""

from __future__ import annotations

import time
from functools import lru_cache

import torch
import torch.nn.functional as F


def _best_rate(fn, flops: float, rounds: int, reps: int) -> float:
    best = float("inf")
    for _ in range(rounds):
        t0 = time.perf_counter()
        for _ in range(reps):
            fn()
        best = min(best, (time.perf_counter() - t0) / reps)
    return flops / best / 1e9


def matmul_gflops(dtype: torch.dtype = torch.float32, n: int = 2048, rounds: int = 3,
                  device: str | torch.device = "cpu") -> float:
    """Best-of-``rounds`` square matmul rate in GFLOP/s (``2 n^3`` flops per product).

    Parameters
    ----------
    dtype : torch.dtype
        ``torch.float32``, ``torch.bfloat16`` or ``torch.float16``.
    n : int
        Matrix size.
    rounds : int
        Timed rounds (each about 0.1-0.5 s on a laptop CPU); the fastest counts.
    device : str or torch.device
        Where to measure.
    """
    device = torch.device(device)
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)

    def run() -> None:
        a @ b
        if device.type == "cuda":
            torch.cuda.synchronize()

    run()
    reps = 50 if device.type == "cuda" else max(1, int(2e10 // (2 * n**3)))
    return _best_rate(run, 2.0 * n**3, rounds, reps)


@lru_cache(maxsize=None)
def precision_probe(rounds: int = 3) -> dict[str, float]:
    """GFLOP/s of a 64->64 3x3 channels-last convolution in float32 and bf16 on the CPU.

    Returns
    -------
    dict
        ``{"conv_fp32_gflops": ..., "conv_bf16_gflops": ..., "bf16_speedup": ...}``;
        cached per process.
    """
    x = torch.randn(4, 64, 64, 64).contiguous(memory_format=torch.channels_last)
    w = torch.randn(64, 64, 3, 3).contiguous(memory_format=torch.channels_last)
    xb, wb = x.bfloat16(), w.bfloat16()
    flops = 2.0 * 4 * 64 * 64 * 9 * 64 * 64
    with torch.inference_mode():
        for _ in range(2):  # warm up both kernels
            F.conv2d(x, w, padding=1)
            F.conv2d(xb, wb, padding=1)
        fp32 = bf16 = 0.0
        for _ in range(rounds):  # interleaved so a noisy neighbour hits both alike
            fp32 = max(fp32, _best_rate(lambda: F.conv2d(x, w, padding=1), flops, 1, 4))
            bf16 = max(bf16, _best_rate(lambda: F.conv2d(xb, wb, padding=1), flops, 1, 4))
    return {"conv_fp32_gflops": round(fp32, 1), "conv_bf16_gflops": round(bf16, 1),
            "bf16_speedup": round(bf16 / fp32, 3)}
