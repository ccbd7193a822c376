"""A word-level tokenizer for yes/no chest X-ray questions, trained locally with ``tokenizers``.

Nothing is downloaded. :func:`train_vqa_tokenizer` counts lower-cased words of the training
prompts and answers and keeps the most frequent ones; the result is wrapped as a ``transformers``
fast tokenizer so that the Hugging Face vision-language classes and ``generate`` can use it.

Design
------
* Word level, not BPE: the answer must be ONE token (``yes`` / ``no``) so that
  ``P(yes) = sigmoid(z_yes - z_no)`` is read from the first answer position; both words are
  always in the vocabulary, whatever the training texts.
* The vocabulary is built by hand from counts sorted by ``(-count, word)``, not by the
  ``tokenizers`` WordLevel trainer (whose ties follow hash-map order): the same texts give the
  same ``tokenizer.json`` bytes in every process.
* Normalisation is lower case + accent stripping (``BertNormalizer``); pre-tokenisation splits on
  white space and punctuation (``BertPreTokenizer``), so a newline separator disappears and ``?``
  and ``:`` are tokens.
* Special tokens have fixed ids: ``<pad>`` 0, ``<bos>`` 1, ``<eos>`` 2, ``<unk>`` 3,
  ``<image>`` 4. No post-processor: the adapters place ``<image>`` and ``<bos>`` themselves.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Sequence
from pathlib import Path

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers
from transformers import PreTrainedTokenizerFast

SPECIAL_TOKENS: tuple[str, ...] = ("<pad>", "<bos>", "<eos>", "<unk>", "<image>")
PAD_ID, BOS_ID, EOS_ID, UNK_ID, IMAGE_ID = range(len(SPECIAL_TOKENS))
ANSWER_WORDS: tuple[str, str] = ("yes", "no")
TOKENIZER_FILE = "tokenizer.json"
__all__ = [
    "ANSWER_WORDS",
    "BOS_ID",
    "EOS_ID",
    "IMAGE_ID",
    "PAD_ID",
    "SPECIAL_TOKENS",
    "TOKENIZER_FILE",
    "load_checkpoint_tokenizer",
    "load_vqa_tokenizer",
    "save_vqa_tokenizer",
    "train_vqa_tokenizer",
]


def _backend(vocab: dict[str, int]) -> Tokenizer:
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True, strip_accents=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.add_special_tokens(list(SPECIAL_TOKENS))
    return tok


def _wrap(tok: Tokenizer) -> PreTrainedTokenizerFast:
    for token, expected in zip(SPECIAL_TOKENS, range(len(SPECIAL_TOKENS)), strict=True):
        found = tok.token_to_id(token)
        if found != expected:
            raise ValueError(
                f"tokenizer gives {token} the id {found}, expected {expected}; train it with "
                "train_vqa_tokenizer (special tokens first, in SPECIAL_TOKENS order)"
            )
    for word in ANSWER_WORDS:
        if tok.token_to_id(word) is None:
            raise ValueError(f"the answer word {word!r} is not a single token of this tokenizer")
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        bos_token="<bos>",
        eos_token="<eos>",
        unk_token="<unk>",
        extra_special_tokens={"image_token": "<image>"},
        padding_side="right",
    )


def train_vqa_tokenizer(texts: Sequence[str], *, vocab_size: int = 256) -> PreTrainedTokenizerFast:
    """Learn a word-level vocabulary from questions, answers and captions.

    Parameters
    ----------
    texts : sequence of str
        Training texts (prompts, answers, captions).
    vocab_size : int
        Largest vocabulary, special tokens and ``yes``/``no`` included; the most frequent words
        are kept (ties by alphabetical order), the others become ``<unk>``.

    Returns
    -------
    transformers.PreTrainedTokenizerFast
        ``len(tokenizer)`` is the vocabulary size.

    Raises
    ------
    ValueError
        If ``vocab_size`` leaves no room for the special tokens and answer words, or a text is not
        a string.

    Examples
    --------
    >>> tok = train_vqa_tokenizer(["Is the heart enlarged?", "yes", "no"], vocab_size=32)
    >>> tok.convert_ids_to_tokens(tok("Is the heart enlarged? YES")["input_ids"])
    ['is', 'the', 'heart', 'enlarged', '?', 'yes']
    """
    floor = len(SPECIAL_TOKENS) + len(ANSWER_WORDS)
    if vocab_size < floor:
        raise ValueError(f"vocab_size={vocab_size} must be >= {floor} (special tokens + yes/no)")
    probe = _backend({t: i for i, t in enumerate(SPECIAL_TOKENS)})
    counts: Counter[str] = Counter()
    for text in texts:
        if not isinstance(text, str):
            raise ValueError(f"texts must be strings, got {type(text).__name__} {text!r}")
        norm = probe.normalizer.normalize_str(text)
        counts.update(w for w, _ in probe.pre_tokenizer.pre_tokenize_str(norm))
    words = list(ANSWER_WORDS)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
    words += [w for w, _ in ranked if w not in ANSWER_WORDS and w not in SPECIAL_TOKENS]
    words = words[: vocab_size - len(SPECIAL_TOKENS)]
    vocab = {t: i for i, t in enumerate(SPECIAL_TOKENS)}
    vocab.update({w: len(SPECIAL_TOKENS) + i for i, w in enumerate(words)})
    return _wrap(_backend(vocab))


def save_vqa_tokenizer(
    tokenizer: PreTrainedTokenizerFast, directory: str | os.PathLike[str]
) -> Path:
    """Write ``tokenizer.json`` into ``directory`` (created if needed); returns the file."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    backend = Tokenizer.from_str(tokenizer.backend_tokenizer.to_str())
    backend.no_padding()
    backend.no_truncation()
    tmp = directory / f".{TOKENIZER_FILE}.tmp"
    tmp.write_text(backend.to_str(pretty=True) + "\n", encoding="utf-8", newline="\n")
    os.replace(tmp, directory / TOKENIZER_FILE)
    return directory / TOKENIZER_FILE


