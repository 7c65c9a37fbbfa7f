"""The NoImageHead, its loss and its segmentation metrics."""
