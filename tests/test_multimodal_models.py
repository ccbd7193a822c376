"""Image + note arms: local tokenizer, forward passes, pooling position, determinism, modality
dropout, a synthetic task only fusion can solve, and the package round trip (all on tiny configs,
one CPU thread)."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import clinaudit.models.multimodal_train as mm_train
from clinaudit.models.multimodal_arms import TextEncoder, build_arm, count_parameters
from clinaudit.models.multimodal_config import ARMS, MultimodalConfig, UnknownArmError
from clinaudit.models.multimodal_data import (
    PairedData,
    batch_inputs,
    prepare_images,
    prepare_pairs,
    remove_notes,
)
from clinaudit.models.multimodal_eval import evaluate_note_removal, predict_proba
from clinaudit.models.multimodal_package import (
    MultimodalCard,
    load_multimodal_package,
    multimodal_package_sha256,
    save_multimodal_package,
    training_summary,
)
from clinaudit.models.multimodal_train import MultimodalTrainConfig, train_arm, train_arms
from clinaudit.models.package import ModelPackageError
from clinaudit.models.text_tokenizer import (
    CLS_ID,
    CLS_POSITION,
    PAD_ID,
    SEP_ID,
    encode_notes,
    load_note_tokenizer,
    save_note_tokenizer,
    train_note_tokenizer,
)

LABELS = ("A", "B", "C")
TINY = dict(
    image_size=32, patch_size=8, image_dim=32, image_depth=1, image_heads=2, max_length=16,
    text_dim=32, text_layers=1, text_heads=2, text_ffn=64, fusion_dim=32, fusion_heads=2,
)  # fmt: skip
FILLER = ["patient", "reports", "lesion", "on", "arm", "since", "months", "noted", "by", "wife"]


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    """Any socket connection fails; the hub is offline and its cache is an empty directory."""

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args}")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
    return tmp_path / "hf_home"


def synthetic_pairs(n: int, seed: int, *, missing: float = 0.2, size: int = 32):
    """Class A: only its note says "alpha"; class B: only its image has a red disc; C: neither."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, size=n)
    yy, xx = np.mgrid[0:size, 0:size]
    images = rng.integers(90, 150, size=(n, size, size, 3)).astype(np.uint8)
    notes = []
    for i, label in enumerate(y):
        if label == 1:
            cy, cx = rng.integers(8, size - 8, size=2)
            disc = (yy - cy) ** 2 + (xx - cx) ** 2 < 36
            images[i][disc] = (220, 30, 30)
        words = list(rng.choice(FILLER, size=rng.integers(3, 7)))
        if label == 0:
            words.insert(int(rng.integers(0, len(words) + 1)), "alpha")
        # Only notes of classes B and C may be missing: an A without its note is unidentifiable.
        notes.append("" if label != 0 and rng.random() < missing else " ".join(words))
    return images, notes, y


@pytest.fixture(scope="module")
def tokenizer():
    _, notes, _ = synthetic_pairs(200, seed=1)
    return train_note_tokenizer(notes, vocab_size=200, max_length=16)


@pytest.fixture(scope="module")
def config(tokenizer) -> MultimodalConfig:
    return MultimodalConfig.for_tokenizer(tokenizer, LABELS, **TINY)


def pairs(tokenizer, config, n: int, seed: int, **kw) -> PairedData:
    images, notes, y = synthetic_pairs(n, seed, **kw)
    return prepare_pairs(images, notes, tokenizer, config, labels=y)


