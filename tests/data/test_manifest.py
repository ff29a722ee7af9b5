from pathlib import Path

import numpy as np
import pytest
import tifffile

from cytogen.data.manifest import assign_splits, build_manifest, read_manifest, write_manifest
from cytogen.errors import CytogenError


def _img(path: Path, value: int = 1, shape=(8, 8)) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(path, np.full(shape, value, np.uint8))
    return path


def test_read_manifest_resolves_paths_channels_and_defaults(tmp_path):
    _img(tmp_path / "a" / "x1.tif")
    _img(tmp_path / "a" / "y1.tif")
    _img(tmp_path / "a" / "z1.tif")
    (tmp_path / "m.csv").write_text(
        "source,target,split,pixel_size_um\n"
        "a/x1.tif;a/z1.tif#c=0,a/y1.tif,val,0.65\n"
    )
    (e,) = read_manifest(tmp_path / "m.csv")
    assert e.name == "x1"  # default name: stem of the first source
    assert e.source == [str(tmp_path / "a/x1.tif"), str(tmp_path / "a/z1.tif") + "#c=0"]
    assert e.target == [str(tmp_path / "a/y1.tif")]
    assert e.split == "val" and e.pixel_size_um == 0.65 and e.mask is None


@pytest.mark.parametrize("body, message", [
    ("source\nx.tif\n", "columns"),
    ("source,target,colour\nx.tif,x.tif,red\n", "unknown manifest column"),
    ("source,target\nmissing.tif,x.tif\n", "does not exist"),
    ("source,target,split\nx.tif,x.tif,training\n", "split"),
    ("source,target,pixel_size_um\nx.tif,x.tif,-1\n", "positive"),
    ("source,target,pixel_size_um\nx.tif,x.tif,abc\n", "not a number"),
    ("name,source,target\nf,x.tif,x.tif\nf,x.tif,x.tif\n", "duplicate field name"),
    ("source,target\n,x.tif\n", "empty 'source'"),
    ("source,target\n", "no rows"),
])
def test_bad_manifests_raise_clear_errors(tmp_path, body, message):
    _img(tmp_path / "x.tif")
    (tmp_path / "m.csv").write_text(body)
    with pytest.raises(CytogenError, match=message) as exc:
        read_manifest(tmp_path / "m.csv")
    assert "m.csv" in str(exc.value)


def test_missing_manifest(tmp_path):
    with pytest.raises(CytogenError, match="not found"):
        read_manifest(tmp_path / "nope.csv")


def test_build_manifest_pairs_by_varying_part_and_test_match(tmp_path):
    for well in ("01-A-01", "02-A-02", "03-C-01", "04-G-01", "05-G-02", "06-E-03", "07-E-04"):
        _img(tmp_path / f"Channel1-{well}.tif")
        _img(tmp_path / f"Channel2-{well}.tif")
    _img(tmp_path / "Channel1-99-A-09.tif")  # no partner: must be left out
    out = build_manifest(tmp_path, "Channel1-*.tif", "Channel2-*.tif", tmp_path / "man" / "m.csv",
                         test_match="-G-", val_fraction=0.2, seed=1)
    entries = read_manifest(out)
    assert len(entries) == 7
    by_name = {e.name: e for e in entries}
    assert by_name["04-G-01"].source[0].endswith("Channel1-04-G-01.tif")
    assert by_name["04-G-01"].target[0].endswith("Channel2-04-G-01.tif")
    assert {e.name for e in entries if e.split == "test"} == {"04-G-01", "05-G-02"}
    assert sum(e.split == "val" for e in entries) == 1
    # reproducible for a seed
    again = build_manifest(tmp_path, "Channel1-*.tif", "Channel2-*.tif", tmp_path / "m2.csv",
                           test_match="-G-", val_fraction=0.2, seed=1)
    assert [e.split for e in read_manifest(again)] == [e.split for e in entries]


def test_build_manifest_in_subfolders_and_errors(tmp_path):
    for i in range(4):
        _img(tmp_path / "actin" / f"f{i}.tif")
        _img(tmp_path / "dna" / f"f{i}.tif")
    out = build_manifest(tmp_path, "actin/*.tif", "dna/*.tif", tmp_path / "m.csv", seed=0)
    entries = read_manifest(out)
    assert sorted(e.name for e in entries) == ["f0", "f1", "f2", "f3"]
    with pytest.raises(CytogenError, match="no file matches"):
        build_manifest(tmp_path, "actin/*.png", "dna/*.tif", tmp_path / "m3.csv")
    with pytest.raises(CytogenError, match="matches no field"):
        build_manifest(tmp_path, "actin/*.tif", "dna/*.tif", tmp_path / "m4.csv", test_match="zzz")


def test_write_read_round_trip(tmp_path):
    _img(tmp_path / "s.tif")
    _img(tmp_path / "t.tif")
    (tmp_path / "m.csv").write_text("name,source,target,group\nf1,s.tif#c=0,t.tif,g1\n")
    entries = read_manifest(tmp_path / "m.csv")
    sub = tmp_path / "sub"
    sub.mkdir()
    write_manifest(sub / "copy.csv", entries)
    assert read_manifest(sub / "copy.csv")[0].source == [str((tmp_path / "s.tif").resolve()) + "#c=0"]
    assert read_manifest(sub / "copy.csv")[0].group == "g1"


def test_assign_splits_groups_stay_together_and_fractions():
    names = [f"f{i}" for i in range(40)]
    groups = [f"g{i // 4}" for i in range(40)]
    splits = assign_splits(names, groups, val_fraction=0.2, test_fraction=0.2, seed=0)
    for g in set(groups):
        assert len({s for s, gg in zip(splits, groups) if gg == g}) == 1
    assert splits.count("test") == 8 and splits.count("val") == 8
    assert splits != assign_splits(names, groups, val_fraction=0.2, test_fraction=0.2, seed=1)


def test_real_sbs_pairing_row_g_is_test(shared_data, tmp_path):
    out = build_manifest(shared_data / "sbs_translocation", "Channel1-*.tif", "Channel2-*.tif",
                         tmp_path / "sbs.csv", test_match="-G-", val_fraction=0.15, seed=0)
    entries = read_manifest(out)
    assert len(entries) == 48
    test = [e for e in entries if e.split == "test"]
    assert len(test) == 12 and all("-G-" in e.name for e in test)
    for e in entries:
        assert Path(e.source[0]).name.replace("Channel1", "Channel2") == Path(e.target[0]).name


def test_epoch_sampler_shards_disjointly_and_resumes_per_rank() -> None:
    from cytogen.data.sampling import EpochSampler

    shards = [EpochSampler(10, rank=r, world=2) for r in range(2)]
    for s in shards:
        s.set_epoch(3)
    got = [list(s) for s in shards]
    assert [len(g) for g in got] == [5, 5] and len(shards[0]) == 5
    assert not set(got[0]) & set(got[1]) and set(got[0]) | set(got[1]) == set(range(30, 40))
    single = EpochSampler(10)
    single.set_epoch(3)
    assert list(single) == list(range(30, 40))
    odd = EpochSampler(7, rank=1, world=2)
    assert list(odd) == [1, 3, 5]  # equal counts per rank: the leftover item is dropped
    shards[1].resume(3, 2)  # two samples of this rank already consumed
    assert list(shards[1]) == got[1][2:]
