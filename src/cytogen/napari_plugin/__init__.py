"""napari plugin for cytogen (npe2): a reader for cytogen's outputs, a predict widget, sample data.

The manifest ``napari.yaml`` (shipped as package data, registered through the
``napari.manifest`` entry point) names three contributions:

- the reader (:mod:`cytogen.napari_plugin._reader`): predictions of ``cytogen predict`` (TIFF
  and OME-Zarr, one image layer per channel in micrometre scale, OME-Zarr pyramids as lazy
  multiscale layers), label images of ``cytogen segment nuclei`` / ``segment cells`` and of
  synthetic datasets (labels layers; NGFF ``labels/`` of an OME-Zarr too) and ``cytogen evaluate
  objects`` folders (:mod:`cytogen.napari_plugin._objects`: real and predicted nuclei as
  points, matches as lines, the field images beneath);
- the widget (:mod:`cytogen.napari_plugin._widget`): run a model folder on the selected image
  layer in a worker thread, with a progress bar fed per batch of tiles;
- sample data (:mod:`cytogen.napari_plugin._sample`): a synthetic field of cells with its exact
  cell and nucleus masks.

Importing this package imports nothing from napari or Qt (napari is an optional extra,
``pip install "cytogen[napari]"``); only the widget module does, when napari loads it.
"""