def test_tokenizer_is_trained_locally_and_round_trips(no_network: Path, tmp_path: Path) -> None:
    _, notes, _ = synthetic_pairs(120, seed=3)
    tok = train_note_tokenizer(notes, vocab_size=150, max_length=12)
    assert [tok.pad_token_id, tok.cls_token_id, tok.sep_token_id] == [PAD_ID, CLS_ID, SEP_ID]
    assert len(tok) <= 150
    texts = ["Patient reports ALPHA lesion, 3 cm!", "", "   ", " ".join(["wife"] * 30)]
    enc = encode_notes(tok, texts, max_length=12)
    assert enc.note_present.tolist() == [True, False, False, True]
    assert (enc.input_ids[:, CLS_POSITION] == CLS_ID).all()
    assert enc.input_ids[1, :3].tolist() == [CLS_ID, SEP_ID, PAD_ID]
    assert enc.input_ids[3, -1] == SEP_ID  # truncated, [SEP] kept last
    assert 1 not in enc.input_ids[0].tolist()  # no [UNK]: printable ASCII is in the alphabet
    path = save_note_tokenizer(tok, tmp_path / "tok")
    again = load_note_tokenizer(path.parent, max_length=12)
    assert torch.equal(encode_notes(again, texts, max_length=12).input_ids, enc.input_ids)
    path2 = save_note_tokenizer(again, tmp_path / "tok2")
    assert path.read_bytes() == path2.read_bytes()
    assert not no_network.exists() or not any(no_network.rglob("*"))
    with pytest.raises(ValueError, match="all 2 notes are missing"):
        train_note_tokenizer(["", None])


def test_tokenizer_training_is_identical_in_another_process(tmp_path: Path) -> None:
    # The WordPiece trainer numbers pieces in hash-map order (a different vocabulary per
    # process); the BPE tokenizer used here must give the same bytes everywhere.
    _, notes, _ = synthetic_pairs(150, seed=4)
    (tmp_path / "notes.json").write_text(json.dumps(notes))
    script = (
        "import json, sys; from clinaudit.models.text_tokenizer import *; "
        "n = json.load(open(sys.argv[1])); "
        "save_note_tokenizer(train_note_tokenizer(n, vocab_size=140), sys.argv[2])"
    )
    subprocess.run(
        [sys.executable, "-c", script, str(tmp_path / "notes.json"), str(tmp_path / "other")],
        check=True,
        timeout=120,
    )
    here = save_note_tokenizer(train_note_tokenizer(notes, vocab_size=140), tmp_path / "here")
    assert here.read_bytes() == (tmp_path / "other" / "tokenizer.json").read_bytes()


@pytest.mark.parametrize("arm", ARMS)
def test_every_arm_forwards_with_and_without_notes(arm: str, tokenizer, config) -> None:
    data = pairs(tokenizer, config, 6, seed=5, missing=0.5)
    data = remove_notes(data, 0.5, seed=0)
    assert not bool(data.note_present.all())
    model = build_arm(arm, config, seed=0).eval()
    assert count_parameters(model) > 0
    inputs = batch_inputs(data, torch.arange(len(data)), config, torch.device("cpu"))
    with torch.no_grad():
        logits = model(**inputs)
    assert logits.shape == (6, len(LABELS))
    assert torch.isfinite(logits).all()
    probs = predict_proba(model, data, config, batch_size=4, device="cpu")
    np.testing.assert_allclose(probs.sum(axis=1), 1.0, rtol=1e-5)


def test_pooled_text_embedding_comes_from_the_cls_position(tokenizer, config) -> None:
    # The ids the text model was built with are the tokenizer's and inside its vocabulary.
    encoder = TextEncoder(config).eval()
    bert = encoder.bert.config
    assert bert.vocab_size == len(tokenizer) == config.vocab_size
    assert bert.pad_token_id == tokenizer.pad_token_id
    assert encoder.bert.embeddings.word_embeddings.num_embeddings == len(tokenizer)
    assert max(tokenizer.cls_token_id, tokenizer.sep_token_id) < len(tokenizer)
    enc = encode_notes(tokenizer, ["patient reports alpha lesion", ""], max_length=16)
    ids, mask = enc.input_ids, enc.attention_mask
    with torch.no_grad():
        hidden, pooled = encoder(ids, mask)
        assert torch.equal(pooled, hidden[:, CLS_POSITION])
        after_sep = ids.clone()
        after_sep[mask == 0] = tokenizer.convert_tokens_to_ids("wife")  # behind [SEP], masked
        assert torch.equal(encoder(after_sep, mask)[1], pooled)
        content = ids.clone()
        content[0, 3] = tokenizer.convert_tokens_to_ids("wife")  # a real token of the note
        changed = encoder(content, mask)[1]
    assert not torch.allclose(changed[0], pooled[0], atol=1e-4)
    assert torch.equal(changed[1], pooled[1])
    shifted = torch.roll(ids, 1, dims=1)  # [CLS] no longer at position 0
    with pytest.raises(ValueError, match=r"must start with \[CLS\]"):
        encoder(shifted, mask)
    # Every arm that reads notes ignores what lies behind [SEP] and reads the note itself.
    pixels = torch.zeros(2, 3, config.image_size, config.image_size)
    flags = dict(note_present=enc.note_present, image_present=torch.ones(2, dtype=torch.bool))
    for arm in ("text_only", "late_fusion", "early_fusion", "vilt"):
        model = build_arm(arm, config, seed=0).eval()
        with torch.no_grad():
            base = model(pixels=pixels, input_ids=ids, attention_mask=mask, **flags)
            padded = model(pixels=pixels, input_ids=after_sep, attention_mask=mask, **flags)
            edited = model(pixels=pixels, input_ids=content, attention_mask=mask, **flags)
        torch.testing.assert_close(padded, base, rtol=0, atol=1e-6, msg=arm)
        assert not torch.allclose(edited[0], base[0], atol=1e-5), arm
    other = train_note_tokenizer(["completely different words here"] * 3, vocab_size=120)
    with pytest.raises(ValueError, match="tokenizer .* but the model was built for"):
        config.check_tokenizer(other)


