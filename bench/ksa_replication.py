"""Small-scale replication of KSA's central claim: full attention vs 3:1 hybrid KSA vs the same hybrid
without summaries (Sliding Chunk Attention), trained from scratch on a synthetic long-range mix.

Tasks (token ids only, vocabulary 512; see `make_batch`). A sequence is `<bos> body queries`; the body
is noise with items written into it at random places, the queries come at the end:
  needle one needle token (a class of 32 ids of its own); query `<q_ndl>` -> the needle      (1 token)
  kv     pairs `<sep> k v` (32 of them, distinct keys); query `<q_kv> k` -> `v`              (1 token)
  hop2   chains `<sep> a b` and `<sep> b w` (8 of them); query `<q_hop> a` -> `b w`           (2 tokens:
         the intermediate key, then its value — two dependent lookups)
  count  4 marker types, each written 1..8 times; query `<q_cnt> m` -> `<cN>` (N = how many)  (1 token)
Every answer is followed by `<eos>`. Item counts do not grow with length (only the distances do).
A training sequence carries 1 needle + 8 kv + 4 hop2 + 4 count queries; the loss is the cross-entropy
on the answer tokens and their `<eos>` only (noise is unpredictable; the queries are the whole signal).
Held-out accuracy: teacher-forced, a query is right when the argmax at every answer position equals the
target (the same as greedy decoding of the answer); eval draws come from a different seed, at full
difficulty (32 kv pairs).
Why a needle task and a pair curriculum: measured on CPU (4 layers, hidden 128, 256-token rows), the
single needle is learned within ~200 steps, while keyed retrieval among 4-32 pairs sat on its
chance-level plateau for 150-400 steps; with 2 pairs it climbed slowly (31% after 300 steps). Keyed
lookup needs a two-layer (induction-style) circuit, which forms faster when few pairs compete, so
the curriculum raises the number of pairs (2 -> 32) along with the length (128 -> 8K).

Models (same base shape, same initial weights, same data order and steps): a Qwen3-style decoder
(default 8 layers, hidden 256, 4 query / 2 kv heads of 64, MLP 768) as
  full  plain causal attention (SDPA / flash on GPU);
  ksa   3:1 hybrid KSA: chunk 8, one summary per chunk, windows ([16]*3+[full])*2 (16 chunks = 128
        tokens in the KSA layers), Triton kernel on GPU;
  sca   the same hybrid with summaries_visible=False (sliding chunk only).
The hybrids are ksa.convert_model of the full model's initial weights. Training: AdamW (0.9, 0.95),
wd 0.01, clip 1.0, fp32 weights under bf16 autocast (GPU), warm-up then cosine; a length curriculum
at a constant token budget per step (short sequences first: more queries per step while the
retrieval circuit forms). The three models train in lockstep: step k draws one batch and every model
takes its step on it, so a time budget (`--budget-s`, default) stops them all at the same step; the
curriculum stage and learning rate follow the fraction of the budget spent (or of `--steps`).
Evaluated at the curriculum's lengths and beyond (generalisation to 16K / 32K).

Run (H200):  PYTHONPATH=. python bench/ksa_replication.py --out $OUT/rep --save-models /tmp/ksa_models
             (~5 min: --budget-s 200 s of training + warm-up/compile + evaluation; estimated, not measured)
CPU check:   PYTHONPATH=. python bench/ksa_replication.py --smoke --out /tmp/rep
Writes results.json and ksa_replication.png (when matplotlib imports) into --out.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import sys
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

# --- the vocabulary ------------------------------------------------------------------------------
PAD, EOS, BOS, SEP, Q_KV, Q_HOP, Q_CNT, Q_NDL = 0, 1, 2, 3, 4, 5, 6, 7
MARK0, N_MARKS = 8, 4  # marker types counted by the count task
COUNT0 = 16  # <c0> .. <c15>
KEY0, N_KEYS = 32, 256
VAL0, N_VALS = 288, 128
NEEDLE0, N_NEEDLES = 416, 32  # needle values: a class of their own (one needle per sequence)
NOISE0, N_NOISE = 448, 64
VOCAB = 512
TASKS = ("needle", "kv", "hop2", "count")
ANSWER_LEN = {"needle": 1, "kv": 1, "hop2": 2, "count": 1}
QUERY_TOKENS = {"needle": 3, "kv": 4, "hop2": 5, "count": 4}  # query marker (+ key) + answer + <eos>
TRAIN_QUERIES = {"needle": 1, "kv": 8, "hop2": 4, "count": 4}
MAX_PAIRS = 32  # kv pairs per sequence at full difficulty (the curriculum starts with fewer)
EVAL_SEED = 1_000_003  # eval draws: a stream no training step uses


def token_names() -> list[str]:
    """The name of every id (the tokenizer's vocabulary; decoded responses read like `v17 <eos>`)."""
    names = [f"<r{i}>" for i in range(VOCAB)]
    for i, n in enumerate(("<pad>", "<eos>", "<bos>", "<sep>", "<q_kv>", "<q_hop>", "<q_cnt>", "<q_ndl>")):
        names[i] = n
    names[MARK0 : MARK0 + N_MARKS] = [f"<m{i}>" for i in range(N_MARKS)]
    names[COUNT0 : COUNT0 + 16] = [f"<c{i}>" for i in range(16)]
    names[KEY0 : KEY0 + N_KEYS] = [f"k{i}" for i in range(N_KEYS)]
    names[VAL0 : VAL0 + N_VALS] = [f"v{i}" for i in range(N_VALS)]
    names[NEEDLE0 : NEEDLE0 + N_NEEDLES] = [f"x{i}" for i in range(N_NEEDLES)]
    names[NOISE0 : NOISE0 + N_NOISE] = [f"n{i}" for i in range(N_NOISE)]
    return names


def build_tokenizer():
    """A word-level tokenizer whose ids are exactly the synthetic ids (eos, pad, bos set)."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    vocab = {name: i for i, name in enumerate(token_names())}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<pad>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<pad>", bos_token="<bos>")


# --- the tasks -----------------------------------------------------------------------------------
@dataclass
class Batch:
    """ids [B, T]; answers: per query (task, answer positions in ids); eos: positions of answer-ending
    <eos>; start: where the query region (the same length in every row) begins."""

    ids: np.ndarray
    answers: list[tuple[str, list[int]]]
    eos: list[int]
    start: int

    @property
    def query_tokens(self) -> int:
        return self.ids.shape[1] - self.start


def _first_n(rng: np.random.Generator, rows: int, pool: int, n: int) -> np.ndarray:
    """[rows, n] distinct draws from range(pool), per row (argsort of uniform noise)."""
    return np.argsort(rng.random((rows, pool)), axis=1)[:, :n]


def item_counts(body_len: int, queries: dict[str, int], max_pairs: int = MAX_PAIRS) -> tuple[int, int, int]:
    """(kv pairs, hop2 chains, max count per marker) that fit a body of `body_len` tokens.

    (32, 8, 8) at full difficulty once there is room (2K+ tokens); shorter bodies or a smaller
    `max_pairs` get fewer items, never fewer than the queries need. Items take 3-token slots (the
    needle one); they fill at most half of the slots.
    """
    slots = body_len // 3 - 1  # one slot is the needle's
    pairs = min(max_pairs, max(queries.get("kv", 0), slots // 8))
    chains = min(8, max(queries.get("hop2", 0), min(slots // 32, max_pairs // 4)))
    cmax = min(8, max(1, (slots // 2 - pairs - 2 * chains) // N_MARKS))
    if pairs + 2 * chains + N_MARKS * cmax > slots:
        raise ValueError(f"length too short for {queries} (body {body_len} tokens); use a longer length")
    return pairs, chains, cmax


def make_batch(rng: np.random.Generator, rows: int, length: int, queries: dict[str, int] | None = None,
               max_pairs: int = MAX_PAIRS) -> Batch:
    """`rows` sequences of exactly `length` tokens (format: module docstring); query blocks in the
    order of TASKS. `max_pairs` < 32 is an easier draw (fewer kv pairs; at most that many kv queries).
    Answers are always written; `prompt_and_answer` cuts them off for prompts."""
    queries = dict(TRAIN_QUERIES if queries is None else queries)
    queries["kv"] = min(queries.get("kv", 0), max_pairs)
    qtok = sum(QUERY_TOKENS[t] * queries.get(t, 0) for t in TASKS)
    body_len = length - 1 - qtok
    pairs, chains, cmax = item_counts(body_len, queries, max_pairs)
    r = np.arange(rows)[:, None]
    rows_idx = np.arange(rows)
    body = rng.integers(NOISE0, NOISE0 + N_NOISE, size=(rows, body_len))
    n_items = 1 + pairs + 2 * chains + N_MARKS * cmax
    starts = _first_n(rng, rows, body_len // 3, n_items) * 3  # [rows, n_items] slot starts
    needle = rng.integers(NEEDLE0, NEEDLE0 + N_NEEDLES, size=rows)
    body[rows_idx, starts[:, 0]] = needle
    keys = _first_n(rng, rows, N_KEYS, pairs + 2 * chains) + KEY0
    kv_k, hop_a, hop_b = keys[:, :pairs], keys[:, pairs : pairs + chains], keys[:, pairs + chains :]
    kv_v = rng.integers(VAL0, VAL0 + N_VALS, size=(rows, pairs))
    hop_w = rng.integers(VAL0, VAL0 + N_VALS, size=(rows, chains))
    firsts = np.concatenate([kv_k, hop_a, hop_b], 1)
    seconds = np.concatenate([kv_v, hop_b, hop_w], 1)
    pos = starts[:, 1 : 1 + pairs + 2 * chains]
    body[r, pos], body[r, pos + 1], body[r, pos + 2] = SEP, firsts, seconds
    counts = rng.integers(1, cmax + 1, size=(rows, N_MARKS))
    mpos = starts[:, 1 + pairs + 2 * chains :].reshape(rows, N_MARKS, cmax)
    active = np.arange(cmax)[None, None, :] < counts[:, :, None]
    marks = np.broadcast_to(MARK0 + np.arange(N_MARKS)[None, :, None], mpos.shape)
    rr = np.broadcast_to(r[:, :, None], mpos.shape)
    body[rr[active], mpos[active]] = marks[active]
    cols: list[np.ndarray] = [np.full((rows, 1), BOS), body]
    answers: list[tuple[str, list[int]]] = []
    eos: list[int] = []
    start = at = 1 + body_len

    def emit(task: str, *columns: np.ndarray) -> None:  # one query: marker, (key,) answer..., <eos>
        nonlocal at
        block = np.stack([np.broadcast_to(c, (rows,)) for c in columns] + [np.full(rows, EOS)], 1)
        cols.append(block)
        first = at + block.shape[1] - 1 - ANSWER_LEN[task]
        answers.append((task, list(range(first, first + ANSWER_LEN[task]))))
        eos.append(at + block.shape[1] - 1)
        at += block.shape[1]

    for _ in range(queries.get("needle", 0)):
        emit("needle", np.full(rows, Q_NDL), needle)
    for j in _first_n(rng, rows, pairs, queries["kv"]).T:
        emit("kv", np.full(rows, Q_KV), kv_k[rows_idx, j], kv_v[rows_idx, j])
    for j in _first_n(rng, rows, chains, queries.get("hop2", 0)).T:
        emit("hop2", np.full(rows, Q_HOP), hop_a[rows_idx, j], hop_b[rows_idx, j], hop_w[rows_idx, j])
    for j in _first_n(rng, rows, N_MARKS, queries.get("count", 0)).T:
        emit("count", np.full(rows, Q_CNT), MARK0 + j, COUNT0 + counts[rows_idx, j])
    ids = np.concatenate(cols, 1)
    assert ids.shape == (rows, length), (ids.shape, length)
    return Batch(ids.astype(np.int64), answers, eos, start)


def prompt_and_answer(rng: np.random.Generator, rows: int, length: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Single-query prompts for generation: (prompts [rows, length - answer - 1], answers [rows, A])."""
    b = make_batch(rng, rows, length, {task: 1})
    (_, where), = b.answers
    return b.ids[:, : where[0]], b.ids[:, where]


# --- models --------------------------------------------------------------------------------------
SHAPES = {
    "default": dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=64, intermediate_size=768),
    "smoke": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=32, intermediate_size=128),
}
VARIANTS = ("full", "ksa", "sca")


