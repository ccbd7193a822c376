"""A tokenizer for free-text clinical notes, trained locally with Hugging Face ``tokenizers``.

Nothing is downloaded: :func:`train_note_tokenizer` learns a byte-pair-encoding vocabulary from
the training notes only and wraps it as a ``transformers`` fast tokenizer;
:func:`save_note_tokenizer` writes one ``tokenizer.json`` and :func:`load_note_tokenizer` reads it
back from a local path.

Design
------
* Normalisation and pre-tokenisation are BERT's (``BertNormalizer``: lower case, accents stripped,
  control characters removed; ``BertPreTokenizer``: split on white space and punctuation).
* The model is BPE, not WordPiece: the ``tokenizers`` WordPiece trainer numbers its ``##``
  continuation pieces in hash-map order, so ties between equally frequent merges are broken
  differently from one process to the next and the vocabulary (and every token id) changes between
  two runs on the same notes. The BPE trainer numbers its alphabet in character order and breaks
  ties by pair id: the same notes give the same ``tokenizer.json`` bytes in every process (tested).
* Printable ASCII is always in the alphabet, so digits and punctuation never become ``[UNK]``
  even when the training notes lack them.
* Special tokens have fixed ids: ``[PAD]`` 0, ``[UNK]`` 1, ``[CLS]`` 2, ``[SEP]`` 3, ``[MASK]`` 4.
  Every encoded note is ``[CLS] tokens [SEP]`` (truncated to ``max_length``) followed by ``[PAD]``;
  the pooled text embedding is read at position 0, where ``[CLS]`` always is.
* A missing note (``None``, NaN, ``""`` or only white space) is encoded as ``[CLS] [SEP]`` and
  flagged ``note_present=False``, which the fusion models see.
"""

from __future__ import annotations

import math
import os
import string
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")
PAD_ID, UNK_ID, CLS_ID, SEP_ID, MASK_ID = range(len(SPECIAL_TOKENS))
#: Position of ``[CLS]`` in every encoded note: where the pooled text embedding is read.
CLS_POSITION = 0
TOKENIZER_FILE = "tokenizer.json"
_ALPHABET = sorted(set(string.printable) - set(string.whitespace))
__all__ = [
    "CLS_ID",
    "CLS_POSITION",
    "PAD_ID",
    "SEP_ID",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILE",
    "EncodedNotes",
    "encode_notes",
    "load_note_tokenizer",
    "note_present",
    "save_note_tokenizer",
    "train_note_tokenizer",
]


@dataclass(frozen=True)
class EncodedNotes:
    """Notes as fixed-length token tensors.

    Attributes
    ----------
    input_ids : torch.Tensor
        ``(N, L)`` int64 token ids: ``[CLS] ... [SEP]`` then ``[PAD]``.
    attention_mask : torch.Tensor
        ``(N, L)`` int64, 1 on real tokens (``[CLS]`` and ``[SEP]`` included), 0 on padding.
    note_present : torch.Tensor
        ``(N,)`` bool, False where the note was missing (encoded as ``[CLS] [SEP]``).
    """

    input_ids: torch.Tensor
    attention_mask: torch.Tensor
    note_present: torch.Tensor


def _is_missing(note: object) -> bool:
    if note is None:
        return True
    if isinstance(note, float) and math.isnan(note):
        return True
    if not isinstance(note, str):
        raise TypeError(
            f'a note must be a string ("" when missing) or None, got {type(note).__name__} {note!r}'
        )
    return not note.strip()


def note_present(notes: Iterable[object]) -> np.ndarray:
    """Which notes are present: False for ``None``, NaN, ``""`` and white space only.

    Parameters
    ----------
    notes : iterable of str or None
        Free-text notes.

    Returns
    -------
    numpy.ndarray
        Boolean array, one entry per note.

    Examples
    --------
    >>> note_present(["itchy, grew fast", "", "  ", None]).tolist()
    [True, False, False, False]
    """
    return np.array([not _is_missing(n) for n in notes], dtype=bool)


def _wrap(tok: Tokenizer, max_length: int) -> PreTrainedTokenizerFast:
    for token, expected in zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS)), strict=True):
        found = tok.token_to_id(token)
        if found != expected:
            raise ValueError(
                f"tokenizer gives {token} the id {found}, expected {expected}; train it with "
                "train_note_tokenizer (special tokens first, in SPECIAL_TOKENS order)"
            )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=int(max_length),
        padding_side="right",
        truncation_side="right",
    )


