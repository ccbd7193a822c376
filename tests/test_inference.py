"""Batched inference: determinism, agreement with a manual forward, progress, schema, devices."""

from __future__ import annotations

import copy

import numpy as np
import pandas as pd
import pandera.errors
import pytest
import torch

from clinaudit.models.devices import select_device
from clinaudit.models.inference import Predictions, predict, predict_images, predictions_frame
from clinaudit.models.registry import create_adapter
from clinaudit.sources.cxr_labels import FINDINGS

torch.set_num_threads(1)
SIZE = 32
SHA = "ab" * 32


def npy_loader(path: str) -> np.ndarray:
    return np.load(path)


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    rng = np.random.default_rng(0)
    root = tmp_path_factory.mktemp("imgs")
    arrays = rng.random((10, SIZE, SIZE), dtype=np.float32)
    files = []
    for i, arr in enumerate(arrays):
        files.append(root / f"img{i}.npy")
        np.save(files[-1], arr)
    return files, arrays


@pytest.fixture(scope="module")
def model_and_cfg():
    adapter = create_adapter("tiny_cnn", input_size=SIZE)
    return adapter.create_model(seed=0).eval(), adapter.config


def test_predict_is_deterministic_and_equals_a_manual_forward(images, model_and_cfg):
    files, arrays = images
    model, cfg = model_and_cfg
    first = predict(model, cfg, files, batch_size=4, num_workers=0, device="cpu", loader=npy_loader)
    second = predict(
        model, cfg, files, batch_size=4, num_workers=0, device="cpu", loader=npy_loader
    )
    assert first.dtype == np.float32 and first.shape == (10, len(FINDINGS))
    assert np.array_equal(first, second)
    with torch.inference_mode():
        x = (torch.from_numpy(arrays).unsqueeze(1) - 0.5) / 0.25
        manual = torch.sigmoid(model.to(memory_format=torch.contiguous_format)(x)).numpy()
    np.testing.assert_allclose(first, manual, rtol=0, atol=1e-6)
    assert np.array_equal(predict_images(model, cfg, arrays, batch_size=4, device="cpu"), first)


def test_worker_processes_give_bitwise_the_same_output(images, model_and_cfg):
    files, _ = images
    model, cfg = model_and_cfg
    kw = dict(batch_size=4, device="cpu", loader=npy_loader)
    in_process = predict(model, cfg, files, num_workers=0, **kw)
    assert np.array_equal(predict(model, cfg, files, num_workers=2, **kw), in_process)


def test_logits_output_is_what_the_default_probabilities_are_the_sigmoid_of(images, model_and_cfg):
    files, arrays = images
    model, cfg = model_and_cfg
    kw = dict(batch_size=4, num_workers=0, device="cpu", loader=npy_loader)
    probs = predict(model, cfg, files, **kw)
    logits = predict(model, cfg, files, output="logits", **kw)
    assert logits.dtype == np.float32 and logits.shape == probs.shape
    assert np.array_equal(torch.sigmoid(torch.from_numpy(logits)).numpy(), probs)
    from_arrays = predict_images(model, cfg, arrays, batch_size=4, device="cpu", output="logits")
    assert np.array_equal(from_arrays, logits)
    # A large logit keeps its rank; the float32 probability rounds to 1.0 and loses it.
    big = copy.deepcopy(model)
    with torch.no_grad():
        big.head.bias.fill_(40.0)
    z = predict_images(big, cfg, arrays, batch_size=4, device="cpu", output="logits")
    p = predict_images(big, cfg, arrays, batch_size=4, device="cpu")
    assert (p == 1.0).all() and np.unique(z[:, 0]).size == len(arrays)
    with pytest.raises(ValueError, match=r"output='logit' is not one of \['probabilities'"):
        predict_images(model, cfg, arrays, device="cpu", output="logit")


def test_progress_is_reported_after_every_batch(images, model_and_cfg):
    files, _ = images
    model, cfg = model_and_cfg
    calls = []
    predict(
        model, cfg, files, batch_size=4, num_workers=0, device="cpu", loader=npy_loader,
        progress=lambda done, total: calls.append((done, total)),
    )  # fmt: skip
    assert calls == [(4, 10), (8, 10), (10, 10)]


