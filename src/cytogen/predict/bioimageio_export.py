"""A cytogen model folder as a bioimage.io model package (model spec 0.5) or an ONNX file.

:func:`write_bioimageio_package` builds the description with ``bioimageio.spec``'s own pydantic
classes (:mod:`bioimageio.spec.model.v0_5`), packs it with
:func:`bioimageio.spec.save_bioimageio_package` and, unless told not to, runs
:func:`bioimageio.core.test_model` on the written zip for every weight format before the
package is moved to its destination: a package that does not reproduce its test output is
never left behind. Pre- and postprocessing, weights, cover and README come from
:mod:`cytogen.predict.bioimageio_parts` (its docstring says how cytogen's normalisation maps onto
the spec). The test tensors are given by the caller (``cytogen.workflows.export`` makes the test
output with cytogen's own tiled prediction).

The ``pytorch_state_dict`` weights name their architecture as a library import
(``import_from: cytogen.models.unet``, ``callable: UNet`` and the model's keyword arguments):
bioimageio.core imports it from the installed cytogen, and the state dict is cytogen's own
(the keys of the registered class). A source-file architecture would have to copy cytogen's
building blocks into the package; the import keeps one definition of the network. The weights
declare a conda environment file that installs cytogen and torch with pip.
"""

from __future__ import annotations

import re
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cytogen import __version__
from cytogen.errors import CytogenError
from cytogen.io.atomic import atomic_file
from cytogen.models.registry import MODELS
from cytogen.predict import bioimageio_parts as parts
from cytogen.predict.model_folder import LoadedModel

BIOIMAGEIO_EXTRA = "install the bioimage.io extra: pip install -e '.[bioimageio]'"
DEFAULT_LICENSE = "BSD-3-Clause"


def _require_bioimageio() -> None:
    try:
        import bioimageio.core  # noqa: F401
        import bioimageio.spec  # noqa: F401
    except ImportError as exc:
        raise CytogenError(f"bioimage.io export needs bioimageio.core and bioimageio.spec ({exc}); "
                           f"{BIOIMAGEIO_EXTRA}") from None


def check_metadata(model: LoadedModel, *, authors: Sequence[str], license: str | None,
                   cite: Sequence[tuple[str, str]] | None, weights: Sequence[str]) -> str:
    """Refuse bad metadata before any work is done; returns the licence (SPDX id) to use."""
    from bioimageio.spec.model import v0_5 as s

    bad = [f for f in weights if f not in parts.WEIGHT_FORMATS]
    if bad or not weights:
        raise CytogenError(f"--weights {','.join(weights)}: choose from {','.join(parts.WEIGHT_FORMATS)}")
    if not authors:
        raise CytogenError(f"{model.folder}/model.json names no authors; give --authors 'Name;Name'")
    license = license or model.meta.get("license") or DEFAULT_LICENSE
    try:
        s.LicenseId(license)
    except ValueError:
        raise CytogenError(f"--license {license!r} is not an SPDX licence id; give one such as BSD-3-Clause, "
                           "MIT, Apache-2.0 or CC-BY-4.0 (https://spdx.org/licenses/)") from None
    _cites(model.meta["architecture"]["name"], cite)
    return license


def _names(names: Sequence[str] | None, n: int, prefix: str) -> list[str]:
    names = [str(v) for v in (names or [])]
    if len(names) != n or len(set(names)) != n:
        names = [f"{prefix}{i}" for i in range(n)]
    return names


def _safe_name(text: str) -> str:
    """Only the characters a bioimage.io ``name`` may hold (letters, digits, ``_+- ()``)."""
    name = re.sub(r"[^A-Za-z0-9_+\- ()]+", " ", text)
    return re.sub(r"\s+", " ", name).strip()[:64]