def test_same_seed_gives_identical_weights_and_predictions(tokenizer, config) -> None:
    train, val = pairs(tokenizer, config, 64, seed=6), pairs(tokenizer, config, 16, seed=7)
    cfg = MultimodalTrainConfig(epochs=1, batch_size=16, device="cpu", seed=3)
    rng_before = torch.get_rng_state()
    a = train_arm("early_fusion", train, val, config, cfg)
    b = train_arm("early_fusion", train, val, config, cfg)
    assert torch.equal(torch.get_rng_state(), rng_before)  # the caller's RNG is untouched
    sa, sb = a.model.state_dict(), b.model.state_dict()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)
    np.testing.assert_array_equal(
        predict_proba(a.model, val, config, device="cpu"),
        predict_proba(b.model, val, config, device="cpu"),
    )
    c = train_arm("early_fusion", train, val, config, MultimodalTrainConfig(
        epochs=1, batch_size=16, device="cpu", seed=4))  # fmt: skip
    assert not all(torch.equal(sa[k], c.model.state_dict()[k]) for k in sa)


def test_modality_dropout_drops_in_training_only(
    monkeypatch: pytest.MonkeyPatch, tokenizer, config
) -> None:
    seen: dict[str, list[tuple[bool, torch.Tensor, torch.Tensor]]] = {}

    def hooked(arm: str, cfg: MultimodalConfig, *, seed: int | None = 0) -> torch.nn.Module:
        model = build_arm(arm, cfg, seed=seed)

        def hook(module: torch.nn.Module, args: tuple, kwargs: dict) -> None:
            seen.setdefault(arm, []).append(
                (module.training, kwargs["note_present"].clone(), kwargs["image_present"].clone())
            )

        model.register_forward_pre_hook(hook, with_kwargs=True)
        return model

    monkeypatch.setattr(mm_train, "build_arm", hooked)
    train = pairs(tokenizer, config, 200, seed=8, missing=0.0)
    val = pairs(tokenizer, config, 20, seed=9, missing=0.0)
    cfg = MultimodalTrainConfig(
        epochs=2, batch_size=50, note_dropout=0.5, image_dropout=0.4, device="cpu"
    )
    for arm in ("early_fusion", "text_only"):
        train_arm(arm, train, val, config, cfg)
    calls = seen["early_fusion"]
    note = torch.cat([n for t, n, _ in calls if t])
    image = torch.cat([i for t, _, i in calls if t])
    assert len(note) == 400
    assert 0.4 < (~note).float().mean() < 0.6  # note dropped with p = 0.5
    assert 0.1 < (~image).float().mean() < 0.3  # image dropped with p = 0.4 among kept notes
    assert not bool((~note & ~image).any())  # never both
    assert all(bool(n.all() and i.all()) for t, n, i in calls if not t)  # none at validation
    text_calls = [n for t, n, _ in seen["text_only"] if t]
    assert all(bool(n.all()) for n in text_calls)  # single-modality arms keep their input


