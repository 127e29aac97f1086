"""Large-area inference: tile grid, blending of overlapping tiles, streaming map writers."""
