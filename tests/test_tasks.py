"""The 9 built-in tasks: schema, rewards of oracle and wrong answers, gold answers re-derived from the
document text by independent parsers, determinism, train/held-out disjointness, plug-ins."""

from __future__ import annotations

import datetime as dt
import json
import re
from collections import Counter
from pathlib import Path

import pytest

import rewards
import tasks
from tasks import textgen as tg

NAMES = [
    "precise_retrieval",
    "comprehension",
    "exhaustive_retrieval",
    "numerical_reasoning",
    "multi_table",
    "structured_matching",
    "graded_ranking",
    "sequence_ordering",
    "summarization",
]
EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "my_task.py"


def rows_for(name: str, n: int = 3, length: int = 1024, **kw) -> list[dict]:
    return tasks.get_task(name).generate(n, length, seed=7, **kw)


def text_of(row: dict) -> str:
    return row["prompt"][0]["content"]


def wrong_response(row: dict) -> str:
    """A well-formed but wrong answer for the row's reward type."""
    gt = row["reward_model"]["ground_truth"]
    rtype = rewards.reward_type(row["data_source"], row["extra_info"])
    items = gt["doc_ids"]
    if rtype == "EM":
        return "<think>guess</think>\n" + gt["golden_label"] + "X"
    if rtype == "Accuracy":
        other = next(c for c in "ABCD" if c != gt["golden_label"])
        return f"<think>guess</think>\nThe correct answer is ({other})"
    if rtype == "Math":
        return f"<think>guess</think>\n\\boxed{{{int(gt['golden_label']) + 1}}}"
    if rtype == "IoU":
        data = json.loads(gt["golden_label"])["data"]
        return "<think>guess</think>\n<answer>" + json.dumps({"data": data[:-1] + [["nobody", 1]]}) + "</answer>"
    if rtype in ("NDCG", "Pairwise"):
        return "<think>guess</think>\n[Answer]\n" + "\n".join(reversed(items))
    if rtype in ("F1", "SubEM"):
        return "<think>guess</think>\n[Answer]\n" + "\n".join(items[:1] + ["bogus"])
    if rtype == "ROUGE-L":
        words = items[0].split()
        return "<think>guess</think>\n" + " ".join(words[: len(words) // 3])
    raise AssertionError(rtype)


# -- registry ----------------------------------------------------------------------------------
def test_registry_has_nine_capabilities_one_per_reward_type():
    builtin = [t for t in tasks.all_tasks() if t.source == "built-in"]
    assert [t.name for t in builtin] == NAMES
    assert sorted(t.reward_type for t in builtin) == sorted(rewards.REWARD_TYPES)
    assert len({t.capability for t in builtin}) == 9
    for t in builtin:
        assert rewards.reward_type(t.data_source, {"reward_mode": t.reward_mode}) == t.reward_type


def test_unknown_task_lists_known_names():
    with pytest.raises(tasks.UnknownTaskError, match="known tasks: .*precise_retrieval"):
        tasks.get_task("no_such_task")
    assert tasks.get_task("Precise-Retrieval").name == "precise_retrieval"


def test_unknown_knob_and_bad_split_are_clear_errors():
    t = tasks.get_task("graded_ranking")
    with pytest.raises(tasks.TaskError, match="no knob needlez .*items="):
        t.generate(1, 1024, needlez=3)
    with pytest.raises(ValueError, match="unknown split 'test'"):
        t.generate(1, 1024, split="test")


# -- schema and rewards ------------------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_rows_follow_the_golongrl_schema(name):
    t = tasks.get_task(name)
    for i, row in enumerate(rows_for(name, n=2)):
        assert set(row) == {"data_source", "prompt", "ability", "reward_model", "extra_info"}
        assert row["data_source"] == t.data_source and row["ability"] == t.capability
        assert row["prompt"][0]["role"] == "user" and len(row["prompt"]) == 1
        gt = row["reward_model"]["ground_truth"]
        assert row["reward_model"]["style"] == "rule"
        assert isinstance(gt["doc_ids"], list) and isinstance(gt["golden_label"], str) and gt["summary"] == "English"
        info = row["extra_info"]
        assert info["reward_mode"] == t.reward_mode and info["task"] == name
        assert (info["seed"], info["split"], info["index"], info["length"]) == (7, "train", i, 1024)
        assert info["question"] in text_of(row) and t.instruction in text_of(row)
        assert tasks.task_for_row(row) is t


@pytest.mark.parametrize("name", NAMES)
def test_oracle_scores_one_and_wrong_answers_score_lower(name):
    t = tasks.get_task(name)
    for row in rows_for(name, n=3):
        best = t.score(row, rewards.oracle_response(row))
        if t.reward_type == "ROUGE-L":
            assert best >= 0.99
        else:
            assert best == 1.0
        assert t.score(row, wrong_response(row)) < best - 0.05
        assert t.score(row, "no think block: " + rewards.oracle_response(row).split("</think>")[-1]) == 0.0


# -- the gold answer follows from the document (independent parsers) ---------------------------
def _solve_precise(text, q):
    vault = re.search(r"vault (\w+)\?", q).group(1)
    (code,) = re.findall(rf"The access code for vault {vault} is (\w+)\.", text)
    return [code], code


def _solve_comprehension(text, q):
    item = re.search(r"parcel with (.+?) delivered", q).group(1)
    parcels = re.findall(rf"Parcel (PX-\d+) contained {item}\.", text)
    if parcels:
        (p,) = parcels
        (city,) = re.findall(rf"Parcel {p} was delivered to the depot in (\w+)\.", text)
    else:
        (city,) = re.findall(rf"The parcel with {item} was delivered to the depot in (\w+)\.", text)
    letter = re.search(rf"\(([A-D])\) {city}\n", q + "\n").group(1)
    return [letter], letter


def _solve_exhaustive(text, q):
    dock, limit = re.search(r"leaving dock (\w+) may carry at most (\d+) kg", q).groups()
    hits = re.findall(rf"Shipment (SH-\d+) left dock {dock} carrying (\d+) kg\.", text)
    ids = [i for i, w in hits if int(w) > int(limit)]
    return sorted(ids), None


def _solve_numerical(text, q):
    client, cat = re.search(r"client (\w+) in the category (\w+)", q).groups()
    amounts = [int(a) for a in re.findall(rf"client {client}, category {cat}, amount (\d+) credits", text)]
    value = sum(amounts) if "total" in q else max(amounts) - min(amounts)
    return [str(value)], str(value)


def _md_rows(text, title):
    block = text.split(f"Table {title}:\n", 1)[1].split("\n\n")[0].split("</document>")[0]
    return [[c.strip() for c in line.strip("|").split("|")] for line in block.strip().splitlines()[2:]]


def _solve_multi_table(text, q):
    dept = re.search(r"in the (\w+) department", q).group(1)
    dept_id = {n: i for i, n in _md_rows(text, "departments")}[dept]
    staff = [r for r in _md_rows(text, "employees") if r[2] == dept_id]
    if "project" in q:
        proj = dict(_md_rows(text, "projects"))
        gold = [[p, proj[e]] for e, p, _, _ in staff]
    else:
        gold = [[p, int(s)] for _, p, _, s in staff]
    return [], sorted(map(str, gold))


def _solve_structured(text, q):
    tracked = re.search(r"these accounts: (.+)\?", q).group(1).split(", ")
    bal: dict[str, int] = {}
    for line in text.splitlines():
        if m := re.fullmatch(r"Account (\w+) was opened with a balance of (\d+) coins\.", line):
            bal[m[1]] = int(m[2])
        elif m := re.fullmatch(r"Deposit of (\d+) coins into account (\w+)\.", line):
            bal[m[2]] += int(m[1])
        elif m := re.fullmatch(r"Withdrawal of (\d+) coins from account (\w+)\.", line):
            bal[m[2]] -= int(m[1])
            assert bal[m[2]] >= 0
        elif m := re.fullmatch(r"Transfer of (\d+) coins from account (\w+) to account (\w+)\.", line):
            bal[m[2]] -= int(m[1])
            bal[m[3]] += int(m[1])
    gold = [f"{a}: {bal[a]}" for a in tracked]
    return gold, "\n".join(gold)


def _solve_ranking(text, q):
    region, month = re.search(r"stations of region (\w+) by the rain they recorded in (\w+),", q).groups()
    hits = re.findall(rf"Station (\w+) in region {region} recorded (\d+) mm of rain in {month}\.", text)
    ranked = [s for s, _ in sorted(hits, key=lambda h: -int(h[1]))]
    return ranked, "\n".join(ranked)


def _parse_date(s):
    for fmt in ("%Y-%m-%d", "%d %B %Y", "%B %d, %Y"):
        try:
            return dt.datetime.strptime(s, fmt)
        except ValueError:
            pass
    raise AssertionError(s)


def _solve_ordering(text, q):
    project = re.search(r"milestones of project (\w+) ", q).group(1)
    hits = re.findall(rf"^(.+?): project {project} reached milestone (M-\d+) ", text, re.M)
    ordered = [m for _, m in sorted(hits, key=lambda h: _parse_date(h[0]))]
    return ordered, "\n".join(ordered)


def _solve_summary(text, q):
    cluster = re.search(r"outages of cluster (\w+)\.", q).group(1)
    hits = re.findall(
        rf"\[([\d-]+)\] cluster {cluster}: the (\w+) service was down for (\d+) minutes; cause: (.+?); "
        r"ticket (INC-\d+) closed by (\w+ \w+)\.\n",
        text,
    )
    total = sum(int(h[2]) for h in hits)
    s = f"Cluster {cluster} had {len(hits)} outages, {total} minutes of downtime in total. " + " ".join(
        f"On {d}, the {sv} service was down for {m} minutes because of {c}; {who} closed ticket {t}."
        for d, sv, m, c, t, who in sorted(hits)
    )
    return [s], s


SOLVERS = {
    "precise_retrieval": _solve_precise,
    "comprehension": _solve_comprehension,
    "exhaustive_retrieval": _solve_exhaustive,
    "numerical_reasoning": _solve_numerical,
    "multi_table": _solve_multi_table,
    "structured_matching": _solve_structured,
    "graded_ranking": _solve_ranking,
    "sequence_ordering": _solve_ordering,
    "summarization": _solve_summary,
}
KNOB_VARIANTS = {
    "comprehension": [{"hops": 1}],
    "numerical_reasoning": [{"op": "range"}],
    "multi_table": [{"tables": 3}],
    "sequence_ordering": [{"mixed_dates": False}],
    "graded_ranking": [{"items": 10, "near_misses": 0.6}],
}


@pytest.mark.parametrize("name", NAMES)
def test_gold_answer_is_derivable_from_the_document(name):
    for knobs in [{}, *KNOB_VARIANTS.get(name, [])]:
        for row in rows_for(name, n=4, length=3000, **knobs):
            gt = row["reward_model"]["ground_truth"]
            doc_ids, label = SOLVERS[name](text_of(row), row["extra_info"]["question"])
            if name == "exhaustive_retrieval":
                assert doc_ids == sorted(gt["doc_ids"])
            elif name == "multi_table":
                assert label == sorted(map(str, json.loads(gt["golden_label"])["data"]))
            else:
                assert doc_ids == gt["doc_ids"]
                if label is not None:
                    assert label == gt["golden_label"]


# -- reproducibility and splits ----------------------------------------------------------------
@pytest.mark.parametrize("name", NAMES)
def test_same_seed_same_rows_other_seed_other_rows(name):
    a, b, c = rows_for(name, n=2), rows_for(name, n=2), tasks.get_task(name).generate(2, 1024, seed=8)
    assert a == b
    assert [text_of(r) for r in a] != [text_of(r) for r in c]
    # row i does not depend on how many rows are generated with it
    assert tasks.get_task(name).generate(1, 1024, seed=7, start=1)[0] == a[1]


@pytest.mark.parametrize("name", NAMES)
def test_train_and_heldout_problems_are_disjoint(name):
    train = rows_for(name, n=15, length=600)
    held = rows_for(name, n=15, length=600, split="heldout")
    tq = {r["extra_info"]["question"] for r in train}
    hq = {r["extra_info"]["question"] for r in held}
    assert not tq & hq
    # each held-out question names an entity of the held-out pool that no train prompt contains
    train_words = {w for r in train for w in re.findall(r"\b[A-Z][a-z]+\b", text_of(r))}
    for r in held:
        fresh = set(re.findall(r"\b[A-Z][a-z]+\b", r["extra_info"]["question"])) - train_words
        assert any(tg.split_of(w) == "heldout" for w in fresh), r["extra_info"]["question"]


def test_split_pools_partition_names():
    import random

    rng = random.Random(0)
    train = {tg.name(rng, "train") for _ in range(500)}
    held = {tg.name(rng, "heldout") for _ in range(500)}
    assert not train & held
    assert {tg.split_of(n) for n in train} == {"train"}


def test_knobs_change_difficulty():
    t = tasks.get_task("exhaustive_retrieval")
    assert len(t.generate(1, 2000, needles=9)[0]["reward_model"]["ground_truth"]["doc_ids"]) == 9
    t = tasks.get_task("multi_table")
    assert "Table projects:" in text_of(t.generate(1, 2000, tables=3)[0])
    counts = Counter(len(r["reward_model"]["ground_truth"]["doc_ids"]) for r in rows_for("graded_ranking", items=4))
    assert counts == {4: 3}


# -- rows from outside golong resolve too ------------------------------------------------------
def test_task_for_row_resolves_golongrl_rows_without_task_key():
    def row(ds, mode, ability="whatever"):
        return {"data_source": ds, "ability": ability, "extra_info": {"reward_mode": mode, "question": "q"},
                "prompt": [{"role": "user", "content": "x"}],
                "reward_model": {"ground_truth": {"doc_ids": ["a"], "golden_label": "a", "summary": "English"}}}

    assert tasks.task_for_row(row("EM", "EM", "precise retrieval")).name == "precise_retrieval"
    assert tasks.task_for_row(row("longbench_pro", "T2.2 Local Causal Chain Sorting", "sequence ordering")).name == (
        "sequence_ordering"
    )
    generic = tasks.task_for_row(row("longbench_pro", "T6.1 Large-Scale Document Clustering"))
    assert generic.reward_type == "SubEM" and generic.source == "generic"
    assert generic.score(row("longbench_pro", "T6.1 Large-Scale Document Clustering"), "<think></think>[Answer]\na") == 1.0
    with pytest.raises(tasks.TaskError, match="cannot generate"):
        generic.generate(1, 1024)
    with pytest.raises(rewards.UnknownRouteError):
        tasks.task_for_row(row("longbench_pro", "T99 Nothing"))


# -- plug-ins ----------------------------------------------------------------------------------
PLUGIN = '''
from tasks import Problem, Task
from tasks import textgen as tg


class ColourCode(Task):
    name = "colour_code"
    capability = "precise retrieval"
    reward_type = "EM"
    data_source = "EM"
    reward_mode = "EM"
    instruction = "End your reasoning with </think>, then write only the colour."
    knobs = {"colours": 3}

    def build(self, rng, split, colours=3):
        box = tg.name(rng, split)
        colour = rng.choice(["red", "green", "blue"][:colours])
        return Problem(
            question=f"What colour is box {box}?",
            essentials=[f"Box {box} is painted {colour}."],
            filler=lambda r: f"Box {tg.name(r, split, exclude={box})} is painted grey.",
            doc_ids=[colour], golden_label=colour,
        )
'''


def test_plugin_from_a_file_generates_and_scores(tmp_path):
    path = tmp_path / "colour.py"
    path.write_text(PLUGIN)
    task = tasks.load_task_spec(f"{path}:ColourCode")
    assert task.source.startswith("plug-in") and tasks.get_task("colour_code") is task
    rows = task.generate(3, 800, seed=1)
    assert abs(rows[0]["extra_info"]["prompt_tokens"] - 800) <= 80
    for row in rows:
        assert tasks.task_for_row(row) is task
        assert task.score(row, rewards.oracle_response(row)) == 1.0
        assert task.score(row, "<think></think>purple") == 0.0


def test_example_plugin_in_the_repository():
    task = tasks.load_task_spec(f"{EXAMPLE}:MeetingAttendance")
    rows = task.generate(2, 2048, seed=3, needles=6)
    assert len(rows[0]["reward_model"]["ground_truth"]["doc_ids"]) == 6
    for row in rows:
        assert task.score(row, rewards.oracle_response(row)) == 1.0


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nofile.py:X", "not an existing .py file"),
        ("just_a_name", "must look like path/to/file.py:ClassName"),
        ("{ex}:Missing", "defines no 'Missing'"),
    ],
)
def test_bad_plugin_specs(spec, message):
    with pytest.raises(tasks.TaskError, match=message):
        tasks.load_task_spec(spec.format(ex=EXAMPLE))


def test_a_task_reward_type_follows_from_its_route(tmp_path):
    plain = tmp_path / "plain.py"
    plain.write_text(PLUGIN.replace('    reward_type = "EM"\n', ""))
    assert "reward_type" not in plain.read_text()
    task = tasks.load_task_spec(f"{plain}:ColourCode")
    assert task.reward_type == "EM" == rewards.row_reward_type(task.generate(1, 200)[0])
    for t in tasks.all_tasks():  # the built-ins declare only the route
        assert "reward_type" not in type(t).__dict__ and t.reward_type in rewards.REWARD_TYPES


def test_plugin_with_wrong_route_or_builtin_name_is_rejected(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text(PLUGIN.replace('reward_type = "EM"', 'reward_type = "F1"'))
    with pytest.raises(tasks.TaskError, match="route to EM, not to its reward_type F1"):
        tasks.load_task_spec(f"{bad}:ColourCode")
    clash = tmp_path / "clash.py"
    clash.write_text(PLUGIN.replace('"colour_code"', '"comprehension"'))
    with pytest.raises(tasks.TaskError, match="clashes with the built-in"):
        tasks.load_task_spec(f"{clash}:ColourCode")