def test_fusion_beats_each_modality_where_only_the_other_one_tells(tokenizer, config) -> None:
    train, val = pairs(tokenizer, config, 480, seed=10), pairs(tokenizer, config, 120, seed=11)
    test = pairs(tokenizer, config, 240, seed=12, missing=0.0)
    cfg = MultimodalTrainConfig(epochs=6, batch_size=32, lr=3e-3, device="cpu", seed=0)
    results = train_arms(train, val, config, cfg)
    assert list(results) == ["image_only", "text_only", "early_fusion", "late_fusion"]
    budgets = {results[a].budget for a in ("image_only", "text_only", "early_fusion")}
    assert len(budgets) == 1 and next(iter(budgets)).steps == 6 * 15
    assert results["late_fusion"].budget.steps == 0
    y = test.labels.numpy()
    recall = {}
    for arm, result in results.items():
        pred = predict_proba(result.model, test, config, device="cpu").argmax(axis=1)
        recall[arm] = [float((pred[y == c] == c).mean()) for c in range(3)]
    # Without its note an A looks like a C, and without its image a B looks like a C: each
    # single-modality arm can tell at most one class of each confused pair.
    assert recall["image_only"][1] > 0.9 and recall["text_only"][0] > 0.9, recall
    assert recall["image_only"][0] + recall["image_only"][2] < 1.25, recall
    assert recall["text_only"][1] + recall["text_only"][2] < 1.25, recall
    for fused in ("early_fusion", "late_fusion"):
        assert min(recall[fused]) > 0.85, recall
        for single in ("image_only", "text_only"):
            assert np.mean(recall[fused]) > np.mean(recall[single]) + 0.15, recall


def test_note_removal_evaluation_is_seeded_and_nested(tokenizer, config) -> None:
    data = pairs(tokenizer, config, 100, seed=13, missing=0.2)
    present = int(data.note_present.sum())
    r30 = remove_notes(data, 0.3, seed=5)
    r70 = remove_notes(data, 0.7, seed=5)
    assert int(r30.note_present.sum()) == present - round(0.3 * present)
    assert bool((r70.note_present <= r30.note_present).all())  # 70 % removes a superset
    assert torch.equal(remove_notes(data, 0.3, seed=5).input_ids, r30.input_ids)
    blanked = ~r30.note_present & data.note_present
    assert (r30.input_ids[blanked, :2] == torch.tensor([CLS_ID, SEP_ID])).all()
    assert (r30.attention_mask[blanked].sum(dim=1) == 2).all()
    model = build_arm("early_fusion", config, seed=0)
    rows = evaluate_note_removal(model, data, config, seed=5, device="cpu")
    assert [r.fraction for r in rows] == [0.0, 0.3, 0.7]
    assert [r.notes_present for r in rows] == [
        present, int(r30.note_present.sum()), int(r70.note_present.sum())
    ]  # fmt: skip
    assert all(0 <= r.accuracy <= 1 and r.log_loss > 0 for r in rows)
    with pytest.raises(ValueError, match="fraction=1.5 must lie in"):
        remove_notes(data, 1.5)


def test_package_round_trip_and_tampering_refused(
    tmp_path: Path, no_network: Path, tokenizer, config
) -> None:
    data = pairs(tokenizer, config, 12, seed=14)
    card = MultimodalCard(vendor="tests", intended_use="unit tests", created_utc="2026-01-01")
    for arm in ARMS:
        model = build_arm(arm, config, seed=1).eval()
        directory = save_multimodal_package(tmp_path / arm, arm, model, config, tokenizer, card)
        loaded = load_multimodal_package(directory, expected_labels=LABELS)
        assert loaded.arm == arm and loaded.config == config
        np.testing.assert_array_equal(
            predict_proba(loaded.model, data, config, device="cpu"),
            predict_proba(model, data, config, device="cpu"),
        )
        assert loaded.sha256 == multimodal_package_sha256(directory)
    again = save_multimodal_package(
        tmp_path / "again", "vilt", build_arm("vilt", config, seed=1), config, tokenizer, card
    )
    assert multimodal_package_sha256(again) == multimodal_package_sha256(tmp_path / "vilt")
    with pytest.raises(ModelPackageError, match="already holds a model package"):
        save_multimodal_package(again, "vilt", build_arm("vilt", config), config, tokenizer, card)
    with pytest.raises(ModelPackageError, match="classes differ"):
        load_multimodal_package(again, expected_labels=("C", "B", "A"))
    weights = again / "model.safetensors"
    raw = bytearray(weights.read_bytes())
    raw[-1] ^= 0xFF
    weights.write_bytes(bytes(raw))
    with pytest.raises(ModelPackageError, match=r"sha256 of model.safetensors differs"):
        load_multimodal_package(again)
    tok_file = tmp_path / "early_fusion" / "tokenizer.json"
    tok_file.write_text(tok_file.read_text().replace('"alpha"', '"alpho"'))
    with pytest.raises(ModelPackageError, match=r"sha256 of tokenizer.json differs"):
        load_multimodal_package(tmp_path / "early_fusion")
    (tmp_path / "text_only" / "weights.pt").write_bytes(b"pickle")
    with pytest.raises(ModelPackageError, match="pickle"):
        load_multimodal_package(tmp_path / "text_only")
    assert not no_network.exists() or not any(no_network.rglob("*"))


