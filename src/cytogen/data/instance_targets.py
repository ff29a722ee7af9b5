"""Instance label images as three-class training targets for nucleus segmenters.

Classes: 0 background, 1 interior, 2 boundary (the object's own pixels within ``boundary_px`` of
its edge, whether that edge faces background or another object). Touching nuclei are then kept
apart by two boundary bands, the foreground + boundary encoding of the DSB 2018 winners and of
CellProfiler's / ilastik's three-class pixel classifiers; a seeded watershed
(:func:`cytogen.segment.instances.classes_to_instances`) turns predictions back into instances.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage as ndi

from cytogen.data.masks import check_label_image

__all__ = ["BACKGROUND", "BOUNDARY", "CLASS_NAMES", "INTERIOR", "N_CLASSES", "instance_classes"]

BACKGROUND, INTERIOR, BOUNDARY = 0, 1, 2
CLASS_NAMES = ("background", "interior", "boundary")
N_CLASSES = len(CLASS_NAMES)


def instance_classes(labels: np.ndarray, boundary_px: int = 1) -> np.ndarray:
    """``uint8`` class map of a 2D/3D instance label image (0 background, 1 interior, 2 boundary).

    An object pixel is interior when every pixel within ``boundary_px`` (chessboard distance)
    carries its label, boundary otherwise; beyond the image edge the image is mirrored, so
    objects cut by the edge get no boundary there. Objects thinner than the band are all boundary.
    """
    labels = check_label_image(labels)
    size = 2 * int(boundary_px) + 1
    same = (ndi.grey_erosion(labels, size=size) == labels) & (ndi.grey_dilation(labels, size=size) == labels)
    out = np.zeros(labels.shape, np.uint8)
    out[labels > 0] = BOUNDARY
    out[(labels > 0) & same] = INTERIOR
    return out