def base_config(shape: str):
    from transformers import Qwen3Config

    return Qwen3Config(**SHAPES[shape], vocab_size=VOCAB, max_position_embeddings=65536, rope_theta=1e6,
                       tie_word_embeddings=True, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=BOS)


def hybrid_windows(layers: int, window: int) -> list[int]:
    """3:1 hybrid: three KSA layers of `window` chunks, then one full layer (ksa.FULL_WINDOW), repeated."""
    from ksa.config import hybrid_windows as hw

    return hw(layers, window=window, ratio=3)


def build_models(shape: str, window: int, impl: str, seed: int) -> dict:
    """{variant: model} with identical initial weights (fp32, CPU)."""
    from transformers import AutoModelForCausalLM

    import ksa

    torch.manual_seed(seed)
    full = AutoModelForCausalLM.from_config(base_config(shape), attn_implementation="sdpa", dtype=torch.float32)
    windows = hybrid_windows(full.config.num_hidden_layers, window)
    out = {"full": full}
    for name, visible in (("ksa", True), ("sca", False)):
        settings = ksa.KSAConfig(chunk=8, summaries=1, windows=windows, impl=impl, summaries_visible=visible)
        out[name] = ksa.convert_model(copy.deepcopy(full), settings)
    return out


# --- training and evaluation ---------------------------------------------------------------------
@dataclass
class Plan:
    """What to train and evaluate. Progress p in [0, 1) is step / steps, or elapsed / budget_s when a
    time budget is set; the curriculum stage and the learning rate are functions of p."""

    shape: str
    stages: list[tuple[int, int, float]]  # (length, max kv pairs, fraction of progress)
    steps: int | None  # None: train until budget_s is spent
    tokens_per_step: int
    eval_lengths: list[int]
    eval_rows: int
    eval_tokens: int  # tokens per eval forward
    budget_s: float | None = None
    lr: float = 2e-3
    warmup: int = 30  # steps
    window: int = 16
    seed: int = 0

    def stage_at(self, p: float) -> tuple[int, int]:
        """(length, max kv pairs) of the curriculum stage at progress p."""
        total, acc = sum(f for *_, f in self.stages), 0.0
        for length, pairs, f in self.stages:
            acc += f / total
            if p < acc:
                return length, pairs
        return self.stages[-1][0], self.stages[-1][1]

    def lr_at(self, step: int, p: float) -> float:
        """Linear warm-up over `warmup` steps times a cosine from lr to lr/10 over progress p."""
        return self.lr * min(1.0, (step + 1) / self.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(p, 1.0))))


