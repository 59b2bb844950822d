"""Token counting for length targets, and parsing of lengths such as '8k' or '32768'.

A counter maps a list of texts to their token counts. It is built from one of:
- `None`: the approximate counter `approx_tokens` (no tokenizer needed);
- a Hugging Face tokenizer (anything with `__call__` returning `input_ids` and an `encode` method):
  exact counts without special tokens;
- a callable `text -> int`;
- a path or name string: loaded with `transformers.AutoTokenizer.from_pretrained` (local files only
  when the hub is unreachable).

Lengths are counted on the user message text (no chat template), which is what a length filter on
prompt text sees; a chat template adds a constant handful of tokens.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any

Counter = Callable[[Sequence[str]], list[int]]

# Runs of up to 4 letters, single digits and single other non-space characters each count as one
# token: a rough model of byte-level BPE vocabularies that split numbers into digits (Qwen2/Qwen3).
# It has not been calibrated against a real vocabulary here; it is self-consistent (the generators hit
# their targets under it), and a tokenizer should be passed whenever exact lengths matter.
_APPROX = re.compile(r"[A-Za-z]{1,4}|\d|[^\sA-Za-z\d]")


class LengthError(ValueError):
    """A length string that cannot be parsed, or a tokenizer that cannot be used."""


def approx_tokens(text: str) -> int:
    """Approximate token count: ceil(len(word)/4) per letter run + 1 per digit + 1 per symbol."""
    return len(_APPROX.findall(text))


def parse_length(value: str | int) -> int:
    """'8k' -> 8192, '128K' -> 131072, '32768' -> 32768, '1.5k' -> 1536 (k = 1024 tokens)."""
    if isinstance(value, int):
        n = value
    else:
        s = str(value).strip().lower().replace("_", "")
        try:
            n = int(float(s[:-1]) * 1024) if s.endswith("k") else int(s)
        except ValueError:
            raise LengthError(f"cannot parse length {value!r}: use a token count like 8192 or 8k") from None
    if n <= 0:
        raise LengthError(f"length must be positive, got {value!r}")
    return n


def load_tokenizer(path: str) -> Any:
    """Load a Hugging Face tokenizer from a local folder (or a cached hub name)."""
    try:
        from transformers import AutoTokenizer

        return AutoTokenizer.from_pretrained(path)
    except Exception as e:  # any loading failure is a path problem the user can fix
        raise LengthError(f"cannot load tokenizer {path!r} ({type(e).__name__}): pass a local tokenizer folder") from None


def make_counter(tokenizer: Any = None) -> Counter:
    """A batch token counter for `tokenizer` (see module docstring for what is accepted)."""
    if tokenizer is None:
        return lambda texts: [approx_tokens(t) for t in texts]
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    if hasattr(tokenizer, "encode") and callable(tokenizer):
        tok = tokenizer

        def count(texts: Sequence[str]) -> list[int]:
            if not texts:
                return []
            ids = tok(list(texts), add_special_tokens=False)["input_ids"]
            return [len(x) for x in ids]

        return count
    if callable(tokenizer):
        fn = tokenizer
        return lambda texts: [int(fn(t)) for t in texts]
    raise LengthError(f"unsupported tokenizer {type(tokenizer).__name__}: pass a HF tokenizer, a path or text->int")
