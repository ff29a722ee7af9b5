"""cytogen.synth: synthetic fluorescence images of cells with exact masks.

:func:`synth_field` makes one field (2D or 3D) with actin, membrane and nucleus channels (plus
organelles on request) and the matching cell, nucleus and organelle labels;
:func:`write_synthetic_dataset` writes a folder of them with a manifest, ready for training.
"""

from cytogen.synth.cells import CHANNELS, SynthField, synth_field, write_synthetic_dataset

__all__ = ["CHANNELS", "SynthField", "synth_field", "write_synthetic_dataset"]