def _cites(arch: str, cite: Sequence[tuple[str, str]] | None) -> list[Any]:
    from bioimageio.spec.model import v0_5 as s

    entries = list(cite or []) + parts.ARCHITECTURE_CITES.get(arch, []) + [parts.VIRTUAL_STAINING_CITE]
    out = []
    for text, ref in entries:
        ref = ref.strip()
        if ref.startswith(("http://", "https://")):
            out.append(s.CiteEntry(text=text, url=s.HttpUrl(ref)))
        elif re.match(r"^10\.\d{4,9}/\S+$", ref):
            out.append(s.CiteEntry(text=text, doi=s.Doi(ref)))
        else:
            raise CytogenError(f"--cite {text}|{ref}: give a DOI (10.xxxx/...) or an http(s) URL after '|'")
    return out


def _environment(folder: Path) -> Path:
    """A conda environment file installing this cytogen and torch with pip."""
    torch_version = torch.__version__.split("+")[0]
    path = folder / "environment.yaml"
    path.write_text(
        "name: cytogen\nchannels:\n  - conda-forge\n  - nodefaults\ndependencies:\n  - python>=3.10\n"
        f"  - pip\n  - pip:\n    - cytogen=={__version__}\n    - torch=={torch_version}\n")
    return path


def _architecture(model: LoadedModel) -> Any:
    from bioimageio.spec.model import v0_5 as s

    arch = model.meta["architecture"]
    factory = MODELS.get(arch["name"])
    kwargs = {"in_channels": int(arch["in_channels"]), "out_channels": int(arch["out_channels"]),
              "dims": int(arch["dims"]), **arch.get("kwargs", {})}
    return s.ArchitectureFromLibraryDescr(import_from=factory.__module__,
                                          callable=s.Identifier(factory.__name__), kwargs=kwargs)


def _axes(model: LoadedModel, names: list[str], output: bool) -> list[Any]:
    from bioimageio.spec.model import v0_5 as s

    spatial = ["z", "y", "x"][-model.dims:]
    axes: list[Any] = [s.BatchAxis(), s.ChannelAxis(channel_names=list(names))]
    for a, m, (scale, unit) in zip(spatial, model.net.size_multiple, parts.pixel_scale(model)):
        if output:
            size: Any = s.SizeReference(tensor_id=s.TensorId("input"), axis_id=s.AxisId(a))
            axes.append(s.SpaceOutputAxis(id=s.AxisId(a), size=size, scale=scale, unit=unit))
        else:
            axes.append(s.SpaceInputAxis(id=s.AxisId(a), size=s.ParameterizedSize(min=int(m), step=int(m)),
                                         scale=scale, unit=unit))
    return axes


def _weights(model: LoadedModel, files: dict[str, Any], env: Path) -> Any:
    from bioimageio.spec.model import v0_5 as s

    version = s.Version(torch.__version__.split("+")[0])
    parent = "pytorch_state_dict" if "pytorch_state_dict" in files else None
    w: dict[str, Any] = {}
    if "pytorch_state_dict" in files:
        w["pytorch_state_dict"] = s.PytorchStateDictWeightsDescr(
            source=files["pytorch_state_dict"][0], architecture=_architecture(model), pytorch_version=version,
            dependencies=s.FileDescr(source=env))
    if "torchscript" in files:
        w["torchscript"] = s.TorchscriptWeightsDescr(source=files["torchscript"][0], pytorch_version=version,
                                                     parent=parent, comment="torch.jit.trace by cytogen")
    if "onnx" in files:
        w["onnx"] = s.OnnxWeightsDescr(source=files["onnx"][0], opset_version=files["onnx"][1]["opset_version"],
                                       parent=parent, comment="torch.onnx.export (dynamo) by cytogen")
    return s.WeightsDescr(**w)


def _describe(steps: list[Any], what: str) -> str:
    if not steps:
        return f"none ({what} are used as they are)"
    return "; ".join(f"`{st.id}` {st.kwargs.model_dump(exclude_none=True)}" for st in steps)


