import pytest

from cytogen.config import bundled_recipe, load_recipe, parse_overrides, recipe_from_dict
from cytogen.errors import CytogenError


def test_bundled_recipes_load():
    names = sorted(p.stem for p in bundled_recipe("translate_unet2d").parent.glob("*.yaml"))
    assert {"pix2pix2d", "pix2pix3d", "vox2vox_ru3d", "tfill_coarse", "unet_chain3x", "cyclegan2d"} <= set(names)
    for name in names:
        r = load_recipe(bundled_recipe(name))
        assert len(r.data.patch_size) == r.model.dims


def test_overrides_typed_and_nested():
    r = load_recipe(bundled_recipe("translate_unet2d"),
                    ["train.max_steps=7", "model.kwargs.depth=2", "data.patch_size=[64,64]", "optim.lr=0.5"])
    assert r.train.max_steps == 7 and r.model.kwargs["depth"] == 2
    assert r.data.patch_size == [64, 64] and r.optim.lr == 0.5
    assert parse_overrides(["a.b=1"]) == {"a": {"b": 1}}
    assert load_recipe(None, ["optim.lr=1e-4"]).optim.lr == 1e-4  # YAML 1.1 reads 1e-4 as a string


@pytest.mark.parametrize("data, message", [
    ({"modle": {}}, "unknown key"),
    ({"train": {"max_step": 3}}, "unknown key"),
    ({"train": {"max_steps": "many"}}, "integer"),
    ({"data": {"augment": "yes"}}, "true or false"),
    ({"loss": {"name": "huber"}}, "choose one of"),
    ({"data": {"patch_size": [64, 64, 64]}}, "axes"),
    ({"data": {"percentiles": [99, 1]}}, "percentiles"),
    ({"optim": {"lr": [1]}}, "number"),
    ({"predict": {"overlap": 1.0}}, r"predict.overlap is 1.0; it must be in \[0, 1\)"),
    ({"predict": {"overlap": -0.1}}, "predict.overlap is -0.1"),
    ({"predict": {"batch_size": 0}}, "predict.batch_size is 0"),
    ({"predict": {"tile": [256, 0]}}, "predict.tile is"),
])
def test_bad_recipes(data, message):
    with pytest.raises(CytogenError, match=message):
        recipe_from_dict(data, "r.yaml")


def test_recipe_file_errors(tmp_path):
    with pytest.raises(CytogenError, match="not found"):
        load_recipe(tmp_path / "none.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("model: [unclosed\n")
    with pytest.raises(CytogenError, match="YAML"):
        load_recipe(bad)
    with pytest.raises(CytogenError, match="key=value"):
        load_recipe(None, ["noequals"])