def plan_for(args) -> Plan:
    if args.smoke:
        return Plan("smoke", [(256, 4, 0.5), (256, MAX_PAIRS, 0.5)], args.steps or 40, 2048, [256, 512], 8, 4096,
                    lr=3e-3, warmup=5, window=2, seed=args.seed)
    steps = args.steps or (None if args.budget_s else 600)
    stages = [(128, 2, 0.10), (256, 4, 0.10), (512, 8, 0.15), (1024, 16, 0.15), (2048, MAX_PAIRS, 0.15),
              (4096, MAX_PAIRS, 0.15), (8192, MAX_PAIRS, 0.20)]
    return Plan("default", stages,
                steps, args.tokens_per_step, [1024, 2048, 4096, 8192, 16384, 32768], args.eval_rows, 131072,
                budget_s=None if args.steps else args.budget_s, lr=args.lr, seed=args.seed)


def query_logits(model, ids: torch.Tensor, qtok: int, autocast: bool) -> torch.Tensor:
    """Logits [B, qtok, V] predicting the last qtok tokens (positions T-qtok-1 .. T-2)."""
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(input_ids=ids, logits_to_keep=qtok + 1, use_cache=False)
    return out.logits[:, :-1].float()


def supervised(batch: Batch) -> list[int]:
    """Positions in ids the loss covers: every answer token and every answer-ending <eos>."""
    return sorted([p for _, ps in batch.answers for p in ps] + batch.eos)


