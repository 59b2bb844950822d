"""Procedural vocabulary for the offline task generators: names, codes, dates and noise prose.

Everything is drawn from a `random.Random`, so a seeded generator reproduces its text exactly.

Train / held-out separation: every generated name belongs to exactly one split, decided by the
parity of its CRC-32 (`split_of(name)`). A generator draws the entities its question is about from
its own split only, so no held-out question can name an entity a train question names, and the two
splits never produce the same problem.
"""

from __future__ import annotations

import datetime as dt
import random
import zlib

SPLITS = ("train", "heldout")

_SYLLABLES = (
    "ka lo mi ra ten vor shi dal mar quo bel zan tor fen gra lis nor pel sav thu wen yor cal dru eph "
    "gil hax ion jur kel mon rix sul tam ued vex wyn zor ami bro cet dun elm fio gor hul"
).split()

_NOUNS = (
    "report memo bridge harbor meadow engine ledger lantern orchard river valley tower archive "
    "garden market station canal workshop library pavilion quarry vineyard furnace"
).split()
_ADJS = "quiet northern plain busy narrow bright western damp distant regular broad steady".split()
_VERBS = "inspected repainted mentioned cleaned visited photographed measured described".split()
_DAYS = "Monday Tuesday Wednesday Thursday Friday Saturday Sunday".split()
_MONTHS = (
    "January February March April May June July August September October November December"
).split()


class SplitError(ValueError):
    """A split name other than 'train' or 'heldout'."""


def check_split(split: str) -> str:
    if split not in SPLITS:
        raise SplitError(f"unknown split {split!r}: use one of {', '.join(SPLITS)}")
    return split


def split_of(name: str) -> str:
    """The split a name belongs to: CRC-32 of the lower-cased name, even -> train, odd -> heldout."""
    return SPLITS[zlib.crc32(name.lower().encode()) & 1]


def word(rng: random.Random, syllables: tuple[int, int] = (2, 3)) -> str:
    """A capitalised pronounceable word of 2-3 syllables (about 27,900 distinct words)."""
    k = rng.randint(*syllables)
    return "".join(rng.choice(_SYLLABLES) for _ in range(k)).capitalize()


def name(rng: random.Random, split: str, exclude: set[str] | frozenset[str] = frozenset()) -> str:
    """A word that belongs to `split` and is not in `exclude` (rejection sampling, ~2 draws)."""
    while True:
        w = word(rng)
        if split_of(w) == split and w not in exclude:
            return w


def person(rng: random.Random, split: str, exclude: set[str] | frozenset[str] = frozenset()) -> str:
    """'First Last', both words from `split`'s pool (so no word of a name crosses splits)."""
    while True:
        p = f"{name(rng, split)} {name(rng, split)}"
        if p not in exclude:
            return p


def unique(draw, k: int, exclude: set[str] | None = None) -> list[str]:
    """k distinct values from `draw(exclude_set)`, none in `exclude`; the exclude set grows."""
    seen = exclude if exclude is not None else set()
    out = []
    for _ in range(k):
        v = draw(seen)
        seen.add(v)
        out.append(v)
    return out


def code(rng: random.Random, prefix: str, digits: int = 5) -> str:
    """An identifier like 'SH-40817' (first digit non-zero so the width is fixed)."""
    first = str(rng.randint(1, 9))
    rest = "".join(str(rng.randint(0, 9)) for _ in range(digits - 1))
    return f"{prefix}-{first}{rest}"


def alnum_code(rng: random.Random, length: int = 8) -> str:
    """An access-code style string of upper-case letters and digits, e.g. 'Q7XK2M9D'."""
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "".join(rng.choice(alphabet) for _ in range(length))


def date(rng: random.Random, start_year: int = 2031, years: int = 4) -> dt.date:
    return dt.date(start_year, 1, 1) + dt.timedelta(days=rng.randrange(365 * years))


def fmt_date(d: dt.date, style: int = 0) -> str:
    """Style 0: ISO '2031-04-17'; 1: '17 April 2031'; 2: 'April 17, 2031'."""
    if style == 1:
        return f"{d.day} {_MONTHS[d.month - 1]} {d.year}"
    if style == 2:
        return f"{_MONTHS[d.month - 1]} {d.day}, {d.year}"
    return d.isoformat()


def month(rng: random.Random) -> str:
    return rng.choice(_MONTHS)


MONTHS = tuple(_MONTHS)


def noise(rng: random.Random) -> str:
    """A neutral sentence that carries no fact any question asks about."""
    return (
        f"On {rng.choice(_DAYS)} the {rng.choice(_ADJS)} {rng.choice(_NOUNS)} was "
        f"{rng.choice(_VERBS)} by a {rng.choice(_ADJS)} visitor from the {rng.choice(_NOUNS)} district."
    )
