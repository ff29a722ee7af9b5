"""Whole-image prediction: sliding-window tiling with blended seams (2D and 3D)."""

from cytogen.predict.tiling import BLENDS, blend_window, predict_tiled, tile_starts

__all__ = ["BLENDS", "blend_window", "predict_tiled", "tile_starts"]
