"""ONNX Runtime tile functions: float32, and int8 accepted only within a tolerance of float32.

The generator is exported once with :func:`torch.onnx.export` (the torch.export-based exporter,
dynamic batch and spatial sizes in multiples of ``size_multiple``), then run by an ONNX Runtime
``InferenceSession`` on the CPU with the run's thread count (:func:`onnx_fn`;
:class:`Float32TileFn` for ``cytogen predict --backend onnxruntime``). For int8
(:class:`Int8TileFn`) the float32 graph is statically quantised with
:func:`onnxruntime.quantization.quantize_static`: QDQ format, int8 weights per output channel,
int8 activations with ranges calibrated on real normalised tiles (by default MinMax or
Percentile, whichever brings the int8 output closer to float32 on those tiles; the measured errors
on SBS fields are in ``benchmarks/int8.py``). Before its output is used the int8
graph is compared with the float32 graph on the same tiles, and refused
(:class:`Int8ToleranceError`) when the normalised RMS error exceeds the tolerance: there is no
silent fallback to float32.

Both tile functions keep the contract of :func:`cytogen.runtime.inference.inference_fn`:
``fn(x)`` maps a float32 ``(B, C, *tile)`` tensor to a float32 ``(B, C_out, *tile)`` tensor.
"""

from __future__ import annotations

import io
import logging
import tempfile
import time
import warnings
from collections.abc import Callable, Sequence
from contextlib import contextmanager, redirect_stdout
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import torch

from cytogen.errors import CytogenError
from cytogen.runtime.int8 import ONNX_EXTRA, missing_onnx_modules

#: int8 is refused when RMS(int8 - float32) / std(float32) on the checked tiles exceeds this.
#: Why 0.1: an error uncorrelated with the truth lowers the Pearson r of a prediction against any
#: truth by the factor 1 / sqrt(1 + 0.1**2) = 0.995 at most, i.e. by <= 0.005: unchanged at the
#: second decimal (it is also a Pearson r of >= 0.995 between int8 and float32 outputs).
INT8_TOLERANCE = 0.1
#: Calibration methods of onnxruntime.quantization offered; "auto" (the default of
#: :class:`Int8TileFn`) quantises with each of :data:`AUTO_METHODS` and keeps the one whose int8
#: output is closest to float32 on the calibration tiles (on SBS fields MinMax won with 4 tiles of
#: 256 px, Percentile with whole fields: ``benchmarks/int8.py``).
CALIBRATION_METHODS = ("minmax", "percentile", "entropy")
AUTO_METHODS = ("minmax", "percentile")


class Int8ToleranceError(CytogenError):
    """int8 outputs differ from float32 by more than the tolerance on real tiles."""


def _require_onnx() -> None:
    missing = missing_onnx_modules()
    if missing:
        raise CytogenError(f"ONNX Runtime inference needs {', '.join(missing)}; {ONNX_EXTRA}")


@contextmanager
def _quiet_export() -> Iterator[None]:
    """Silence the exporter's and quantiser's chatter (registry warnings, deprecations, the
    calibrators' progress prints) for one export or quantisation; errors still raise."""
    loggers = [logging.getLogger(n) for n in ("", "torch.onnx", "onnxscript", "torch._dynamo",
                                              "torch.export", "torch.fx.experimental.symbolic_shapes")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings(), redirect_stdout(io.StringIO()):
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels):
            lg.setLevel(level)


