"""Stages 3-4.5: the base-segmenter cache (precompute and its on-disk format), the training
index, and the packed split HDF5 (writer and the one reader)."""
