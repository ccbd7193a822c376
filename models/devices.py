"""Choice of the compute device and of the settings that go with it (autocast, memory format)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

DevicePreference = Literal["auto", "cuda", "mps", "cpu"]
DEVICE_PREFERENCES: tuple[str, ...] = get_args(DevicePreference)


@dataclass(frozen=True)
class DeviceChoice:
    """Where a model runs and how.

    Attributes
    ----------
    device : torch.device
        The device.
    autocast_dtype : torch.dtype or None
        ``torch.bfloat16`` on a CUDA device that supports it, else ``None`` (full float32).
    channels_last : bool
        Whether to convert model and inputs to the channels-last memory format.
    pin_memory : bool
        Whether a DataLoader should pin host memory (CUDA only).
    """

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    pin_memory: bool

    def describe(self) -> str:
        """One line for logs and metadata, e.g. ``'cuda:0 (NVIDIA H100, bf16 autocast)'``."""
        if self.device.type == "cuda":
            name = torch.cuda.get_device_name(self.device)
            amp = f"{self.autocast_dtype} autocast".replace("torch.", "")
            return f"{self.device} ({name}, {amp if self.autocast_dtype else 'float32'})"
        return f"{self.device} (float32)"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def select_device(pref: DevicePreference = "auto") -> DeviceChoice:
    """Pick the device: CUDA (bf16 autocast when supported), else MPS, else CPU.

    Parameters
    ----------
    pref : {"auto", "cuda", "mps", "cpu"}
        ``"auto"`` takes the best available device; a named device must be available.

    Returns
    -------
    DeviceChoice
        Device plus autocast dtype, memory format and pin-memory flag.

    Raises
    ------
    ValueError
        If ``pref`` is not one of the four choices.
    RuntimeError
        If ``pref`` names a device this machine does not have.

    Examples
    --------
    >>> select_device("cpu").device
    device(type='cpu')
    """
    if pref not in DEVICE_PREFERENCES:
        raise ValueError(f"device={pref!r} is not one of {list(DEVICE_PREFERENCES)}")
    if pref == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "device='cuda' was requested but torch sees no CUDA device "
            f"(torch {torch.__version__}, CUDA build {torch.version.cuda}); use device='auto' or "
            "'cpu', or install a CUDA-enabled torch on a machine with an NVIDIA GPU"
        )
    if pref == "mps" and not _mps_available():
        raise RuntimeError(
            "device='mps' was requested but the Apple MPS backend is not available; use "
            "device='auto' or 'cpu'"
        )
    if pref == "cuda" or (pref == "auto" and torch.cuda.is_available()):
        device = torch.device("cuda", torch.cuda.current_device())
        bf16 = torch.cuda.is_bf16_supported()
        return DeviceChoice(
            device=device,
            autocast_dtype=torch.bfloat16 if bf16 else None,
            channels_last=True,
            pin_memory=True,
        )
    if pref == "mps" or (pref == "auto" and _mps_available()):
        return DeviceChoice(torch.device("mps"), None, channels_last=False, pin_memory=False)
    return DeviceChoice(torch.device("cpu"), None, channels_last=True, pin_memory=False)