def load_vqa_tokenizer(path: str | os.PathLike[str]) -> PreTrainedTokenizerFast:
    """Read a tokenizer written by :func:`save_vqa_tokenizer` (``tokenizer.json`` or its folder).

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If its special-token ids or answer words are not those of :func:`train_vqa_tokenizer`.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}; save one with save_vqa_tokenizer")
    return _wrap(Tokenizer.from_file(str(path)))


def load_checkpoint_tokenizer(
    path: str | os.PathLike[str], special: dict[str, str]
) -> PreTrainedTokenizerFast:
    """Read the ``tokenizer.json`` of a package made from a local checkpoint's tokenizer (any
    fast tokenizer), with its special tokens (``pad_token``, ``bos_token``, ...) as recorded.

    Raises
    ------
    FileNotFoundError
        If the file does not exist.
    ValueError
        If a recorded special token is not in the vocabulary or ``yes`` / ``no`` is not one
        known token.
    """
    path = Path(path)
    if path.is_dir():
        path = path / TOKENIZER_FILE
    if not path.is_file():
        raise FileNotFoundError(f"no tokenizer at {path}")
    backend = Tokenizer.from_file(str(path))
    unknown = {k: v for k, v in special.items() if backend.token_to_id(v) is None}
    if unknown:
        raise ValueError(f"special tokens {unknown} are not in the vocabulary of {path}")
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, padding_side="right", **special)
    for word in ANSWER_WORDS:
        enc = tok(word, add_special_tokens=False)["input_ids"]
        if len(enc) != 1 or enc[0] == tok.unk_token_id:
            raise ValueError(f"the answer word {word!r} is not one known token of {path}: {enc}")
    return tok
