"""Stage 1: scan images and masks, per-sample checks with reasons, frozen splits, manifests;
shards of a split; the synthetic demo dataset."""