def batch_loss(model, batch: Batch, device: str) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens and their <eos>."""
    ids = torch.from_numpy(batch.ids).to(device, non_blocking=True)
    length, qtok = batch.ids.shape[1], batch.query_tokens
    where = supervised(batch)
    rel = torch.tensor([p - (length - qtok) for p in where], device=device)
    logits = query_logits(model, ids, qtok, device.startswith("cuda"))[:, rel]
    return F.cross_entropy(logits.flatten(0, 1), ids[:, where].flatten())


def warm_up(models: dict, plan: Plan, device: str) -> float:
    """One forward + backward per model and length (kernel compilation, allocator), no update; seconds."""
    t0 = time.perf_counter()
    for length, pairs, _ in plan.stages:
        rng = np.random.default_rng([plan.seed, 999_999_999])
        batch = make_batch(rng, max(1, plan.tokens_per_step // length), length, max_pairs=pairs)
        for model in models.values():
            batch_loss(model, batch, device).backward()
            model.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


def train_lockstep(models: dict, plan: Plan, device: str, log_every: int = 50) -> dict:
    """Train every model on the same batches in lockstep: step k draws batch (plan.seed, k) once, at the
    curriculum length and learning rate of the progress shared by all, and each model takes its step.
    With a time budget, all models stop at the same step. Returns {name: {loss, train_s}}, steps."""
    opts = {n: torch.optim.AdamW(m.parameters(), lr=plan.lr, betas=(0.9, 0.95), weight_decay=0.01,
                                 fused=device.startswith("cuda") or None) for n, m in models.items()}
    for m in models.values():
        m.to(device).train()
    rows_out = {n: {"loss": [], "train_s": 0.0, "lengths": {}} for n in models}
    t0, step = time.perf_counter(), 0
    while True:
        p = step / plan.steps if plan.steps else (time.perf_counter() - t0) / plan.budget_s
        if p >= 1.0:
            break
        length, pairs = plan.stage_at(p)
        batch = make_batch(np.random.default_rng([plan.seed, step]), max(1, plan.tokens_per_step // length), length,
                           max_pairs=pairs)
        lr = plan.lr_at(step, p)
        for name, model in models.items():
            t = time.perf_counter()
            loss = batch_loss(model, batch, device)
            opt = opts[name]
            for g in opt.param_groups:
                g["lr"] = lr
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            row = rows_out[name]
            if step % 5 == 0:
                row["loss"].append((step, loss.item()))  # .item() syncs: the step time below is complete
            else:
                sync(device)
            dt = time.perf_counter() - t
            row["train_s"] += dt
            row["lengths"].setdefault(str(length), []).append(dt)
        if log_every and step % log_every == 0:
            print(f"  step {step:4d} len {length:5d} pairs {pairs:2d} lr {lr:.2e} | "
                  + " ".join(f"{n} {r['loss'][-1][1]:.3f}" for n, r in rows_out.items())
                  + f" | {time.perf_counter() - t0:6.1f}s", flush=True)
        step += 1
    for row in rows_out.values():  # mean seconds per step at each length (first step at a length excluded)
        row["step_s_by_length"] = {n: float(np.mean(v[1:] or v)) for n, v in row.pop("lengths").items()}
    return {"variants": rows_out, "steps": step, "train_wall_s": time.perf_counter() - t0}


@torch.no_grad()
def evaluate(model, plan: Plan, device: str) -> dict[str, dict[str, float]]:
    """{str(length): {task: accuracy, "all": accuracy over every query}} on held-out draws."""
    autocast = device.startswith("cuda")
    model.to(device).eval()
    result = {}
    for length in plan.eval_lengths:
        rng = np.random.default_rng([EVAL_SEED, length])
        per = max(1, plan.eval_tokens // length)
        right = {t: [] for t in TASKS}
        for start in range(0, plan.eval_rows, per):
            batch = make_batch(rng, min(per, plan.eval_rows - start), length)
            ids = torch.from_numpy(batch.ids).to(device)
            qtok = batch.query_tokens
            pred = query_logits(model, ids, qtok, autocast).argmax(-1)  # [B, qtok]
            for task, ps in batch.answers:
                rel = [p - (length - qtok) for p in ps]
                ok = (pred[:, rel] == ids[:, ps]).all(1)
                right[task].append(ok.float().cpu())
        accs = {t: float(torch.cat(v).mean()) for t, v in right.items() if v}
        accs["all"] = float(torch.cat([x for v in right.values() for x in v]).mean())
        result[str(length)] = accs
    return result


def chance() -> dict[str, float]:
    """Accuracy of guessing uniformly within the answer's type (values, keys x values, counts 1..8)."""
    return {"kv": 1 / N_VALS, "hop2": 1 / (N_KEYS * N_VALS), "count": 1 / 8}


def sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def machine_info(device: str) -> dict:
    import transformers

    info = {"date": datetime.now(UTC).isoformat(timespec="seconds"), "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "device": device,
            "gpu": torch.cuda.get_device_name() if device.startswith("cuda") else None,
            "cpu": platform.processor() or platform.machine()}
    try:  # the version from the metadata: importing triton on a CPU-only machine slows torch CPU ops ~100x
        from importlib.metadata import version

        info["triton"] = version("triton")
    except Exception:  # noqa: BLE001 - not installed
        pass
    return info


# --- output ------------------------------------------------------------------------------------
def print_table(result: dict) -> None:
    lengths = result["plan"]["eval_lengths"]
    for task in ("all", *TASKS):
        print(f"\nheld-out accuracy, {task} (train lengths {sorted({s[0] for s in result['plan']['stages']})})")
        print(f"{'variant':>8} " + " ".join(f"{n:>7}" for n in lengths))
        for v, row in result["variants"].items():
            print(f"{v:>8} " + " ".join(f"{row['accuracy'][str(n)][task]:>7.3f}" for n in lengths))
    print(f"\n{result['steps']} steps; train time: "
          + ", ".join(f"{v} {row['train_s']:.1f}s" for v, row in result["variants"].items()))
    print("seconds per step by length: " + "; ".join(
        f"{v} " + " ".join(f"{n}:{t:.3f}" for n, t in row["step_s_by_length"].items())
        for v, row in result["variants"].items()))


