"""Structured extraction over several tables (IoU): join tables and return the matching rows.

Document: a `departments` table, a long `employees` table and (with `tables=3`) a `projects`
table. Question: the name and salary (or project) of every employee of one department, which needs
a join on dept_id (and emp_id). Gold: `{"data": [[name, value], ...]}`; the reward parses the JSON
inside `<answer></answer>` and scores the multiset IoU of rows.
Knobs: `tables` (2 or 3), `needles` — employees in the asked department, `departments`.
"""

from __future__ import annotations

import json
import random

from tasks import textgen as tg
from tasks.base import THINK, Problem, Task, TaskError


def _table(title: str, header: list[str], rows: list[list[object]]) -> str:
    lines = [f"Table {title}:", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


class MultiTable(Task):
    name = "multi_table"
    capability = "structured extraction"
    data_source = "multitableqa_pretraining"
    reward_mode = "multitableqa_pretraining"
    instruction = (
        THINK + ' After it, give the result rows as JSON inside answer tags, exactly like '
        '<answer>{"data": [["first value", 123], ["second value", 456]]}</answer>, one inner list per row, '
        "columns in the order asked. Do not write <answer> anywhere else."
    )
    knobs = {"tables": 2, "needles": 4, "departments": 6}

    def build(self, rng: random.Random, split: str, tables: int = 2, needles: int = 4, departments: int = 6) -> Problem:
        if tables not in (2, 3):
            raise TaskError(f"multi_table: tables must be 2 or 3, got {tables}")
        if departments < 2 or needles < 1:
            raise TaskError("multi_table: needs departments >= 2 and needles >= 1")
        dept_names = tg.unique(lambda seen: tg.name(rng, split, exclude=seen), departments)
        dept_ids = [f"D{i + 1:02d}" for i in range(departments)]
        target = rng.randrange(departments)
        used_ids: set[str] = set()
        used_people: set[str] = set()

        def new_emp(r: random.Random) -> tuple[str, str]:
            eid = tg.code(r, "E", 5)
            while eid in used_ids:
                eid = tg.code(r, "E", 5)
            used_ids.add(eid)
            person = tg.person(r, split, exclude=used_people)
            used_people.add(person)
            return eid, person

        staff = [(*new_emp(rng), rng.randrange(30000, 150000, 500)) for _ in range(needles)]
        essentials = [f"| {e} | {p} | {dept_ids[target]} | {s} |" for e, p, s in staff]
        postscript = ""
        if tables == 2:
            gold = [[p, s] for _, p, s in staff]
            ask = "the name and the salary"
        else:
            projects = tg.unique(lambda seen: f"Project {tg.name(rng, split, exclude=seen)}", needles + 4)
            rows = [[e, projects[i]] for i, (e, _, _) in enumerate(staff)]
            # project rows of former employees: ids that no employee row will use
            rows += [[new_emp(rng)[0], projects[needles + k]] for k in range(4)]
            rng.shuffle(rows)
            postscript = "\n" + _table("projects", ["emp_id", "project"], rows) + "\n"
            gold = [[p, projects[i]] for i, (_, p, _) in enumerate(staff)]
            ask = "the name and the project"
        others = [i for i in range(departments) if i != target]

        def filler(r: random.Random) -> str:
            e, p = new_emp(r)
            return f"| {e} | {p} | {dept_ids[r.choice(others)]} | {r.randrange(30000, 150000, 500)} |"

        dept_table = _table("departments", ["dept_id", "dept_name"], [[i, n] for i, n in zip(dept_ids, dept_names, strict=True)])
        preamble = dept_table + "\n\nTable employees:\n| emp_id | name | dept_id | salary |\n|---|---|---|---|\n"
        return Problem(
            question=(
                f"List {ask} of every employee in the {dept_names[target]} department "
                f"(columns: {'name, salary' if tables == 2 else 'name, project'})."
            ),
            essentials=essentials,
            filler=filler,
            doc_ids=[],
            golden_label=json.dumps({"data": gold}, ensure_ascii=False),
            context=f"Below are {tables} tables of a company database.",
            preamble=preamble,
            postscript=postscript,
        )


TASK = MultiTable