def write_bioimageio_package(model: LoadedModel, out: str | Path, *, test_input: np.ndarray,
                             test_output: np.ndarray, test_source: str, authors: Sequence[str],
                             name: str | None = None, description: str | None = None,
                             license: str | None = None, cite: Sequence[tuple[str, str]] | None = None,
                             weights: Sequence[str] = parts.WEIGHT_FORMATS, training: str | None = None,
                             check: bool = True) -> dict[str, Any]:
    """Write ``model`` as a bioimage.io model package (zip, model spec 0.5) at ``out``.

    Parameters
    ----------
    model
        From :func:`~cytogen.predict.model_folder.load_model_folder`.
    out
        The ``.zip`` to write (atomically: after a failure it is untouched).
    test_input, test_output
        ``(C, *spatial)`` raw test field crop (source units) and cytogen's prediction of it
        (target units), spatial sizes multiples of the network's ``size_multiple``.
    test_source
        Where the test crop came from (named in the README).
    authors
        Author names (at least one).
    name, description, license, cite
        Package metadata; ``license`` an SPDX id (default ``model.json``'s ``license``, else
        BSD-3-Clause, cytogen's own); ``cite`` extra ``(text, doi or url)`` entries (the
        architecture's paper and label-free prediction are always cited).
    weights
        Formats to include (:data:`~cytogen.predict.bioimageio_parts.WEIGHT_FORMATS`).
    training
        Text about the training data for the README (default: from the recipe).
    check
        Run :func:`bioimageio.core.test_model` on the package for every weight format before
        moving it to ``out``; a failure raises :class:`CytogenError` and writes nothing.

    Returns
    -------
    dict
        ``out``, the weight formats, ``tests`` (per format: ``passed`` or ``failed``, and
        the failing checks), the crop size and the package size in bytes.
    """
    _require_bioimageio()
    from bioimageio.spec import save_bioimageio_package
    from bioimageio.spec.model import v0_5 as s

    out = Path(out)
    if out.suffix.lower() != ".zip":
        raise CytogenError(f"{out}: a bioimage.io package is a .zip file; give --out NAME.zip")
    formats = tuple(dict.fromkeys(weights))
    license = check_metadata(model, authors=authors, license=license, cite=cite, weights=formats)
    spatial = ["z", "y", "x"][-model.dims:]
    pre, post = parts.preprocessing(model, spatial), parts.postprocessing(model)
    arch = model.meta["architecture"]["name"]
    src = _names(model.meta.get("source_channels"), model.in_channels, "source")
    tgt = _names(model.meta.get("target_channels"), model.out_channels, "target")
    x = np.ascontiguousarray(test_input, np.float32)[None]
    y = np.ascontiguousarray(test_output, np.float32)[None]
    if x.shape[2:] != y.shape[2:] or any(n % m for n, m in zip(x.shape[2:], model.net.size_multiple)):
        raise CytogenError(f"test input {x.shape} and output {y.shape}: spatial sizes must agree and be "
                           f"multiples of {model.net.size_multiple}")
    name = _safe_name(name or f"cytogen {arch} {' '.join(src)} to {' '.join(tgt)}")
    if len(name) < 5:
        raise CytogenError(f"--name {name!r}: give at least 5 letters, digits, spaces or _+-()")
    description = description or (f"cytogen {arch} ({model.dims}D) predicting {', '.join(tgt)} from "
                                  f"{', '.join(src)} (virtual staining / image translation)")
    training = training or _training(model)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="cytogen-bioimageio-") as tmp:
        d = Path(tmp)
        np.save(d / "test_input.npy", x)
        np.save(d / "test_output.npy", y)
        files = parts.write_weights(model.net, d, formats, torch.from_numpy(_normalised(model, x)),
                                    tuple(model.net.size_multiple))
        parts.write_cover(d / "cover.png", x[0], y[0])
        (d / "README.md").write_text(parts.readme(
            model, name=name, description=description, test_source=test_source, crop=x.shape[2:],
            pre=_describe(pre, "raw intensities"), post=_describe(post, "network outputs"),
            formats=formats, training=training))
        try:
            descr = s.ModelDescr(
                type="model", format_version=s.ModelDescr.implemented_format_version, name=name,
                description=description, authors=[s.Author(name=a) for a in authors],
                cite=_cites(arch, cite), license=license, documentation=s.FileDescr(source=d / "README.md"),
                covers=[s.FileDescr(source=d / "cover.png")], tags=["cytogen", "image-to-image", "virtual-staining",
                                                f"{model.dims}d", "pytorch"],
                inputs=[s.InputTensorDescr(
                    id=s.TensorId("input"), axes=_axes(model, src, False), preprocessing=pre,
                    test_tensor=s.FileDescr(source=d / "test_input.npy"),
                    description=f"raw {', '.join(src)}")],
                outputs=[s.OutputTensorDescr(
                    id=s.TensorId("output"), axes=_axes(model, tgt, True), postprocessing=post,
                    test_tensor=s.FileDescr(source=d / "test_output.npy"),
                    description=f"predicted {', '.join(tgt)} in target intensity units")],
                weights=_weights(model, files, _environment(d)),
                config={"cytogen": {"version": __version__, "architecture": model.meta["architecture"],
                                    "normalization": model.meta["normalization"],
                                    "pixel_size_um": model.meta.get("pixel_size_um"),
                                    "size_multiple": list(model.net.size_multiple)}})
        except ValueError as exc:  # pydantic.ValidationError: the spec refuses a value
            raise CytogenError(f"{model.folder}: the bioimage.io description is not valid: "
                               f"{' '.join(str(exc).split())[:600]}") from exc
        package = d / "package.zip"
        save_bioimageio_package(descr, output_path=package)
        tests = check_package(package, formats) if check else {}
        failed = {f: t for f, t in tests.items() if t["status"] != "passed"}
        if failed:
            raise CytogenError(f"{out}: the package fails bioimageio.core's test for {', '.join(failed)} "
                               f"({'; '.join(e for t in failed.values() for e in t['errors'])[:600]}); "
                               "nothing was written")
        with atomic_file(out) as target:
            target.write_bytes(package.read_bytes())
    return {"out": str(out), "format": "bioimageio", "format_version": str(descr.format_version),
            "weights": list(formats), "tests": tests, "crop": list(x.shape[2:]),
            "preprocessing": [st.id for st in pre], "postprocessing": [st.id for st in post],
            "bytes": out.stat().st_size}