def plot(result: dict, path: Path) -> Path | None:
    """accuracy vs length per task (one line per variant) + training loss; None without matplotlib."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no plot (the numbers are in the JSON)")
        return None
    lengths = result["plan"]["eval_lengths"]
    train_max = max(s[0] for s in result["plan"]["stages"])
    panels = ("all", *TASKS)
    fig, axes = plt.subplots(1, len(panels) + 1, figsize=(4.4 * (len(panels) + 1), 4.2))
    for ax, task in zip(axes, panels, strict=False):
        for v, row in result["variants"].items():
            ax.plot(lengths, [row["accuracy"][str(n)][task] for n in lengths], marker="o", label=v)
        ax.axvline(train_max, color="grey", linestyle=":", linewidth=1)
        ax.set_xscale("log", base=2)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"held-out accuracy: {task}")
        ax.set_xlabel("sequence length (tokens)")
        ax.grid(alpha=0.3)
    axes[0].legend()
    ax = axes[-1]
    for v, row in result["variants"].items():
        steps, values = zip(*row["loss"], strict=True)
        ax.plot(steps, values, label=v, linewidth=1)
    ax.set_yscale("log")
    ax.set_title("train loss (answer tokens + <eos>)")
    ax.set_xlabel("step")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.suptitle(f"KSA replication ({result['machine'].get('gpu') or 'cpu'}): full vs 3:1 hybrid KSA vs "
                 "hybrid without summaries (SCA); dotted = longest training length")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def save_models(models: dict, folder: Path) -> None:
    tok = build_tokenizer()
    for name, model in models.items():
        model.generation_config.eos_token_id = EOS
        model.generation_config.pad_token_id = PAD
        model.save_pretrained(folder / name)
        tok.save_pretrained(folder / name)


# --- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/ksa_replication", help="folder for results.json + PNG")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (4 layers, 256-512 tokens, 40 steps)")
    ap.add_argument("--steps", type=int, default=None, help="training steps (all variants; smoke default 40)")
    ap.add_argument("--budget-s", type=float, default=200.0,
                    help="without --steps: seconds of lockstep training for all variants together (excludes "
                         "warm-up/compile, evaluation and saving)")
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--tokens-per-step", type=int, default=65536, help="tokens per training batch")
    ap.add_argument("--eval-rows", type=int, default=32, help="held-out sequences per length")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of full,ksa,sca")
    ap.add_argument("--impl", default=None, help="KSA kernel (default triton on CUDA, reference on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-models", default=None, help="write the trained models (HF folders + tokenizer) here")
    return ap.parse_args(argv)


def run_args(run, args: argparse.Namespace) -> dict:
    """run(args), on one torch thread in --smoke (two OpenMP threads on a busy 2-core machine ran tiny
    shapes 100x slower), restoring the thread count after."""
    threads = torch.get_num_threads()
    if args.smoke:
        torch.set_num_threads(1)
    try:
        return run(args)
    finally:
        torch.set_num_threads(threads)


def main(argv: list[str] | None = None) -> dict:
    return run_args(_run, parse_args(argv))


def _run(args: argparse.Namespace) -> dict:
    plan = plan_for(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown:
        sys.exit(f"unknown variant(s) {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    impl = args.impl or ("triton" if args.device.startswith("cuda") else "reference")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    t_start = time.perf_counter()
    models = build_models(plan.shape, plan.window, impl, plan.seed)
    n_params = sum(p.numel() for p in models["full"].parameters())
    windows = list(models["ksa"].config.ksa_windows)
    models = {v: models[v] for v in variants}
    result = {"bench": "ksa_replication", "machine": machine_info(args.device), "plan": asdict(plan),
              "model": {"shape": SHAPES[plan.shape], "params": n_params, "vocab": VOCAB, "chunk": 8, "summaries": 1,
                        "windows": windows, "ksa_impl": impl},
              "tasks": {"train_queries": TRAIN_QUERIES, "answer_len": ANSWER_LEN, "chance": chance()},
              "variants": {}}
    length_s = f"{plan.steps} steps" if plan.steps else f"{plan.budget_s:.0f}s of training"
    print(f"model {n_params / 1e6:.2f}M params, windows {windows}, {length_s} x {plan.tokens_per_step} tokens "
          f"(all variants in lockstep), curriculum {plan.stages}, eval {plan.eval_lengths}", flush=True)
    result["warmup_s"] = warm_up(models, plan, args.device)
    print(f"warm-up (compile) {result['warmup_s']:.1f}s", flush=True)
    trained = train_lockstep(models, plan, args.device, log_every=0 if args.smoke else 50)
    result.update(steps=trained["steps"], train_wall_s=trained["train_wall_s"])
    for name, model in models.items():
        row = trained["variants"][name]
        t1 = time.perf_counter()
        row["accuracy"] = evaluate(model, plan, args.device)
        row["eval_s"] = time.perf_counter() - t1
        row["model_type"] = model.config.model_type
        row["summaries_visible"] = getattr(model.config, "ksa_summaries_visible", None)
        result["variants"][name] = row
        accs = " ".join(f"{n}:{a['all']:.2f}" for n, a in row["accuracy"].items())
        print(f"{name}: train {row['train_s']:.1f}s eval {row['eval_s']:.1f}s | accuracy {accs}", flush=True)
        model.to("cpu")
        if args.device.startswith("cuda"):
            torch.cuda.empty_cache()
    (out / "results.json").write_text(json.dumps(result, indent=1))
    if args.save_models:
        save_models({v: models[v] for v in variants}, Path(args.save_models))
        result["saved_models"] = args.save_models
    result["total_s"] = time.perf_counter() - t_start
    (out / "results.json").write_text(json.dumps(result, indent=1))
    print_table(result)
    png = plot(result, out / "ksa_replication.png")
    print(f"wrote {out / 'results.json'}" + (f" and {png}" if png else "") + f" in {result['total_s']:.1f}s")
    return result


if __name__ == "__main__":
    main()
