"""Choice of the compute device and of the settings that go with it (autocast, memory format),
and the preparation of a model for inference on it (:func:`prepare_model`)."""

from __future__ import annotations

import copy
import logging
from collections import Counter
from dataclasses import dataclass
from typing import Literal, get_args

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval

log = logging.getLogger(__name__)

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
    fold_batchnorm : bool
        Whether :func:`prepare_model` folds eval-mode BatchNorm layers into the convolutions
        before them (CPU: one oneDNN convolution instead of a convolution plus a separate pass
        over the activations; see :func:`fold_batchnorm`).
    """

    device: torch.device
    autocast_dtype: torch.dtype | None
    channels_last: bool
    pin_memory: bool
    fold_batchnorm: bool = False

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
        as fast in the network there (1.45x for the whole predictions path); scores then differ
        from float32 ones by about 1e-3 on average, but by up to 0.08 (demo vendor model, 3,100
        images: 0.4% of operating-threshold decisions flip, site mean AUROC moves by <= 0.001),
        which is why "auto" keeps float32 on the CPU.

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
    return DeviceChoice(
        torch.device("cpu"), bf16_cpu, channels_last=True, pin_memory=False, fold_batchnorm=True
    )


def _conv_bn_pairs(model: nn.Module) -> list[tuple[str, str]]:
    """``(conv, bn)`` module names where the BatchNorm2d's only input is the Conv2d's only use."""
    graph = fx.symbolic_trace(model).graph
    calls = Counter(n.target for n in graph.nodes if n.op == "call_module")
    attrs = [str(n.target) for n in graph.nodes if n.op == "get_attr"]
    pairs = []
    for node in graph.nodes:
        src = node.args[0] if node.op == "call_module" and node.args else None
        if not isinstance(src, fx.Node) or src.op != "call_module":
            continue
        conv, bn = model.get_submodule(str(src.target)), model.get_submodule(str(node.target))
        # Exact types: subclasses such as timm's BatchNormAct2d (norm + activation) or
        # Conv2dSame (padding in forward) do more than the folded convolution would.
        if type(conv) is not nn.Conv2d or type(bn) is not nn.BatchNorm2d:
            continue
        shared = calls[src.target] > 1 or calls[node.target] > 1
        # A forward that reads either module's parameters directly needs both kept as they are.
        conv_attr = any(
            a == t or a.startswith(f"{t}.") for t in (src.target, node.target) for a in attrs
        )
        single_use = len(src.users) == 1 and len(node.args) == 1 and not node.kwargs
        if single_use and not shared and not conv_attr and bn.running_mean is not None:
            pairs.append((str(src.target), str(node.target)))
    return pairs


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, int]:
    """A copy of an eval-mode ``model`` with BatchNorm2d layers folded into the Conv2d before them.

    In eval mode ``bn(conv(x))`` is an affine map of the convolution's output, so it equals one
    convolution with scaled weights and a bias (:func:`torch.nn.utils.fusion.fuse_conv_bn_eval`):
    outputs agree up to float32 rounding (about 1e-6 on probabilities), and a pass over every
    activation map is saved. The pairs are found on the ``torch.fx`` graph of ``model``: only a
    plain ``Conv2d`` whose output feeds nothing but a plain ``BatchNorm2d`` is folded. ``model``
    itself is not changed.

    Parameters
    ----------
    model : torch.nn.Module
        Network in eval mode.

    Returns
    -------
    (torch.nn.Module, int)
        The folded copy and the number of folded pairs; ``(model, 0)`` when there is nothing to
        fold or when ``torch.fx`` cannot trace the network (data-dependent control flow).

    Raises
    ------
    ValueError
        If ``model`` is in training mode (batch statistics cannot be folded).

    Examples
    --------
    >>> net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.BatchNorm2d(4), nn.ReLU()).eval()
    >>> folded, n = fold_batchnorm(net)
    >>> n, type(folded[1]).__name__
    (1, 'Identity')
    """
    if model.training:
        raise ValueError("fold_batchnorm needs a model in eval mode; call model.eval() first")
    try:
        pairs = _conv_bn_pairs(model)
    except (fx.proxy.TraceError, TypeError, RuntimeError, NotImplementedError) as err:
        # Not an error: the network simply runs unfolded (same outputs, a little slower).
        log.info("BatchNorm folding skipped: torch.fx cannot trace %s (%s)", type(model), err)
        return model, 0
    if not pairs:
        return model, 0
    folded = copy.deepcopy(model)
    for conv_name, bn_name in pairs:
        conv = folded.get_submodule(conv_name)
        bn = folded.get_submodule(bn_name)
        folded.set_submodule(conv_name, fuse_conv_bn_eval(conv, bn))
        folded.set_submodule(bn_name, nn.Identity())
    return folded, len(pairs)


def prepare_model(model: nn.Module, choice: DeviceChoice) -> nn.Module:
    """The network to run for inference on ``choice``.

    ``model`` is moved to the device and switched to eval mode in place. On the CPU the returned
    network is a copy with BatchNorm folded into the convolutions (:func:`fold_batchnorm`) when
    there is something to fold, otherwise ``model`` itself; it is in channels-last where the
    device prefers it (converted in place when it is ``model``).

    Parameters
    ----------
    model : torch.nn.Module
        The network.
    choice : DeviceChoice
        Where and how it runs.

    Returns
    -------
    torch.nn.Module
        The network to call (never in training mode).
    """
    model = model.to(choice.device).eval()
    if choice.fold_batchnorm:
        model, _ = fold_batchnorm(model)
    if choice.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model