def _training(model: LoadedModel) -> str:
    """What the model folder says about training (recipe, patch size, loss, best validation loss)."""
    recipe = model.meta.get("recipe") or {}
    lines = [f"* Recipe: {recipe.get('description') or recipe.get('task') or 'not recorded'}",
             f"* Patch size: {'x'.join(map(str, model.meta.get('patch_size') or [])) or 'not recorded'} px; "
             f"loss: {(recipe.get('loss') or {}).get('name', 'not recorded')}"]
    if model.meta.get("best_val_loss") is not None:
        lines.append(f"* Best validation loss: {model.meta['best_val_loss']:.4g}")
    return "\n".join(lines)


def _normalised(model: LoadedModel, x: np.ndarray) -> np.ndarray:
    """The network's input for the raw ``(1, C, ...)`` test crop (for tracing the weights)."""
    return model.source_norm.normalize(x[0])[None]


def check_package(package: str | Path, formats: Sequence[str] = parts.WEIGHT_FORMATS) -> dict[str, Any]:
    """:func:`bioimageio.core.test_model` per weight format: ``{format: {status, errors}}``.

    The package and everything it names are local files, so nothing is downloaded.
    """
    _require_bioimageio()
    from bioimageio.core import test_model

    result = {}
    for fmt in formats:
        summary = test_model(str(package), weight_format=fmt, devices=["cpu"])
        errors = [" ".join(f"{det.name}: {err.msg}".split()) for det in summary.details for err in det.errors]
        result[fmt] = {"status": str(summary.status), "errors": errors}
    return result