def train_note_tokenizer(
    notes: Sequence[object],
    *,
    vocab_size: int = 1000,
    min_frequency: int = 2,
    max_length: int = 48,
) -> PreTrainedTokenizerFast:
    """Train a BPE tokenizer on the (training) notes; nothing is downloaded.

    Parameters
    ----------
    notes : sequence of str or None
        Training notes; missing ones (see :func:`note_present`) are skipped.
    vocab_size : int
        Largest vocabulary, special tokens and alphabet included (smaller if the notes are short).
    min_frequency : int
        A merge must occur at least this often.
    max_length : int
        Tokens per encoded note, ``[CLS]`` and ``[SEP]`` included (``model_max_length``).

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        The wrapped tokenizer; ``len(tokenizer)`` is its vocabulary size.

    Raises
    ------
    ValueError
        If no note is present or a setting is out of range.

    Examples
    --------
    >>> tok = train_note_tokenizer(["pearly nodule", "pearly papule", ""], vocab_size=120)
    >>> tok("pearly nodule")["input_ids"][0] == CLS_ID
    True
    """
    if vocab_size < len(SPECIAL_TOKENS) + len(_ALPHABET) or min_frequency < 1 or max_length < 3:
        raise ValueError(
            f"vocab_size={vocab_size} must be >= {len(SPECIAL_TOKENS) + len(_ALPHABET)} (special "
            f"tokens + printable ASCII), min_frequency={min_frequency} >= 1 and "
            f"max_length={max_length} >= 3 ([CLS] token [SEP])"
        )
    present = [str(n) for n in notes if not _is_missing(n)]
    if not present:
        raise ValueError(
            f"all {len(notes)} notes are missing; a tokenizer needs at least one non-empty note"
        )
    tok = Tokenizer(models.BPE(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(
        vocab_size=int(vocab_size),
        min_frequency=int(min_frequency),
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=_ALPHABET,
        show_progress=False,
    )
    tok.train_from_iterator(present, trainer=trainer, length=len(present))
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", special_tokens=[("[CLS]", CLS_ID), ("[SEP]", SEP_ID)]
    )
    return _wrap(tok, max_length)


def save_note_tokenizer(
    tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike[str]
) -> Path:
    """Write ``tokenizer.json`` (vocabulary, merges, normaliser, template) into ``directory``.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerFast
        From :func:`train_note_tokenizer` or :func:`load_note_tokenizer`.
    directory : path
        Created if needed.

    Returns
    -------
    Path
        The written file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / TOKENIZER_FILE
    tmp = directory / f".{TOKENIZER_FILE}.tmp"
    # Encoding with padding/truncation leaves those settings on the backend; the file holds the
    # tokenizer without them so that its bytes depend only on the training notes.
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    tmp.write_text(backend.to_str(pretty=True) + "\n", encoding="utf-8", newline="\n")
    os.replace(tmp, path)
    return path


def load_note_tokenizer(
    path: str | os.PathLike[str], *, max_length: int = 48
) -> PreTrainedTokenizerFast:
    """Read a tokenizer written by :func:`save_note_tokenizer` (a local file; no hub access).

    Parameters
    ----------
    path : path
        ``tokenizer.json`` or the directory holding it.
    max_length : int
        Tokens per encoded note.

    Returns
    -------
    transformers.PreTrainedTokenizerFast

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If its special tokens do not have the fixed ids.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(
            f"{path}: no tokenizer file; write one with save_note_tokenizer(tokenizer, directory)"
        )
    return _wrap(Tokenizer.from_file(str(path)), max_length)


def encode_notes(
    tokenizer: PreTrainedTokenizerFast, notes: Sequence[object], *, max_length: int = 48
) -> EncodedNotes:
    """Encode notes as ``[CLS] tokens [SEP] [PAD]...`` of exactly ``max_length`` tokens.

    Parameters
    ----------
    tokenizer : transformers.PreTrainedTokenizerFast
        From :func:`train_note_tokenizer` / :func:`load_note_tokenizer`.
    notes : sequence of str or None
        Notes; missing ones become ``[CLS] [SEP]`` with ``note_present`` False.
    max_length : int
        Tokens per note (longer notes are truncated, ``[SEP]`` kept last).

    Returns
    -------
    EncodedNotes

    Examples
    --------
    >>> tok = train_note_tokenizer(["pearly nodule", "scaly patch"], vocab_size=120)
    >>> enc = encode_notes(tok, ["pearly nodule", ""], max_length=8)
    >>> enc.input_ids[1, :3].tolist(), enc.note_present.tolist()
    ([2, 3, 0], [True, False])
    """
    if max_length < 3:
        raise ValueError(f"max_length={max_length} must be >= 3 ([CLS] token [SEP])")
    present = note_present(notes)
    texts = [str(n) if p else "" for n, p in zip(notes, present, strict=True)]
    out = tokenizer(
        texts,
        padding="max_length",
        truncation=True,
        max_length=int(max_length),
        return_tensors="pt",
        return_token_type_ids=False,
    )
    return EncodedNotes(
        input_ids=out["input_ids"].to(torch.int64),
        attention_mask=out["attention_mask"].to(torch.int64),
        note_present=torch.from_numpy(present),
    )
