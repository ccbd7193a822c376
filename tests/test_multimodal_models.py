"""Image + note arms: the locally trained note tokenizer."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

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
