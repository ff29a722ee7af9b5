"""Short throughput probes: is bf16 actually faster than float32 on this machine?

A CPU flag saying "bf16" is not enough: without AMX, or behind some hypervisors, bf16
convolutions run *slower* than float32. :func:`precision_probe` times the same
channels-last convolution in both precisions (interleaved, best of a few rounds, about 0.3 s)
and the caller picks bf16 only where it wins. Likewise :func:`layout_probe` times the model
itself in NCHW and channels-last, and :func:`cytogen.runtime.layout.choose_layout` keeps
channels-last only where it wins.
"""

from __future__ import annotations

import copy
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


#: channels-last must beat NCHW by this factor in :func:`layout_probe` to be chosen on a CPU.
CHANNELS_LAST_MIN_SPEEDUP = 1.05


def layout_probe(net: torch.nn.Module, example: torch.Tensor, *, train: bool = False,
                 autocast: torch.dtype | None = None, rounds: int = 2) -> dict[str, float]:
    """Seconds per pass of ``net`` on ``example`` in NCHW and in channels-last, interleaved.

    Which layout is faster depends on the machine, the model and the pass: on one AVX2 CPU a
    U-Net's inference ran 1.5x faster channels-last while its training step ran 8 % slower.
    The network is deep-copied, so its weights, BatchNorm statistics and gradients are
    untouched, and the random-number state is restored afterwards.

    Parameters
    ----------
    net : torch.nn.Module
        The network as it will run (eval mode for inference).
    example : torch.Tensor
        A batch of the shape it will see (``(B, C, [Z,] Y, X)``).
    train : bool
        Time forward plus backward (a training step) instead of an inference forward.
    autocast : torch.dtype, optional
        Run under CPU autocast to this dtype (the run's mixed precision), else float32.
    rounds : int
        Timed rounds per layout after one warm-up each; the fastest counts.

    Returns
    -------
    dict
        ``{"nchw_s", "channels_last_s", "channels_last_speedup", "train"}``.
    """
    fmt = torch.channels_last if example.ndim == 4 else torch.channels_last_3d
    with torch.random.fork_rng(devices=[]):
        nets = {"nchw": copy.deepcopy(net), "cl": copy.deepcopy(net).to(memory_format=fmt)}
        inputs = {"nchw": example.contiguous(), "cl": example.contiguous(memory_format=fmt)}

        def one(key: str) -> float:
            t0 = time.perf_counter()
            with torch.autocast("cpu", dtype=autocast or torch.bfloat16, enabled=autocast is not None):
                if train:
                    nets[key](inputs[key]).float().square().mean().backward()
                    nets[key].zero_grad(set_to_none=True)
                else:
                    with torch.inference_mode():
                        nets[key](inputs[key])
            return time.perf_counter() - t0

        best = {"nchw": float("inf"), "cl": float("inf")}
        for key in best:  # warm up both
            one(key)
        for _ in range(rounds):  # interleaved so a noisy neighbour hits both alike
            for key in best:
                best[key] = min(best[key], one(key))
    return {"nchw_s": round(best["nchw"], 4), "channels_last_s": round(best["cl"], 4),
            "channels_last_speedup": round(best["nchw"] / best["cl"], 3), "train": train}
