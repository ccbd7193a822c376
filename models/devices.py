"""Choice of the compute device and of the settings that go with it (autocast, memory format)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, get_args

import torch

DevicePreference = Literal["auto", "cuda", "mps", "cpu"]
DEVICE_PREFERENCES: tuple[str, ...] = get_args(DevicePreference)
Precision = Literal["auto", "fp32", "bf16"]
PRECISIONS: tuple[str, ...] = get_args(Precision)


@dataclass(frozen=True)
class DeviceChoice:
    """Where a model runs and how.

    Attributes
    ----------
    device : torch.device
        The device.
    autocast_dtype : torch.dtype or None
        ``torch.bfloat16`` when the backbone runs under bf16 autocast, ``None`` for float32.
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
        return f"{self.device} ({'bf16 autocast' if self.autocast_dtype else 'float32'})"


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def _cpu_bf16_supported() -> bool:
    return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())


def select_device(pref: DevicePreference = "auto", precision: Precision = "auto") -> DeviceChoice:
    """Pick the device: CUDA (bf16 autocast when supported), else MPS, else CPU.

    Parameters
    ----------
    pref : {"auto", "cuda", "mps", "cpu"}
        ``"auto"`` takes the best available device; a named device must be available.
    precision : {"auto", "fp32", "bf16"}
        ``"auto"``: bf16 autocast on CUDA devices that support it, float32 elsewhere (CPU scores
        are then reproducible bit for bit on any x86 machine). ``"fp32"``: never autocast.
        ``"bf16"``: bf16 autocast also on a CPU with native bf16 (AVX512-BF16 / AMX), about twice
        as fast there; scores then differ from float32 ones by about 1e-3.

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
    if precision not in PRECISIONS:
        raise ValueError(f"precision={precision!r} is not one of {list(PRECISIONS)}")
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
        bf16 = torch.cuda.is_bf16_supported() and precision != "fp32"
        if precision == "bf16" and not bf16:
            raise RuntimeError(f"precision='bf16' but {device} does not support bf16; use 'fp32'")
        return DeviceChoice(
            device=device,
            autocast_dtype=torch.bfloat16 if bf16 else None,
            channels_last=True,
            pin_memory=True,
        )
    if pref == "mps" or (pref == "auto" and _mps_available()):
        if precision == "bf16":
            raise RuntimeError("precision='bf16' is not supported on MPS; use 'auto' or 'fp32'")
        return DeviceChoice(torch.device("mps"), None, channels_last=False, pin_memory=False)
    if precision == "bf16" and not _cpu_bf16_supported():
        raise RuntimeError(
            "precision='bf16' was requested but this CPU has no native bf16 (AVX512-BF16 or AMX); "
            "use precision='fp32' (or 'auto')"
        )
    bf16_cpu = torch.bfloat16 if precision == "bf16" else None
    return DeviceChoice(torch.device("cpu"), bf16_cpu, channels_last=True, pin_memory=False)
