"""KSA settings: chunk size, summaries per chunk, per-layer windows, kernel choice.

Windows are in chunks, one per decoder layer. They may be written as an int (every layer), a list,
or a pattern string in the released configs' notation, e.g. "([128]*3+[16768])*9" (36 layers:
three KSA layers of 128 chunks, then one layer whose window covers the whole context). Patterns are
parsed by a tiny grammar (ints, lists, +, *, parentheses) — never `eval`.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass

IMPLS = ("reference", "flex", "triton")


class KSAConfigError(ValueError):
    """A KSA setting is invalid (bad window pattern, kernel name, sizes)."""


@dataclass
class KSAConfig:
    """What turns a causal LM into a KSA model.

    chunk: text tokens per chunk (C). summaries: summary tokens per chunk (S); compression k = C/S.
    windows: per-layer window in chunks (int, list or pattern string; None = the 3:1 hybrid of
    hybrid_windows). impl: attention kernel for
    full-sequence forwards. summary_qkv: separate q/k/v projections for summary slots.
    mix_coeff: with summary_qkv, a summary slot's q/k/v = m * summary projection + (1 - m) * shared
    projection, blended after the per-head q/k norms (the released format's `mix_coeff`; 1 = only the
    summary projections). summary_norm: a separate input layernorm for summary slots in every layer.
    summaries_visible: False removes old summaries from text queries (Sliding Chunk Attention).
    """

    chunk: int = 8
    summaries: int = 1
    windows: int | list[int] | str | None = None  # None: hybrid_windows(num_layers)
    impl: str = "reference"
    summary_qkv: bool = False
    summaries_visible: bool = True
    mix_coeff: float = 1.0
    summary_norm: bool = False

    def __post_init__(self) -> None:
        if self.chunk < 1 or not 1 <= self.summaries <= self.chunk:
            raise KSAConfigError(f"need chunk >= 1 and 1 <= summaries <= chunk, got {self.chunk}, {self.summaries}")
        if self.impl not in IMPLS:
            raise KSAConfigError(f"unknown KSA kernel {self.impl!r}; choose one of {', '.join(IMPLS)}")

    def layer_windows(self, num_layers: int) -> list[int]:
        """The window (chunks) of each of `num_layers` layers; a pattern must give exactly that many."""
        return resolve_windows(self.windows, num_layers)

    def to_dict(self) -> dict:
        return asdict(self)


FULL_WINDOW = 1 << 20  # chunks: longer than any context, so the layer is plain causal attention


def is_ksa(config) -> bool:
    """Whether `config` (a transformers model config) describes a KSA model: it carries the flat
    ksa_* settings that ksa.ksa_config_from writes (ksa_chunk first among them)."""
    return getattr(config, "ksa_chunk", None) is not None


def hybrid_windows(num_layers: int, window: int = 128, ratio: int = 3) -> list[int]:
    """The released 3:1 hybrid: `ratio` KSA layers of `window` chunks, then one full layer, repeated."""
    return [FULL_WINDOW if (i + 1) % (ratio + 1) == 0 else window for i in range(num_layers)]


def resolve_windows(windows: int | list[int] | str | None, num_layers: int) -> list[int]:
    """None -> hybrid; int -> [w]*num_layers; list or pattern -> that list (num_layers entries >= 1)."""
    if windows is None:
        return hybrid_windows(num_layers)
    if isinstance(windows, str):
        windows = parse_window_pattern(windows)
    if isinstance(windows, int):
        windows = [windows] * num_layers
    windows = [int(w) for w in windows]
    if len(windows) != num_layers:
        raise KSAConfigError(
            f"window pattern gives {len(windows)} layers but the model has {num_layers}; "
            f"adjust the pattern (e.g. '([128]*3+[100000])*{max(1, num_layers // 4)}')"
        )
    if min(windows) < 1:
        raise KSAConfigError(f"windows must be >= 1 chunk, got {min(windows)}")
    return windows


_TOKEN = re.compile(r"\s*(\d+|[\[\]\(\)\+\*,])")


def parse_window_pattern(text: str) -> int | list[int]:
    """Parse e.g. "([128]*3+[16768])*9", "[4, 4, 1000]" or "64".

    Grammar:  expr := term ('+' term)* ;  term := atom ('*' INT)* ;
              atom := INT | '[' [expr (',' expr)*] ']' | '(' expr ')'
    list + list concatenates, list * n repeats; an int inside [...] is one layer.
    """
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if not m:
            raise KSAConfigError(f"bad character in window pattern {text!r} at {pos}; use ints, [], (), +, *")
        tokens.append(m.group(1))
        pos = m.end()
        while pos < len(text) and text[pos].isspace():
            pos += 1
    parser = _Parser(tokens, text)
    value = parser.expr()
    if parser.i != len(tokens):
        raise KSAConfigError(f"unexpected {tokens[parser.i]!r} in window pattern {text!r}")
    return value


class _Parser:
    def __init__(self, tokens: list[str], text: str):
        self.tokens, self.text, self.i = tokens, text, 0

    def _peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def _take(self, expected: str | None = None) -> str:
        tok = self._peek()
        if tok is None or (expected is not None and tok != expected):
            raise KSAConfigError(f"window pattern {self.text!r}: expected {expected or 'more'}, got {tok!r}")
        self.i += 1
        return tok

    def expr(self):
        value = self.term()
        while self._peek() == "+":
            self._take("+")
            right = self.term()
            if not (isinstance(value, list) and isinstance(right, list)):
                raise KSAConfigError(f"window pattern {self.text!r}: '+' joins lists, e.g. [128]*3+[16768]")
            value = value + right
        return value

    def term(self):
        value = self.atom()
        while self._peek() == "*":
            self._take("*")
            n = self._take()
            if not n.isdigit():
                raise KSAConfigError(f"window pattern {self.text!r}: '*' needs a count, got {n!r}")
            if not isinstance(value, list):
                raise KSAConfigError(f"window pattern {self.text!r}: repeat a list, e.g. [128]*3")
            value = value * int(n)
        return value

    def atom(self):
        tok = self._take()
        if tok.isdigit():
            return int(tok)
        if tok == "(":
            value = self.expr()
            self._take(")")
            return value
        if tok == "[":
            items: list[int] = []
            if self._peek() != "]":
                while True:
                    v = self.expr()
                    items.extend(v if isinstance(v, list) else [v])
                    if self._peek() != ",":
                        break
                    self._take(",")
            self._take("]")
            return items
        raise KSAConfigError(f"window pattern {self.text!r}: unexpected {tok!r}")
