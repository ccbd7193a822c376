"""Built-in model adapters: ``timm_cxr`` (any timm backbone) and ``tiny_cnn`` (for tests).

``timm_cxr`` defaults to ``resnet10t`` at 160 px: on a 2-core CPU it trains at about 80 images/s
(resnet18: about 57 at 160 px and 20 at 224 px), which keeps the demo's vendor-model training
within minutes, and it reached a held-out mean AUROC of 0.85 on the demo cohort. Any timm
architecture name can be passed (``densenet121`` at 224 px is the CheXNet choice); weights are
always randomly initialised here (``pretrained=False``) and never downloaded.
"""

from __future__ import annotations

import torch
from torch import nn

from clinaudit.models.registry import AdapterConfig, ModelAdapter, register_adapter


@register_adapter("timm_cxr")
class TimmCxrAdapter(ModelAdapter):
    """A timm backbone with a multi-label head: ``timm.create_model(arch, in_chans, num_classes)``.

    Outputs are logits, one per label; the probability of a label is their sigmoid.
    """

    @classmethod
    def default_config(cls) -> AdapterConfig:
        """resnet10t at 160 px, one channel, the 14 ChestX-ray14 findings."""
        return AdapterConfig(architecture="resnet10t", input_size=160)

    def build_model(self) -> nn.Module:
        """Randomly initialised timm model (``pretrained=False``: nothing is downloaded).

        Raises
        ------
        ValueError
            If timm does not know the architecture (the message suggests close names).
        """
        import timm

        arch = self.config.architecture
        if not timm.is_model(arch):
            close = timm.list_models(f"*{arch.split('_')[0][:6]}*")[:8]
            raise ValueError(
                f"timm has no architecture {arch!r}; similar names: {close}. Pass a name from "
                "timm.list_models(), e.g. 'resnet18' or 'densenet121'."
            )
        return timm.create_model(
            arch,
            pretrained=False,
            in_chans=self.config.in_chans,
            num_classes=self.config.num_labels,
        )


class TinyCnn(nn.Module):
    """Three stride-2 3x3 convolutions (8, 16, 32 channels), global average pool, linear head."""

    def __init__(self, in_chans: int, num_labels: int) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        chans = [in_chans, 8, 16, 32]
        for c_in, c_out in zip(chans[:-1], chans[1:], strict=True):
            layers += [
                nn.Conv2d(c_in, c_out, 3, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.head = nn.Linear(chans[-1], num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Logits of shape ``(N, num_labels)``."""
        return self.head(torch.flatten(self.pool(self.features(x)), 1))

    def group_matcher(self, coarse: bool = False) -> dict[str, object]:
        """Parameter groups in timm's convention: the first block is the stem, then two stages."""
        return {
            "stem": r"^features\.[0-2]\.",
            "blocks": [(r"^features\.[3-5]\.", (1,)), (r"^features\.[6-8]\.", (2,))],
        }

    def get_classifier(self) -> nn.Module:
        """The classification head (timm's name for it)."""
        return self.head


@register_adapter("tiny_cnn")
class TinyCnnAdapter(ModelAdapter):
    """A 3-convolution network (~7k parameters) for fast tests; not a clinical model."""

    @classmethod
    def default_config(cls) -> AdapterConfig:
        """64 px, one channel, the 14 ChestX-ray14 findings."""
        return AdapterConfig(architecture="tiny_cnn", input_size=64, licence="Apache-2.0")

    def build_model(self) -> nn.Module:
        """Randomly initialised :class:`TinyCnn`."""
        if self.config.architecture != "tiny_cnn":
            raise ValueError(
                f"the tiny_cnn adapter builds only architecture 'tiny_cnn', got "
                f"{self.config.architecture!r}; use the timm_cxr adapter for other architectures"
            )
        return TinyCnn(self.config.in_chans, self.config.num_labels)
