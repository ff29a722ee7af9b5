"""Classical segmentation of fields: nuclei from a DNA image, cells by a nucleus-seeded watershed."""

from cytogen.segment.cells import match_nuclei, segment_cells, segment_nuclei

__all__ = ["match_nuclei", "segment_cells", "segment_nuclei"]