def test_bad_loader_output_names_the_file(images, model_and_cfg):
    files, _ = images
    model, cfg = model_and_cfg
    with pytest.raises(ValueError, match=r"img0\.npy: image loader returned shape \(16, 16\)"):
        predict(model, cfg, files, num_workers=0, device="cpu", loader=lambda p: np.zeros((16, 16)))
    with pytest.raises(ValueError, match=r"img0\.npy: .* values in \[2.0, 2.0\]"):
        predict(
            model, cfg, files, num_workers=0, device="cpu",
            loader=lambda p: np.full((SIZE, SIZE), 2.0, np.float32),
        )  # fmt: skip


def test_empty_file_list_gives_an_empty_array(model_and_cfg):
    model, cfg = model_and_cfg
    assert predict(model, cfg, [], device="cpu").shape == (0, len(FINDINGS))


def _table(n: int) -> pd.DataFrame:
    return pd.DataFrame(
        {
            "image_id": [f"im{i}" for i in range(n)],
            "site": "site_a",
            "patient_pseudonym": [f"p{i // 2}" for i in range(n)],
            "batch": "b1",
        }
    )


def test_predictions_frame_is_schema_checked():
    probs = np.random.default_rng(1).random((4, len(FINDINGS)), dtype=np.float32)
    frame = predictions_frame(_table(4), probs, FINDINGS, SHA)
    assert list(frame.columns) == [
        "image_id",
        "site",
        "patient_pseudonym",
        *FINDINGS,
        "model_sha256",
    ]
    np.testing.assert_array_equal(frame["Hernia"].to_numpy(), probs[:, -1].astype(np.float64))
    Predictions.validate(frame)
    bad = probs.copy()
    bad[1, 2], bad[2, 3] = 1.5, np.nan
    with pytest.raises(pandera.errors.SchemaErrors) as err:
        predictions_frame(_table(4), bad, FINDINGS, SHA)
    failing = set(err.value.failure_cases["column"])
    assert {"Effusion", "Infiltration"} <= failing
    dup = _table(4).assign(image_id=["a", "a", "b", "c"])
    with pytest.raises(pandera.errors.SchemaErrors, match="image_id"):
        predictions_frame(dup, probs, FINDINGS, SHA)
    with pytest.raises(ValueError, match=r"probs has shape \(4, 14\), expected \(3, 14\)"):
        predictions_frame(_table(3), probs, FINDINGS, SHA)


def test_select_device_cpu_and_errors():
    choice = select_device("cpu")
    assert choice.device.type == "cpu" and choice.autocast_dtype is None and not choice.pin_memory
    with pytest.raises(ValueError, match="device='tpu' is not one of"):
        select_device("tpu")  # type: ignore[arg-type]
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="torch sees no CUDA device"):
            select_device("cuda")
        assert select_device("auto").device.type in ("cpu", "mps")
    else:  # pragma: no cover - only on GPU machines
        assert select_device("auto").pin_memory


def test_default_loader_decodes_png_files(tmp_path, model_and_cfg):
    from PIL import Image

    model, cfg = model_and_cfg
    rng = np.random.default_rng(3)
    files, arrays = [], []
    for i in range(3):
        arr = rng.integers(0, 256, (48, 40), dtype=np.uint8)
        files.append(tmp_path / f"{i}.png")
        Image.fromarray(arr).save(files[-1])
        resized = Image.fromarray(arr.astype(np.float32) / 255).resize((SIZE, SIZE), Image.BOX)
        arrays.append(np.asarray(resized, dtype=np.float32))
    probs = predict(model, cfg, files, num_workers=0, device="cpu")
    expected = predict_images(model, cfg, np.stack(arrays), device="cpu")
    np.testing.assert_allclose(probs, expected, atol=1e-6)


def test_loader_refuses_a_file_changed_after_validation(tmp_path) -> None:
    """What is scored must be what ingest validated: a changed file is refused, not scored."""
    import hashlib

    import pytest
    from PIL import Image

    from clinaudit.models.inference import ImageFileLoader

    path = tmp_path / "a.png"
    Image.fromarray((np.arange(64 * 64) % 255).astype(np.uint8).reshape(64, 64)).save(path)
    sha = hashlib.sha256(path.read_bytes()).hexdigest()
    loader = ImageFileLoader(32, expected_sha256={str(path): sha})
    assert loader(str(path)).shape == (32, 32)
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(path)
    with pytest.raises(ValueError, match="changed after ingest"):
        loader(str(path))


