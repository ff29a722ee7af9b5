"""napari sample data: a synthetic field of cells (:func:`cytogen.synth.cells.synth_field`)."""

from __future__ import annotations

from cytogen.napari_plugin._reader import LayerData

#: display colour per synthetic channel
COLOURS = {"actin": "green", "membrane": "magenta", "nucleus": "blue"}
SHAPE = (256, 256)
SEED = 0


def synthetic_cells(shape: tuple[int, ...] = SHAPE, seed: int = SEED) -> list[LayerData]:
    """The channels of one synthetic field and its exact cell and nucleus masks as layers.

    The same field ``cytogen synthesize cells`` writes for ``field_000`` with these arguments
    (``synth_field(shape, seed=seed)``, 0.5 um pixels, about one cell per 70 x 70 pixels).

    Parameters
    ----------
    shape : tuple of int
        ``(Y, X)``, or ``(Z, Y, X)`` for a stack.
    seed : int
        Random seed of the layout, stains and noise.

    Returns
    -------
    list of LayerData
        Image layers ``actin``, ``membrane``, ``nucleus`` (additive, coloured) and labels layers
        ``cells`` and ``nuclei`` (nucleus ``i`` lies in cell ``i``), all in um scale.
    """
    from cytogen.synth.cells import synth_field

    field = synth_field(shape, seed=seed)
    scale = tuple(field.pixel_size_um)
    layers: list[LayerData] = []
    for k, name in enumerate(field.channel_names):
        layers.append((field.image[k], {"name": name, "scale": scale, "blending": "additive",
                                        "colormap": COLOURS.get(name, "gray")}, "image"))
    layers.append((field.cells, {"name": "cells", "scale": scale, "opacity": 0.3}, "labels"))
    layers.append((field.nuclei, {"name": "nuclei", "scale": scale, "opacity": 0.5}, "labels"))
    return layers
