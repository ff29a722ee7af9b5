"""How the predict widget turns a layer into a model input (no viewer needed)."""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest

pytest.importorskip("napari", reason="the napari extra is not installed (pip install -e '.[napari]')")

from cytogen.errors import CytogenError
from cytogen.napari_plugin._widget import layer_image


def _layer(data, scale, **kw):
    return SimpleNamespace(name="L", data=data, scale=np.array(scale, float), rgb=False,
                           multiscale=False, **kw)


def test_layers_become_channels_first_with_their_pixel_size():
    stack = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
    data, pixel = layer_image(_layer(stack, (2.0, 0.5, 0.5)), dims=3)  # a z-stack, one channel
    assert data.shape == (1, 4, 5, 6) and pixel == (2.0, 0.5, 0.5)
    data, pixel = layer_image(_layer(stack, (1.0, 0.5, 0.5)), dims=2)  # channels first for 2D
    np.testing.assert_array_equal(data, stack)
    assert pixel == (0.5, 0.5)
    data, pixel = layer_image(_layer(stack[0], (1.0, 1.0)), dims=2)
    assert data.shape == (1, 5, 6) and pixel is None  # scale 1: no pixel size known
    rgb = _layer(np.zeros((5, 6, 3), np.uint8), (0.3, 0.3))
    rgb.rgb = True
    assert layer_image(rgb, dims=2)[0].shape == (3, 5, 6)
    pyramid = _layer([stack, stack[:, ::2, ::2]], (1.0, 0.5, 0.5))
    pyramid.multiscale = True
    np.testing.assert_array_equal(layer_image(pyramid, dims=2)[0], stack)  # level 0
    with pytest.raises(CytogenError, match="has 2 axes .* the model is 3D"):
        layer_image(_layer(stack[0], (1.0, 1.0)), dims=3)
