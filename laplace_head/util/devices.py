"""The one mapping from a ``device`` setting (auto | cuda | cpu) to a torch device."""

from __future__ import annotations

from laplace_head.errors import LaplaceHeadError

DEVICES = ("auto", "cuda", "cpu")


def resolve_device(device: str, key: str = "device"):
    """Map a device setting to a ``torch.device``.

    Parameters
    ----------
    device
        ``auto`` (CUDA when a GPU is visible, else CPU), ``cuda`` or ``cpu``.
    key
        The config key the value came from (``sam.device``, ``training.device``), for messages.

    Raises
    ------
    ValueError
        For a value outside auto | cuda | cpu.
    LaplaceHeadError
        For ``cuda`` on a machine without a usable GPU.
    """
    import torch

    if device not in DEVICES:
        raise ValueError(f"{key} = {device!r} is not one of {', '.join(DEVICES)}")
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device == "cuda" and not torch.cuda.is_available():
        raise LaplaceHeadError(
            f"{key} = 'cuda' but no CUDA GPU is available on this machine; set "
            f"{key}: cpu (slow) or {key}: auto (GPU when there is one)."
        )
    return torch.device(device)
