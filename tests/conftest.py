"""Shared fixtures: the real data folder (skipped where absent), small synthetic sets (2D and 3D),
a seed, one intra-op thread, and the folder of the bundled recipes."""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_DATA = (REPO / ".." / "shared" / "data").resolve()
CONFIGS = REPO / "src" / "cytogen" / "configs"


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data`` next to the repository; skip where it is absent (a user's clone)."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data folder {SHARED_DATA} not available (only in the project checkout/CI)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def shared_path(shared_data: Path):
    """``shared_path("folder", "file.tif")``: a path inside ``../shared/data``; skips where absent."""

    def get(*parts: str) -> Path:
        path = shared_data.joinpath(*parts)
        if not path.exists():
            pytest.skip(f"../shared/data/{'/'.join(parts)} not available")
        return path

    return get


@pytest.fixture(scope="session")
def synth_set(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic 2D dataset (manifest path), made once per test session."""
    from cytogen.synth.cells import write_synthetic_dataset

    out = tmp_path_factory.mktemp("synth") / "set"
    return write_synthetic_dataset(out, n_fields=8, shape=(128, 128), seed=3)


@pytest.fixture(scope="session")
def synth3d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small synthetic 3D dataset (manifest path): 4 fields of 16 x 64 x 64, made once per session."""
    from cytogen.synth.cells import write_synthetic_dataset

    return write_synthetic_dataset(tmp_path_factory.mktemp("synth3d") / "set", n_fields=4,
                                   shape=(16, 64, 64), seed=2)


@pytest.fixture()
def seeded() -> int:
    """Seed torch and numpy's global generators with 0 (returns the seed)."""
    import numpy as np
    import torch

    torch.manual_seed(0)
    np.random.seed(0)
    return 0


@pytest.fixture(scope="module")
def one_thread():
    """Run the tests of a module with one intra-op thread, then restore the count
    (module-scoped, so module-scoped fixtures can depend on it; use it for a whole file with
    ``pytestmark = pytest.mark.usefixtures("one_thread")``).

    Tiny models are overhead-bound, and on a shared CI CPU two threads contend and run
    several times slower.
    """
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def configs() -> Path:
    """Folder of the bundled recipes (``configs/<name>.yaml``)."""
    return CONFIGS



def _trained_looking_batchnorm(net):
    """Give every BatchNorm layer of ``net`` running statistics away from (0, 1), as training
    would (drawn from torch's global RNG), so folding or exporting them is actually exercised."""
    import torch

    with torch.no_grad():
        for m in net.modules():
            if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                m.running_mean.uniform_(-0.3, 0.3)
                m.running_var.uniform_(0.5, 2.0)
    return net


@pytest.fixture(scope="session")
def trained_looking_batchnorm():
    """:func:`_trained_looking_batchnorm` for tests (``trained_looking_batchnorm(net)``)."""
    return _trained_looking_batchnorm
