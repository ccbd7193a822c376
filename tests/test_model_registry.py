"""Adapter registry: names, configs, and a forward pass through every registered adapter."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from clinaudit.models.registry import (
    AdapterConfig,
    ModelAdapter,
    UnknownAdapterError,
    create_adapter,
    list_adapters,
    normalise_images,
    register_adapter,
)
from clinaudit.sources.cxr_labels import FINDINGS

torch.set_num_threads(1)


def test_builtin_adapters_are_registered():
    assert {"timm_cxr", "tiny_cnn"} <= set(list_adapters())


def test_unknown_adapter_lists_known_names_and_suggests_the_closest():
    with pytest.raises(UnknownAdapterError, match=r"timm_cx.*\['timm_cxr', 'tiny_cnn'.*") as info:
        create_adapter("timm_cx")
    assert "Did you mean 'timm_cxr'?" in str(info.value)
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)


def test_unknown_config_key_is_refused_with_valid_keys():
    with pytest.raises(TypeError, match=r"unknown config keys \['inputsize'\].*input_size"):
        create_adapter("tiny_cnn", inputsize=32)


def test_registering_a_taken_name_with_another_class_fails():
    with pytest.raises(ValueError, match="already registered"):

        @register_adapter("tiny_cnn")
        class Other(ModelAdapter):  # pragma: no cover - never instantiated
            @classmethod
            def default_config(cls) -> AdapterConfig:
                return AdapterConfig(architecture="x", input_size=32)

            def build_model(self) -> torch.nn.Module:
                return torch.nn.Identity()


@pytest.mark.parametrize("name", list_adapters())
def test_forward_pass_on_every_registered_adapter(name):
    adapter = create_adapter(name, input_size=32)
    model = adapter.create_model(seed=0).eval()
    x = torch.rand(3, 1, 32, 32, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        logits = model(adapter.normalise(x))
    assert logits.shape == (3, len(FINDINGS))
    assert torch.isfinite(logits).all()


def test_timm_adapter_builds_the_named_architecture_and_refuses_unknown_ones():
    adapter = create_adapter("timm_cxr", architecture="resnet10t", input_size=32)
    assert type(adapter.create_model()).__name__ == "ResNet"
    with pytest.raises(ValueError, match="timm has no architecture 'resnet_nope'"):
        create_adapter("timm_cxr", architecture="resnet_nope").create_model()


def test_seeded_model_creation_is_reproducible_and_keeps_global_rng():
    adapter = create_adapter("tiny_cnn")
    state = torch.random.get_rng_state()
    a = adapter.create_model(seed=3).state_dict()
    b = adapter.create_model(seed=3).state_dict()
    c = adapter.create_model(seed=4).state_dict()
    assert torch.equal(torch.random.get_rng_state(), state)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["head.weight"], c["head.weight"])


def test_config_round_trips_through_dict_and_validates():
    cfg = create_adapter("timm_cxr").config
    assert AdapterConfig.from_dict(cfg.to_dict()) == cfg
    assert cfg.to_dict()["labels"] == list(FINDINGS)
    with pytest.raises(ValueError, match=r"unknown keys \['colour'\]"):
        AdapterConfig.from_dict({**cfg.to_dict(), "colour": 1})
    with pytest.raises(ValueError, match="in_chans=2 is not supported"):
        AdapterConfig(architecture="resnet18", input_size=64, in_chans=2, mean=(0, 0), std=(1, 1))
    with pytest.raises(ValueError, match="labels must be non-empty and unique"):
        AdapterConfig(architecture="resnet18", input_size=64, labels=("A", "A"))
    with pytest.raises(ValueError, match="std=.* strictly positive"):
        AdapterConfig(architecture="resnet18", input_size=64, std=(0.0,))


def test_normalisation_repeats_grey_channel_for_rgb_backbones():
    cfg = AdapterConfig(
        architecture="resnet18", input_size=8, in_chans=3, mean=(0.5, 0.4, 0.3), std=(0.5, 0.5, 1.0)
    )
    x = torch.full((2, 1, 8, 8), 0.5)
    out = normalise_images(x, cfg)
    assert out.shape == (2, 3, 8, 8)
    np.testing.assert_allclose(out[0, :, 0, 0].numpy(), [0.0, 0.2, 0.2], atol=1e-6)
    with pytest.raises(ValueError, match=r"expected a \(N, 1, H, W\)"):
        normalise_images(torch.zeros(2, 3, 8, 8), cfg)