def test_trained_arm_package_records_its_budget(tmp_path: Path, tokenizer, config) -> None:
    train, val = pairs(tokenizer, config, 40, seed=15), pairs(tokenizer, config, 10, seed=16)
    result = train_arm("text_only", train, val, config, MultimodalTrainConfig(
        epochs=2, batch_size=16, device="cpu"))  # fmt: skip
    assert result.budget.steps == 2 * 3 and result.budget.samples == 80
    assert 1 <= result.best_epoch <= 2 and len(result.history) == 2
    card = MultimodalCard("tests", "unit tests", training=training_summary(result))
    directory = save_multimodal_package(
        tmp_path / "p", "text_only", result.model, config, tokenizer, card
    )
    loaded = load_multimodal_package(directory)
    assert loaded.card.training is not None
    assert loaded.card.training["budget"] == {"epochs": 2, "batch_size": 16, "steps": 6,
                                              "samples": 80}  # fmt: skip


def test_images_from_files_arrays_and_mixed_sizes_agree(tmp_path: Path) -> None:
    from PIL import Image

    images, _, _ = synthetic_pairs(3, seed=17, size=48)
    paths = []
    for i, img in enumerate(images):
        paths.append(tmp_path / f"{i}.png")
        Image.fromarray(img).save(paths[-1])
    from_array = prepare_images(images, 32)
    assert from_array.shape == (3, 3, 32, 32) and from_array.dtype == torch.uint8
    assert torch.equal(prepare_images(paths, 32), from_array)
    assert torch.equal(prepare_images(list(images), 32), from_array)
    mixed = prepare_images([images[0], images[1][:40, :40]], 32)
    assert torch.equal(mixed[0], from_array[0]) and mixed.shape == (2, 3, 32, 32)


def test_invalid_inputs_say_what_to_do(tokenizer, config) -> None:
    with pytest.raises(UnknownArmError, match="Did you mean 'early_fusion'"):
        build_arm("early_fuson", config)
    with pytest.raises(UnknownArmError, match="late_fusion"):
        train_arm("late_fusion", *[pairs(tokenizer, config, 8, seed=0)] * 2, config)
    images, notes, y = synthetic_pairs(4, seed=0)
    with pytest.raises(ValueError, match="expected class indices 0..2"):
        prepare_pairs(images, notes, tokenizer, config, labels=[0, 1, 2, 3])
    with pytest.raises(ValueError, match="give one note"):
        prepare_pairs(images, notes[:3], tokenizer, config)
    with pytest.raises(ValueError, match=r"expected \(N, H, W, 3\) uint8"):
        prepare_pairs(images.astype(np.float32), notes, tokenizer, config)
    with pytest.raises(ValueError, match="multiple of patch_size"):
        MultimodalConfig.for_tokenizer(tokenizer, LABELS, image_size=30, patch_size=8)
    big = MultimodalConfig.for_tokenizer(tokenizer, LABELS, **{**TINY, "image_size": 64})
    with pytest.raises(ValueError, match="images are 32 px but the arms take 64 px"):
        train_arm("image_only", *[pairs(tokenizer, config, 8, seed=0)] * 2, big)
