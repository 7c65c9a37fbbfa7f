"""Stage 5: the HDF5 Dataset, the training loop, checkpoints and resume, the overfit check,
training curves."""
