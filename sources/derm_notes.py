"""Free-text clinical notes written from a lesion's (simulated) clinical metadata.

:func:`write_note` turns the hidden history of a lesion (age, sex, body site, duration and the
yes/no findings of :data:`~clinaudit.sources.derm_population.SYMPTOMS`) into the kind of short
note a clinician types: clauses in varying order and wording (``"67yo M"``, ``"67-year-old
man"``; ``"bleeds on contact"``, ``"denies bleeding"``), abbreviations, some findings not
mentioned at all (each is left out with probability 0.2), and typing noise (a dropped, doubled or
swapped letter in about ``typo_rate`` of the words). Missing notes are decided by the population
(an empty string in the metadata CSV).

:func:`structured_note` writes a plain, deterministic note from structured PAD-UFES-20 columns
(``itch``, ``grew``, ...) for data sets that have no free text, so that they load the same way.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

__all__ = ["MENTION_PROB", "structured_note", "write_note"]

#: Probability that a finding the history holds is mentioned in the note.
MENTION_PROB = 0.8

_SITES: dict[str, tuple[str, ...]] = {
    "FACE": ("face", "cheek", "forehead", "temple"),
    "NOSE": ("nose", "nasal tip", "nasal ala"),
    "EAR": ("ear", "helix", "pinna"),
    "LIP": ("lip", "lower lip", "upper lip"),
    "SCALP": ("scalp", "vertex of scalp"),
    "NECK": ("neck", "post. neck"),
    "CHEST": ("chest", "ant. chest", "upper chest"),
    "BACK": ("back", "upper back", "lower back"),
    "ABDOMEN": ("abdomen", "abd", "flank"),
    "ARM": ("arm", "upper arm", "shoulder"),
    "FOREARM": ("forearm", "dorsal forearm"),
    "HAND": ("hand", "dorsum of hand", "back of hand"),
    "THIGH": ("thigh", "leg", "lower leg"),
    "FOOT": ("foot", "sole", "ankle"),
}
_SIDED = {"EAR", "ARM", "FOREARM", "HAND", "THIGH", "FOOT", "CHEST", "BACK"}

_PHRASES: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    # finding: (phrases when present, phrases when absent)
    "itch": (
        ("itchy", "pruritic", "itches", "c/o itching", "reports itch", "pt says it itches"),
        ("no itch", "not itchy", "denies pruritus", "non-pruritic"),
    ),
    "bleed": (
        ("bleeds", "bleeding on contact", "occasional bleeding", "bled recently", "+bleeding"),
        ("no bleeding", "denies bleeding", "never bled"),
    ),
    "grew": (
        ("growing", "enlarging", "increased in size", "getting bigger", "grew recently"),
        ("stable size", "not growing", "no growth", "unchanged in size"),
    ),
    "hurt": (
        ("painful", "tender", "sore", "hurts", "c/o pain"),
        ("painless", "non-tender", "no pain", "denies pain"),
    ),
    "changed": (
        ("changed colour", "color change noted", "looks different per pt", "changing"),
        ("no change in colour", "no color change", "appearance unchanged"),
    ),
    "elevation": (
        ("raised", "elevated", "papular", "palpable"),
        ("flat", "macular", "not raised", "non-palpable"),
    ),
    "skin_cancer_history": (
        ("hx skin ca", "prior skin cancer", "h/o skin cancer excision", "PMHx: skin cancer"),
        ("no hx skin ca", "no prior skin cancer", "no PMHx of skin cancer"),
    ),
}


def _choice(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(len(options)))]


def _demographics(rng: np.random.Generator, age: int, male: bool) -> str:
    letter, word, person = ("M", "male", "man") if male else ("F", "female", "woman")
    forms = (
        f"{age}yo {letter}",
        f"{age} y/o {word}",
        f"{word.capitalize()}, {age}",
        f"{age}-year-old {person}",
        f"pt {age}{letter}",
    )
    return _choice(rng, forms)


def _duration(rng: np.random.Generator, months: float) -> str:
    if months < 1.0:
        weeks = max(1, round(months * 4.35))
        return _choice(rng, (f"x {weeks} wks", f"for {weeks} weeks", f"{weeks}w duration"))
    if months < 24.0:
        m = max(1, round(months))
        return _choice(rng, (f"x {m} mo", f"for {m} months", f"present {m}m", f"since {m} mths"))
    years = round(months / 12.0)
    forms = (f"x {years} yrs", f"for {years} years", f"present {years}y")
    if years >= 3:
        forms += ("for several years", "longstanding")
    return _choice(rng, forms)


def _site(rng: np.random.Generator, region: str) -> str:
    name = _choice(rng, _SITES.get(region, (region.lower(),)))
    if region in _SIDED and rng.random() < 0.5:
        name = _choice(rng, ("L ", "R ", "left ", "right ")) + name
    return _choice(rng, (f"lesion on {name}", f"{name} lesion", f"located {name}", f"site: {name}"))


def _typo(rng: np.random.Generator, word: str) -> str:
    if len(word) < 4:
        return word
    i = int(rng.integers(1, len(word) - 1))
    kind = int(rng.integers(3))
    if kind == 0:
        return word[:i] + word[i + 1 :]
    if kind == 1:
        return word[:i] + word[i] + word[i:]
    return word[: i - 1] + word[i] + word[i - 1] + word[i + 1 :]


def write_note(
    history: Mapping[str, object], rng: np.random.Generator, *, typo_rate: float = 0.02
) -> str:
    """A free-text note from one lesion's clinical history.

    Parameters
    ----------
    history : mapping
        ``age`` (years), ``sex`` (``"MALE"``/``"FEMALE"``), ``region`` (PAD-UFES-20 body site),
        ``duration_months`` and a bool per finding (``itch``, ``grew``, ``hurt``, ``changed``,
        ``bleed``, ``elevation``, ``skin_cancer_history``).
    rng : numpy.random.Generator
        Source of randomness (the wording, the findings left out, the typos).
    typo_rate : float
        Share of words (of 4+ letters) with one typing error.

    Returns
    -------
    str
        One line of text (no newline); never empty.

    Examples
    --------
    >>> h = {"age": 67, "sex": "MALE", "region": "NOSE", "duration_months": 5.0, "itch": False,
    ...      "grew": True, "hurt": False, "changed": False, "bleed": True, "elevation": True,
    ...      "skin_cancer_history": False}
    >>> len(write_note(h, np.random.default_rng(0))) > 10
    True
    """
    if not 0.0 <= typo_rate <= 1.0:
        raise ValueError(f"typo_rate={typo_rate}; expected a share in [0, 1]")
    head = []
    if rng.random() < 0.9:
        head.append(_demographics(rng, int(history["age"]), history["sex"] == "MALE"))  # type: ignore[call-overload]
    site = _site(rng, str(history["region"]))
    if rng.random() < MENTION_PROB:
        site += " " + _duration(rng, float(history["duration_months"]))  # type: ignore[arg-type]
    head.append(site)
    findings = []
    for name, (yes, no) in _PHRASES.items():
        if rng.random() < MENTION_PROB:
            findings.append(_choice(rng, yes if history[name] else no))
    order = rng.permutation(len(findings))
    findings = [findings[i] for i in order]
    sep = _choice(rng, (", ", ". ", "; "))
    text = ", ".join(head) + (sep + sep.join(findings) if findings else "")
    if rng.random() < 0.5:
        text += "."
    words = text.split(" ")
    noisy = [_typo(rng, w) if rng.random() < typo_rate else w for w in words]
    text = " ".join(noisy)
    return text.lower() if rng.random() < 0.3 else text


_STRUCTURED: dict[str, str] = {
    "itch": "itch",
    "grew": "grew",
    "hurt": "hurt",
    "changed": "changed",
    "bleed": "bleeding",
    "elevation": "elevated",
    "skin_cancer_history": "history of skin cancer",
}


def structured_note(fields: Mapping[str, str]) -> str:
    """A plain note from structured PAD-UFES-20 columns (for data sets without free text).

    Each present yes/no column becomes ``"<finding>: yes"`` / ``"<finding>: no"`` (PAD-UFES
    writes ``True``/``False``; blank or ``UNK`` is left out); ``region`` becomes ``"site:
    <region>"``. Age and sex are not repeated (they are columns of their own).

    Parameters
    ----------
    fields : mapping of str to str
        The row's raw values by column name.

    Returns
    -------
    str
        ``""`` when no column holds a usable value.

    Examples
    --------
    >>> structured_note({"region": "NOSE", "itch": "False", "bleed": "True", "hurt": "UNK"})
    'site: nose; itch: no; bleeding: yes'
    """
    parts = []
    region = str(fields.get("region", "")).strip()
    if region and region.upper() != "UNK":
        parts.append(f"site: {region.lower()}")
    for column, words in _STRUCTURED.items():
        value = str(fields.get(column, "")).strip().lower()
        if value in ("true", "yes", "1"):
            parts.append(f"{words}: yes")
        elif value in ("false", "no", "0"):
            parts.append(f"{words}: no")
    return "; ".join(parts)
