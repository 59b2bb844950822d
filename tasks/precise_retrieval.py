"""Precise retrieval (EM): find one exact value among many look-alike records.

Document: access-code records for many vaults (plus neutral prose). Question: the code of one
vault. Gold: the code; the reward compares the text after `</think>` with it exactly.
Knobs: `distractors` — share of filler lines that are same-template codes of other vaults;
`similar_names` — some distractor vaults differ from the asked one by a single letter.
"""

from __future__ import annotations

import random

from tasks import textgen as tg
from tasks.base import THINK, Problem, Task


class PreciseRetrieval(Task):
    name = "precise_retrieval"
    capability = "precise retrieval"
    data_source = "EM"
    reward_mode = "EM"
    instruction = THINK + " After it, write only the requested value exactly as it appears in the document, with no other words."
    knobs = {"distractors": 0.7, "similar_names": True}

    def build(self, rng: random.Random, split: str, distractors: float = 0.7, similar_names: bool = True) -> Problem:
        vault = tg.name(rng, split)
        answer = tg.alnum_code(rng, 8)

        def near_miss(r: random.Random) -> str:
            # one letter changed or appended: a name the reader can confuse with the asked one
            cut = r.randint(1, len(vault) - 1)
            other = vault[:cut] + r.choice("aeiouy") + vault[cut + 1 :]
            return other if other != vault else vault + "a"

        def filler(r: random.Random) -> str:
            if r.random() >= distractors:
                return tg.noise(r)
            other = near_miss(r) if similar_names and r.random() < 0.25 else tg.name(r, split, exclude={vault})
            code = tg.alnum_code(r, 8)
            return f"The access code for vault {other} is {code}." if code != answer else tg.noise(r)

        return Problem(
            question=f"What is the access code for vault {vault}?",
            essentials=[f"The access code for vault {vault} is {answer}."],
            filler=filler,
            doc_ids=[answer],
            golden_label=answer,
            context="Below is a security ledger listing the access codes of many vaults.",
        )


TASK = PreciseRetrieval