class _BatchNormRelu(torch.nn.BatchNorm2d):
    """A BatchNorm subclass that also applies an activation (like timm's BatchNormAct2d)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(super().forward(x))


class _PreBnResidual(torch.nn.Module):
    """The convolution's output is used twice: by the BatchNorm and by a residual add."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3, padding=1)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        return self.bn(y) + y


class _DataDependent(torch.nn.Module):
    """Control flow on tensor values: torch.fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) if x.mean() > 0 else x


class _ReadsBnWeight(torch.nn.Module):
    """The forward reads the BatchNorm's own parameter: replacing it with Identity would break."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = torch.nn.Conv2d(1, 4, 3)
        self.bn = torch.nn.BatchNorm2d(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.bn(self.conv(x)) * self.bn.weight.view(1, -1, 1, 1)


def _with_running_stats(model: torch.nn.Module) -> torch.nn.Module:
    """Non-trivial BatchNorm statistics and affine parameters, so folding is really exercised."""
    gen = torch.Generator().manual_seed(5)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            n = module.num_features
            module.running_mean.copy_(torch.randn(n, generator=gen))
            module.running_var.copy_(torch.rand(n, generator=gen) + 0.5)
            module.weight.data.copy_(torch.randn(n, generator=gen))
            module.bias.data.copy_(torch.randn(n, generator=gen))
    return model.eval()


def test_fold_batchnorm_folds_conv_bn_pairs_into_a_copy(model_and_cfg):
    from clinaudit.models.devices import fold_batchnorm

    model, _ = model_and_cfg
    model = _with_running_stats(copy.deepcopy(model))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    folded, n = fold_batchnorm(model)
    assert n == 3 and folded is not model
    assert not any(isinstance(m, torch.nn.BatchNorm2d) for m in folded.modules())
    assert sum(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules()) == 3
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    x = torch.rand(6, 1, SIZE, SIZE)
    with torch.no_grad():
        np.testing.assert_allclose(folded(x).numpy(), model(x).numpy(), rtol=1e-5, atol=1e-5)
    with pytest.raises(ValueError, match="eval mode"):
        fold_batchnorm(copy.deepcopy(model).train())


@pytest.mark.parametrize("net", [_PreBnResidual, _DataDependent, _ReadsBnWeight])
def test_fold_batchnorm_leaves_unsafe_or_untraceable_networks_alone(net):
    from clinaudit.models.devices import fold_batchnorm

    model = _with_running_stats(net())
    folded, n = fold_batchnorm(model)
    assert n == 0 and folded is model
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.isfinite(folded(x)).all()


def test_fold_batchnorm_skips_batchnorm_subclasses():
    from clinaudit.models.devices import fold_batchnorm

    model = _with_running_stats(torch.nn.Sequential(torch.nn.Conv2d(1, 4, 3), _BatchNormRelu(4)))
    folded, n = fold_batchnorm(model)
    assert n == 0 and folded is model


def test_predict_on_a_timm_network_matches_the_unfolded_eager_forward(tmp_path):
    adapter = create_adapter("timm_cxr", architecture="resnet10t", input_size=SIZE)
    model = _with_running_stats(adapter.create_model(seed=1))
    arrays = np.random.default_rng(2).random((5, SIZE, SIZE), dtype=np.float32)
    files = []
    for i, arr in enumerate(arrays):
        files.append(tmp_path / f"t{i}.npy")
        np.save(files[-1], arr)
    with torch.inference_mode():
        x = (torch.from_numpy(arrays).unsqueeze(1) - 0.5) / 0.25
        eager = torch.sigmoid(copy.deepcopy(model)(x)).numpy()
    kw = dict(num_workers=0, device="cpu", loader=npy_loader)
    probs = predict(model, adapter.config, files, **kw)
    np.testing.assert_allclose(probs, eager, rtol=0, atol=1e-5)
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())  # caller's model
    assert np.array_equal(predict(model, adapter.config, files, batch_size=16, **kw), probs)


def test_default_batch_size_depends_on_the_device():
    from clinaudit.models.inference import default_batch_size

    choice = select_device("cpu", "fp32")
    assert choice.fold_batchnorm and default_batch_size(choice) == 16
    if torch.ops.mkldnn._is_mkldnn_bf16_supported():
        assert default_batch_size(select_device("cpu", "bf16")) == 16
    if torch.cuda.is_available():  # pragma: no cover - only on GPU machines
        gpu = select_device("cuda")
        assert default_batch_size(gpu) == 32 and not gpu.fold_batchnorm
