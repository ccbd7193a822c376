"""Registry of model adapters, in the style of timm's ``@register_model`` / ``create_model``.

An *adapter* knows how to build one family of networks (``build_model``) whose outputs are one
logit per label (probability = sigmoid), and how to normalise ``[0, 1]`` grey-level images for it
(``normalise``). Its settings live in a frozen :class:`AdapterConfig`, which the
model package writes into ``model_card.json`` so that a package can be rebuilt without guessing.

Adapters register themselves with :func:`register_adapter`; the built-in ones live in
``clinaudit.models.adapters`` and are imported on first use of the registry.

Examples
--------
>>> adapter = create_adapter("tiny_cnn", input_size=32)
>>> adapter.config.input_size
32
>>> "timm_cxr" in list_adapters()
True
"""

from __future__ import annotations

import abc
import dataclasses
import difflib
import importlib
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from clinaudit.sources.cxr_labels import FINDINGS


class UnknownAdapterError(KeyError, ValueError):
    """An adapter name that is not registered; the message lists the registered ones."""

    def __str__(self) -> str:  # KeyError would repr-quote the message
        return str(self.args[0]) if self.args else ""


@dataclass(frozen=True)
class AdapterConfig:
    """Everything needed to rebuild and feed a model, written into the package's model card.

    Parameters
    ----------
    architecture : str
        Network architecture understood by the adapter (a timm model name for ``timm_cxr``).
    input_size : int
        Side of the square input image in pixels.
    in_chans : int
        Input channels: 1 (grey level) or 3 (the grey image is repeated, for RGB backbones).
    mean, std : tuple of float
        Per-channel normalisation applied to ``[0, 1]`` pixels: ``(x - mean) / std``.
    labels : tuple of str
        Names of the model outputs, in output order.
    version : str
        Version of the model (not of clinaudit).
    licence : str
        Licence of the weights.
    """

    architecture: str
    input_size: int
    in_chans: int = 1
    mean: tuple[float, ...] = (0.5,)
    std: tuple[float, ...] = (0.25,)
    labels: tuple[str, ...] = FINDINGS
    version: str = "0.1.0"
    licence: str = "Apache-2.0"

    def __post_init__(self) -> None:
        # Accept lists (from JSON) and store tuples so the config stays hashable and frozen.
        for name in ("mean", "std", "labels"):
            value = getattr(self, name)
            if isinstance(value, str) or not isinstance(value, tuple | list):
                raise TypeError(
                    f"AdapterConfig.{name} must be a tuple, got {type(value).__name__} {value!r}"
                )
            object.__setattr__(self, name, tuple(value))
        if not isinstance(self.architecture, str) or not self.architecture:
            raise ValueError(f"architecture must be a non-empty string, got {self.architecture!r}")
        if not isinstance(self.input_size, int) or not 8 <= self.input_size <= 4096:
            raise ValueError(
                f"input_size={self.input_size!r} must be an integer between 8 and 4096 pixels"
            )
        if self.in_chans not in (1, 3):
            raise ValueError(
                f"in_chans={self.in_chans!r} is not supported; use 1 (grey level) or 3 (the grey "
                "image is repeated for backbones trained on RGB)"
            )
        for name in ("mean", "std"):
            value = getattr(self, name)
            if len(value) != self.in_chans or not all(
                isinstance(v, int | float) and math.isfinite(v) for v in value
            ):
                raise ValueError(
                    f"{name}={value!r} must hold {self.in_chans} finite number(s), one per input "
                    "channel"
                )
        if any(s <= 0 for s in self.std):
            raise ValueError(f"std={self.std!r} must be strictly positive")
        if not self.labels or len(set(self.labels)) != len(self.labels):
            raise ValueError(f"labels must be non-empty and unique, got {self.labels!r}")
        if not all(isinstance(label, str) and label for label in self.labels):
            raise ValueError(f"labels must be non-empty strings, got {self.labels!r}")

    @property
    def num_labels(self) -> int:
        """Number of model outputs."""
        return len(self.labels)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists)."""
        return {
            f.name: list(v) if isinstance(v := getattr(self, f.name), tuple) else v
            for f in dataclasses.fields(self)
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> AdapterConfig:
        """Rebuild a config from :meth:`to_dict` output.

        Raises
        ------
        ValueError
            If keys are missing or unknown (the message names them and the expected keys).
        """
        known = {f.name for f in dataclasses.fields(cls)}
        required = {
            f.name
            for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        }
        unknown = sorted(set(data) - known)
        missing = sorted(required - set(data))
        if unknown or missing:
            raise ValueError(
                f"adapter config has unknown keys {unknown} and lacks keys {missing}; expected "
                f"keys are {sorted(known)}"
            )
        return cls(**dict(data))


class ModelAdapter(abc.ABC):
    """Base class of adapters: builds a network and prepares its inputs and outputs.

    Subclasses set ``name`` (through :func:`register_adapter`) and implement
    :meth:`default_config` and :meth:`build_model`. Networks output one logit per label; the
    probability of a label is the sigmoid of its logit.
    """

    name: ClassVar[str] = ""

    def __init__(self, config: AdapterConfig) -> None:
        if not isinstance(config, AdapterConfig):
            raise TypeError(f"config must be an AdapterConfig, got {type(config).__name__}")
        self.config = config

    def __repr__(self) -> str:
        return f"{type(self).__name__}(name={self.name!r}, config={self.config!r})"

    @classmethod
    @abc.abstractmethod
    def default_config(cls) -> AdapterConfig:
        """The configuration used when :func:`create_adapter` gets no overrides."""

    @abc.abstractmethod
    def build_model(self) -> nn.Module:
        """A randomly initialised network with ``config.num_labels`` logit outputs.

        Must never download anything.
        """

    def create_model(self, *, seed: int | None = None) -> nn.Module:
        """Build the network; with ``seed`` its initial weights are reproducible.

        Parameter initialisation in torch/timm draws from the global generator, so a seeded build
        runs inside ``torch.random.fork_rng`` and leaves the caller's global RNG state untouched.

        Parameters
        ----------
        seed : int, optional
            Seed of the initial weights; ``None`` uses the global generator as it is.

        Returns
        -------
        torch.nn.Module
            The network, in training mode, on the CPU.
        """
        if seed is None:
            return self.build_model()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            return self.build_model()

    def normalise(self, images: torch.Tensor) -> torch.Tensor:
        """Model input for ``[0, 1]`` grey-level images (see :func:`normalise_images`)."""
        return normalise_images(images, self.config)


def normalise_images(images: torch.Tensor, config: AdapterConfig) -> torch.Tensor:
    """Map a ``(N, 1, H, W)`` or ``(1, H, W)`` float tensor in ``[0, 1]`` to model input.

    Every adapter's network outputs logits; the probability of a label is their sigmoid.

    Parameters
    ----------
    images : torch.Tensor
        Grey-level images, one channel.
    config : AdapterConfig
        Supplies ``in_chans``, ``mean`` and ``std``.

    Returns
    -------
    torch.Tensor
        ``(x - mean) / std`` with ``in_chans`` channels (the grey channel repeated).
    """
    if images.ndim not in (3, 4) or images.shape[-3] != 1:
        raise ValueError(
            f"expected a (N, 1, H, W) or (1, H, W) tensor, got shape {tuple(images.shape)}"
        )
    if config.in_chans != 1:
        reps = [1] * images.ndim
        reps[-3] = config.in_chans
        images = images.repeat(*reps)
    shape = [1] * images.ndim
    shape[-3] = config.in_chans
    mean = torch.tensor(config.mean, dtype=images.dtype, device=images.device).view(shape)
    std = torch.tensor(config.std, dtype=images.dtype, device=images.device).view(shape)
    return (images - mean) / std


_REGISTRY: dict[str, type[ModelAdapter]] = {}
_BUILTINS_LOADED = False


def register_adapter(name: str) -> Callable[[type[ModelAdapter]], type[ModelAdapter]]:
    """Class decorator that registers an adapter under ``name``.

    Parameters
    ----------
    name : str
        Registry name (what ``create_adapter`` and the model card use).

    Returns
    -------
    callable
        The decorator; it returns the class unchanged (with ``name`` set).

    Raises
    ------
    ValueError
        If another class is already registered under ``name``.

    Examples
    --------
    >>> @register_adapter("my_net")  # doctest: +SKIP
    ... class MyNet(ModelAdapter): ...
    """
    if not isinstance(name, str) or not name.isidentifier():
        raise ValueError(f"adapter name {name!r} must be a Python identifier, e.g. 'timm_cxr'")

    def decorator(cls: type[ModelAdapter]) -> type[ModelAdapter]:
        if not (isinstance(cls, type) and issubclass(cls, ModelAdapter)):
            raise TypeError(f"@register_adapter({name!r}) must decorate a ModelAdapter subclass")
        existing = _REGISTRY.get(name)
        if existing is not None and existing.__qualname__ != cls.__qualname__:
            raise ValueError(
                f"adapter name {name!r} is already registered by {existing.__module__}."
                f"{existing.__qualname__}; choose another name"
            )
        cls.name = name
        _REGISTRY[name] = cls
        return cls

    return decorator


def _load_builtins() -> None:
    global _BUILTINS_LOADED
    if not _BUILTINS_LOADED:
        importlib.import_module("clinaudit.models.adapters")
        _BUILTINS_LOADED = True


def list_adapters() -> list[str]:
    """Sorted names of the registered adapters.

    Returns
    -------
    list of str
        Registered names.
    """
    _load_builtins()
    return sorted(_REGISTRY)


def get_adapter_class(name: str) -> type[ModelAdapter]:
    """The adapter class registered under ``name``.

    Raises
    ------
    UnknownAdapterError
        If ``name`` is not registered; the message lists the known names and the closest one.
    """
    _load_builtins()
    try:
        return _REGISTRY[name]
    except KeyError:
        known = sorted(_REGISTRY)
        close = difflib.get_close_matches(str(name), known, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownAdapterError(
            f"unknown model adapter {name!r}; registered adapters are {known}.{hint} "
            "Use one of them or register yours with @register_adapter."
        ) from None


def create_adapter(name: str, **cfg: Any) -> ModelAdapter:
    """Create the adapter ``name`` with its default config, overridden by ``cfg``.

    Parameters
    ----------
    name : str
        Registered adapter name (see :func:`list_adapters`).
    **cfg
        Overrides of :class:`AdapterConfig` fields (``architecture``, ``input_size``, ...).

    Returns
    -------
    ModelAdapter
        The adapter; call ``create_model(seed=...)`` on it to build the network.

    Raises
    ------
    UnknownAdapterError
        If ``name`` is not registered.
    TypeError
        If ``cfg`` holds a key that is not an ``AdapterConfig`` field.

    Examples
    --------
    >>> create_adapter("timm_cxr", architecture="resnet18", input_size=128).config.input_size
    128
    """
    cls = get_adapter_class(name)
    base = cls.default_config()
    known = [f.name for f in dataclasses.fields(base)]
    unknown = sorted(set(cfg) - set(known))
    if unknown:
        raise TypeError(
            f"create_adapter({name!r}) got unknown config keys {unknown}; valid keys are {known}"
        )
    return cls(dataclasses.replace(base, **cfg))


def adapter_from_config(name: str, config: AdapterConfig) -> ModelAdapter:
    """Instantiate the registered adapter ``name`` with a complete, given config.

    Parameters
    ----------
    name : str
        Registered adapter name.
    config : AdapterConfig
        Its configuration (e.g. read back from a model card).

    Returns
    -------
    ModelAdapter
        The adapter.
    """
    return get_adapter_class(name)(config)


__all__ = [
    "AdapterConfig",
    "ModelAdapter",
    "UnknownAdapterError",
    "adapter_from_config",
    "create_adapter",
    "get_adapter_class",
    "list_adapters",
    "normalise_images",
    "register_adapter",
]