def export_onnx(net: torch.nn.Module, example: torch.Tensor, path: str | Path,
                size_multiple: Sequence[int] | int = 1) -> Path:
    """Export ``net`` (in eval mode, float32, CPU) to ONNX at ``path``.

    Parameters
    ----------
    net : torch.nn.Module
        A generator ``(B, C, *spatial) -> (B, C_out, *spatial)``.
    example : torch.Tensor
        A float32 input of the right channel count and rank (batch >= 2, so the batch axis
        stays dynamic).
    path : str or Path
        Output ``.onnx`` file.
    size_multiple : int or sequence of int
        Per spatial axis, what the input size is a multiple of (the generator's
        ``size_multiple``): spatial axes are exported as dynamic multiples of it.

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    _require_onnx()
    net = net.eval()
    dims = example.ndim - 2
    mult = (size_multiple,) * dims if isinstance(size_multiple, int) else tuple(size_multiple)
    Dim = torch.export.Dim
    shapes: dict[int, Any] = {0: Dim("batch", min=1, max=65536)}
    for i, m in enumerate(mult):
        d = Dim(f"s{i}", min=1, max=65536)
        shapes[2 + i] = d if m == 1 else m * d
    example = example.detach().float().cpu().contiguous()
    with torch.no_grad(), _quiet_export():
        torch.onnx.export(net, (example,), str(path), dynamo=True, input_names=["x"],
                          output_names=["y"], dynamic_shapes={"x": shapes}, optimize=True,
                          external_data=False, verbose=False)
    return Path(path)


class _Tiles:
    """onnxruntime.quantization calibration reader: one tile per call."""

    def __init__(self, tiles: np.ndarray) -> None:
        self._it = iter([{"x": t[None]} for t in np.ascontiguousarray(tiles, np.float32)])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._it, None)


def quantize_int8(fp32_path: str | Path, int8_path: str | Path, calibration: np.ndarray,
                  method: str = "minmax") -> Path:
    """Statically quantise an ONNX model: QDQ, per-channel int8 weights, int8 activations.

    Parameters
    ----------
    fp32_path, int8_path : str or Path
        Float32 input model and quantised output model.
    calibration : numpy.ndarray
        ``(N, C, *tile)`` float32 normalised tiles the activation ranges are measured on.
    method : {"minmax", "percentile", "entropy"}
        onnxruntime's calibration: MinMax (ranges = observed extremes), Percentile
        (99.999th percentile of absolute values) or Entropy (KL-divergence-optimal ranges).

    Returns
    -------
    pathlib.Path
        ``int8_path``.
    """
    _require_onnx()
    from onnxruntime.quantization import (CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    methods = {"minmax": CalibrationMethod.MinMax, "percentile": CalibrationMethod.Percentile,
               "entropy": CalibrationMethod.Entropy}
    if method not in methods:
        raise CytogenError(f"calibration method {method!r} is not one of {list(methods)}")
    if calibration.ndim < 3 or len(calibration) == 0:
        raise CytogenError(f"calibration tiles must be (N, C, *tile) with N >= 1, got shape "
                           f"{calibration.shape}")
    extra = {"CalibPercentile": 99.999} if method == "percentile" else {}
    with _quiet_export():
        quantize_static(str(fp32_path), str(int8_path), _Tiles(calibration),
                        quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8, weight_type=QuantType.QInt8,
                        calibrate_method=methods[method],
                        calibration_providers=["CPUExecutionProvider"], extra_options=extra)
    return Path(int8_path)


def ort_session(model: str | Path | bytes, threads: int) -> Any:
    """A CPU ``onnxruntime.InferenceSession`` with ``threads`` intra-op threads."""
    _require_onnx()
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, int(threads))
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    src = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(src, opts, providers=["CPUExecutionProvider"])


def onnx_fn(session: Any) -> Callable[[torch.Tensor], torch.Tensor]:
    """Tile function running ``session``: float32 ``(B, C, *tile)`` tensor in, float32 out."""
    name = session.get_inputs()[0].name

    def fn(x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        return torch.from_numpy(session.run(None, {name: arr})[0])

    return fn


def agreement(y: np.ndarray, ref: np.ndarray) -> dict[str, float]:
    """How close ``y`` is to ``ref``: normalised RMS error, 1 - Pearson r, max abs error.

    ``nrmse = RMS(y - ref) / std(ref)`` over all pixels of all tiles and channels.
    """
    y = np.asarray(y, np.float64).ravel()
    ref = np.asarray(ref, np.float64).ravel()
    sd = float(ref.std())
    err = y - ref
    rms = float(np.sqrt(np.mean(err**2)))
    if sd == 0.0:  # a constant reference: only exact agreement counts
        return {"nrmse": 0.0 if rms == 0.0 else float("inf"), "one_minus_r": 0.0 if rms == 0.0 else 1.0,
                "max_abs": float(np.abs(err).max())}
    r = float(np.corrcoef(y, ref)[0, 1]) if float(y.std()) > 0 else 0.0
    return {"nrmse": rms / sd, "one_minus_r": 1.0 - r, "max_abs": float(np.abs(err).max())}


def onnx_float32_fn(net: torch.nn.Module, example: torch.Tensor, threads: int,
                    size_multiple: Sequence[int] | int = 1
                    ) -> Callable[[torch.Tensor], torch.Tensor]:
    """``net`` exported to ONNX and run by ONNX Runtime in float32 (see :func:`export_onnx`)."""
    with tempfile.TemporaryDirectory(prefix="cytogen-onnx-") as tmp:
        path = export_onnx(net, _example(example), Path(tmp) / "fp32.onnx", size_multiple)
        return onnx_fn(ort_session(path.read_bytes(), threads))


class Float32TileFn:
    """Float32 ONNX Runtime tile function, exported from ``net`` on its first call (the first
    batch gives the channel count and rank; the spatial axes stay dynamic).

    Parameters
    ----------
    net : torch.nn.Module
        The generator (exported in eval mode on the CPU; not modified otherwise).
    threads : int
        ONNX Runtime intra-op threads.
    size_multiple : int or sequence of int
        The generator's ``size_multiple`` (see :func:`export_onnx`).
    report : dict, optional
        Receives ``onnx_export_s`` (seconds to export and load).
    """

    def __init__(self, net: torch.nn.Module, threads: int, size_multiple: Sequence[int] | int = 1,
                 report: dict[str, Any] | None = None) -> None:
        self.net, self.threads, self.size_multiple = net, threads, size_multiple
        self.report = report if report is not None else {}
        self._fn: Callable[[torch.Tensor], torch.Tensor] | None = None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if self._fn is None:
            t0 = time.perf_counter()
            self._fn = onnx_float32_fn(self.net.eval().cpu(), x.float().cpu(), self.threads,
                                       self.size_multiple)
            self.report["onnx_export_s"] = round(time.perf_counter() - t0, 2)
        return self._fn(x)


def _example(x: torch.Tensor) -> torch.Tensor:
    """At least two tiles, so that the exporter keeps the batch axis dynamic."""
    x = x[:2]
    return x if len(x) >= 2 else torch.cat([x, x])


class Int8TileFn:
    """An int8 tile function built on its first call, checked against float32 before use.

    On the first call (or :meth:`prepare`) the generator is exported to ONNX, quantised with
    the first batch of tiles it is given as calibration data (real normalised tiles of the
    image being predicted) unless ``calibration`` tiles were given, and both graphs get a
    session. On each of the first ``check_calls`` calls the batch also runs in float32 and
    the int8 output is refused (:class:`Int8ToleranceError`) when its normalised RMS error
    exceeds ``tolerance``; the first check is on the calibration tiles themselves, later
    ones are on tiles the calibration did not see.

    Parameters
    ----------
    net : torch.nn.Module
        The float32 generator (on the CPU).
    threads : int
        ONNX Runtime intra-op threads.
    size_multiple : int or sequence of int
        The generator's ``size_multiple`` (dynamic spatial sizes of the export).
    tolerance : float, optional
        Largest accepted ``RMS(int8 - float32) / std(float32)``; default
        :data:`INT8_TOLERANCE`.
    calibration : numpy.ndarray, optional
        ``(N, C, *tile)`` calibration tiles; default: the first batch predicted.
    method : {"auto", "minmax", "percentile", "entropy"}
        Calibration method, see :func:`quantize_int8`; ``auto`` tries :data:`AUTO_METHODS` and
        keeps the one with the smaller error against float32 on the calibration tiles.
    check_calls : int
        How many calls (batches) are compared with float32 (>= 1).
    onnx_model : bytes, optional
        A float32 export of ``net`` (:func:`export_onnx`) to quantise instead of exporting
        it again.
    report : dict, optional
        Receives the measured figures (``int8_nrmse``, ``int8_one_minus_r``, ...) as they
        are measured, e.g. ``RuntimeSettings.probe`` so they reach ``runtime.json``.

    Attributes
    ----------
    int8_model, fp32_model : bytes
        The serialised ONNX models (after the first call).
    checks : list of dict
        :func:`agreement` of each checked batch, with its tile count.
    """

    def __init__(self, net: torch.nn.Module, threads: int, size_multiple: Sequence[int] | int = 1,
                 *, tolerance: float | None = None, calibration: np.ndarray | None = None,
                 method: str = "auto", check_calls: int = 2, onnx_model: bytes | None = None,
                 report: dict[str, Any] | None = None) -> None:
        _require_onnx()
        tolerance = INT8_TOLERANCE if tolerance is None else tolerance
        if not tolerance > 0:
            raise CytogenError(f"int8 tolerance must be > 0, got {tolerance}")
        if method not in ("auto", *CALIBRATION_METHODS):
            raise CytogenError(f"calibration method {method!r} is not one of "
                               f"{['auto', *CALIBRATION_METHODS]}")
        if check_calls < 1:
            raise CytogenError(f"check_calls must be >= 1 (int8 is never used unchecked), got {check_calls}")
        self.net, self.threads, self.size_multiple = net, int(threads), size_multiple
        self.tolerance, self.method, self.check_calls = float(tolerance), method, int(check_calls)
        self.calibration = calibration
        self.report = report if report is not None else {}
        self.checks: list[dict[str, float]] = []
        self.fp32_model, self.int8_model = onnx_model or b"", b""
        self._int8: Any = None
        self._fp32: Any = None
        self._calls = 0

    def prepare(self, tiles: np.ndarray) -> None:
        """Export, calibrate on ``self.calibration`` or else ``tiles``, quantise, open sessions."""
        t0 = time.perf_counter()
        calib = np.asarray(self.calibration if self.calibration is not None else tiles, np.float32)
        with tempfile.TemporaryDirectory(prefix="cytogen-int8-") as tmp:
            fp32 = Path(tmp) / "fp32.onnx"
            if self.fp32_model:
                fp32.write_bytes(self.fp32_model)
            else:
                export_onnx(self.net, _example(torch.from_numpy(calib)), fp32, self.size_multiple)
            self.fp32_model = fp32.read_bytes()
            self._fp32 = ort_session(self.fp32_model, self.threads)
            methods = AUTO_METHODS if self.method == "auto" else (self.method,)
            errors: dict[str, float] = {}
            for m in methods:
                model = quantize_int8(fp32, Path(tmp) / f"int8_{m}.onnx", calib, m).read_bytes()
                session = ort_session(model, self.threads)
                if len(methods) > 1:  # choose by the measured error on the calibration tiles
                    errors[m] = agreement(session.run(None, {"x": calib})[0],
                                          self._fp32.run(None, {"x": calib})[0])["nrmse"]
                if not errors or errors[m] == min(errors.values()):
                    self.int8_model, self._int8, chosen = model, session, m
        if errors:
            self.report["int8_calibration_nrmse"] = {m: round(e, 5) for m, e in errors.items()}
        self.report.update(int8_calibration=chosen, int8_calibration_tiles=int(len(calib)),
                           int8_tolerance_nrmse=self.tolerance,
                           int8_prepare_s=round(time.perf_counter() - t0, 2))

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        arr = np.ascontiguousarray(x.detach().cpu().numpy(), dtype=np.float32)
        if self._int8 is None:
            self.prepare(arr)
        y = self._int8.run(None, {"x": arr})[0]
        if self._calls < self.check_calls:
            t0 = time.perf_counter()
            ref = self._fp32.run(None, {"x": arr})[0]
            self.report["int8_check_s"] = round(self.report.get("int8_check_s", 0.0)
                                                + time.perf_counter() - t0, 3)
            self._check(y, ref, len(arr))
        self._calls += 1
        return torch.from_numpy(y)

    def _check(self, y: np.ndarray, ref: np.ndarray, tiles: int) -> None:
        a = agreement(y, ref)
        self.checks.append({**a, "tiles": tiles})
        worst = max(self.checks, key=lambda c: c["nrmse"])
        self.report.update(int8_nrmse=round(worst["nrmse"], 5),
                           int8_one_minus_r=round(worst["one_minus_r"], 6),
                           int8_checked_tiles=int(sum(c["tiles"] for c in self.checks)))
        if not a["nrmse"] <= self.tolerance:
            raise Int8ToleranceError(
                f"int8 refused for this model: on {tiles} tile(s) of the first image its output "
                f"differs from float32 by a normalised RMS error of {a['nrmse']:.4f} "
                f"(1 - Pearson r = {a['one_minus_r']:.5f}), above the tolerance "
                f"{self.tolerance}; predict with --precision 32 (or auto)")
