"""Comprehension (multiple-choice Accuracy): combine facts spread over the document.

Document: parcel records. With `hops=2` one line says what a parcel contained and another, far
away, where it was delivered; the question asks where the parcel with a given content went, with
four options that all occur in the document. Gold: the option letter; the reward reads
"The correct answer is (X)" after `</think>`.
Knobs: `hops` (1 or 2), `distractors` — share of filler lines that are other parcels' records.
"""

from __future__ import annotations

import random

from tasks import textgen as tg
from tasks.base import THINK, Problem, Task, TaskError

GOODS = "tea lamps rope salt silk maps clocks ink glass tools wool honey".split()
LETTERS = "ABCD"


class Comprehension(Task):
    name = "comprehension"
    capability = "comprehension"
    data_source = "selection"
    reward_mode = "selection"
    instruction = THINK + ' After it, write "The correct answer is (X)", where X is the letter of the correct option.'
    knobs = {"hops": 2, "distractors": 0.8}

    def build(self, rng: random.Random, split: str, hops: int = 2, distractors: float = 0.8) -> Problem:
        if hops not in (1, 2):
            raise TaskError(f"comprehension: hops must be 1 or 2, got {hops}")
        brand = tg.name(rng, split)
        item = f"{brand} {rng.choice(GOODS)}"
        cities = tg.unique(lambda seen: tg.name(rng, split, exclude=seen | {brand}), 4)
        parcel = tg.code(rng, "PX")
        used_codes = {parcel}
        answer_city = cities[0]
        options = cities[:]
        rng.shuffle(options)
        letter = LETTERS[options.index(answer_city)]
        if hops == 2:
            essentials = [f"Parcel {parcel} contained {item}.", f"Parcel {parcel} was delivered to the depot in {answer_city}."]
        else:
            essentials = [f"The parcel with {item} was delivered to the depot in {answer_city}."]

        def filler(r: random.Random) -> str:
            if r.random() >= distractors:
                return tg.noise(r)
            code = tg.code(r, "PX")
            while code in used_codes:
                code = tg.code(r, "PX")
            used_codes.add(code)
            other_item = f"{tg.name(r, split, exclude={brand})} {r.choice(GOODS)}"
            city = r.choice(cities[1:]) if r.random() < 0.5 else tg.name(r, split, exclude=set(cities))
            if hops == 1:
                return f"The parcel with {other_item} was delivered to the depot in {city}."
            if r.random() < 0.5:
                return f"Parcel {code} contained {other_item}."
            return f"Parcel {code} was delivered to the depot in {city}."

        opts = "\n".join(f"({L}) {c}" for L, c in zip(LETTERS, options, strict=True))
        return Problem(
            question=f"To the depot of which city was the parcel with {item} delivered?\n{opts}",
            essentials=essentials,
            filler=filler,
            doc_ids=[letter],
            golden_label=letter,
            context="Below is a courier company's log of parcels, their contents and their deliveries.",
        )


TASK = Comprehension
