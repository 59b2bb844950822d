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
A training sequence of >= 256 tokens carries 1 needle + 8 kv + 4 hop2 + 4 count queries (shorter
rows fewer: queries_for); the loss is the cross-entropy on the answer tokens and their `<eos>` only
(noise is unpredictable; the queries are the whole signal).
Held-out accuracy: teacher-forced, a query is right when the argmax at every answer position equals the
target (the same as greedy decoding of the answer); eval draws come from a different seed, at full
difficulty (32 kv pairs, all queries).

Why this init and curriculum (measured on the CPU, 4 layers, hidden 128; bench/results/
ksa_replication_cpu_pilot/notes.md). Keyed lookup needs a two-layer, induction-style circuit (a
previous-token head, then a head that matches the query's key against it). Before it forms, the model
sits on a plateau where it copies some value token of the row (accuracy 1 / pairs).
- Init: token embeddings untied from the output head and drawn N(0, 1), the other weights N(0, 0.05).
  With tied embeddings of std 0.05 (the earlier init) the pilot shape never left the plateau, not on
  the task's rows and not on plain multi-query associative recall (~600K rows each); with this init the
  same shape learns plain recall in ~400 steps of 128 rows. Small embeddings are drowned by the blocks'
  outputs in the residual stream, so a later layer cannot tell which token sat where.
- Curriculum: the circuit forms where there are few positions to search and many answers per row, so
  the first stage is recall_batch rows (64 tokens: 4 `<sep> k v` pairs, then 12 queries; learned in
  ~475 steps of 128 rows on the CPU), while the task's own rows at 128 tokens (4 pairs among ~50 noise
  tokens, 16 queries a row) stayed on the plateau for 700 steps. Then dense kv rows with noise, then
  the other tasks one at a time (needle at 256 tokens, hop2 at 256-512, count at 512-1K), pairs growing
  4 -> 32 with the length 64 -> 8K. kv queries are drawn with replacement: drawn without, a row with as
  many queries as pairs lets the last be answered by elimination (the value not asked yet), a
  shortcut the pilot once took.
- Learning rate 1e-3 held until 80% of the run (warm-up, stable, decay); a gate moves to the next stage
  once every model's train-batch kv and hop2 accuracy is >= 0.9 at 4 logged steps in a row, the
  stages' shares being upper bounds.

Models (same base shape, same initial weights, same data order and steps): a Qwen3-style decoder
(default 8 layers, hidden 256, 4 query / 2 kv heads of 64, MLP 768; --pilot 4 layers, hidden 128) as
  full  plain causal attention (SDPA / flash on GPU);
  ksa   3:1 hybrid KSA: chunk 8, one summary per chunk, windows ([16]*3+[full])*2 (16 chunks = 128
        tokens in the KSA layers; --pilot [4]*3+[full]), Triton kernel on GPU;
  sca   the same hybrid with summaries_visible=False (sliding chunk only).
The hybrids are ksa.convert_model of the full model's initial weights. Training: AdamW (0.9, 0.95),
wd 0.01, clip 1.0, fp32 weights under bf16 autocast (GPU), warm-up / stable / decay; a length
curriculum at a constant token budget per step (short sequences first: more queries per step while
the retrieval circuit forms). The three models train in lockstep: step k draws one batch and every
model takes its step on it, so a time budget (`--budget-s`, default) stops them all at the same step;
the curriculum stage and learning rate follow the fraction of the budget spent (or of `--steps`).
Evaluated at the curriculum's lengths and beyond (generalisation to 16K / 32K).

results.json is rewritten every --write-every-s seconds while training (loss and train-batch accuracy
every 5th step, curriculum changes), after saving, and after each evaluated length, so a run cut short
keeps what it had; `status` says how far it got. bench/ksa_report.py turns it into tables and plots.

Run (H200):  bench/run_h200.sh ksarep   (this script with --budget-s 420 --save-models /tmp/ksa_models
             --pack-models $OUT/models; sizing in run_h200.sh)
CPU pilot:   PYTHONPATH=. python bench/ksa_replication.py --pilot --variants full --budget-s 720 --out DIR
CPU check:   PYTHONPATH=. python bench/ksa_replication.py --smoke --out /tmp/rep
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


def queries_for(length: int) -> dict[str, int]:
    """Training queries per sequence at `length` tokens: TRAIN_QUERIES from 256 tokens on, scaled down
    below (at least one per task), so that short rows keep room for their items."""
    scale = min(1.0, length / 256)
    return {t: max(1, round(n * scale)) for t, n in TRAIN_QUERIES.items()}


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
               max_pairs: int = MAX_PAIRS, replace: bool = False) -> Batch:
    """`rows` sequences of exactly `length` tokens (format: module docstring); query blocks in the
    order of TASKS. `max_pairs` < 32 is an easier draw (fewer kv pairs; at most that many kv queries).
    kv queries ask distinct pairs, or with `replace` pairs drawn independently (a pair may be asked
    twice). Answers are always written; `prompt_and_answer` cuts them off for prompts."""
    queries = dict(TRAIN_QUERIES if queries is None else queries)
    if not replace:
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
    kv_pick = rng.integers(0, pairs, (rows, queries["kv"])) if replace else _first_n(rng, rows, pairs, queries["kv"])
    for j in kv_pick.T:
        emit("kv", np.full(rows, Q_KV), kv_k[rows_idx, j], kv_v[rows_idx, j])
    for j in _first_n(rng, rows, chains, queries.get("hop2", 0)).T:
        emit("hop2", np.full(rows, Q_HOP), hop_a[rows_idx, j], hop_b[rows_idx, j], hop_w[rows_idx, j])
    for j in _first_n(rng, rows, N_MARKS, queries.get("count", 0)).T:
        emit("count", np.full(rows, Q_CNT), MARK0 + j, COUNT0 + counts[rows_idx, j])
    ids = np.concatenate(cols, 1)
    assert ids.shape == (rows, length), (ids.shape, length)
    return Batch(ids.astype(np.int64), answers, eos, start)


def recall_queries(length: int, pairs: int) -> int:
    """Queries in a recall_batch row: what fits after `<bos>` and the pairs, 4 tokens each."""
    return (length - 1 - 3 * pairs) // 4


def recall_batch(rng: np.random.Generator, rows: int, length: int, pairs: int) -> Batch:
    """Associative-recall rows in the task's tokens, without noise or other items: `<bos>`, noise up
    to a multiple of 4, then `pairs` triples `<sep> k v` back to back, then kv queries
    `<q_kv> k v <eos>` (pairs drawn with replacement) up to `length` tokens. The curriculum's warm-up:
    few positions to search and many answers per row, where the lookup circuit forms fastest."""
    n_q = recall_queries(length, pairs)
    body_len = length - 1 - 4 * n_q
    if n_q < 1:
        raise ValueError(f"recall rows of {length} tokens have no room for a query after {pairs} pairs")
    r = np.arange(rows)[:, None]
    keys = _first_n(rng, rows, N_KEYS, pairs) + KEY0
    vals = rng.integers(VAL0, VAL0 + N_VALS, size=(rows, pairs))
    lead = rng.integers(NOISE0, NOISE0 + N_NOISE, size=(rows, body_len - 3 * pairs))
    triples = np.stack([np.full((rows, pairs), SEP), keys, vals], 2).reshape(rows, 3 * pairs)
    pick = rng.integers(0, pairs, (rows, n_q))
    qs = np.stack([np.full((rows, n_q), Q_KV), keys[r, pick], vals[r, pick], np.full((rows, n_q), EOS)], 2)
    ids = np.concatenate([np.full((rows, 1), BOS), lead, triples, qs.reshape(rows, 4 * n_q)], 1)
    start = 1 + body_len
    answers = [("kv", [start + 4 * j + 2]) for j in range(n_q)]
    return Batch(ids.astype(np.int64), answers, [start + 4 * j + 3 for j in range(n_q)], start)


def prompt_and_answer(rng: np.random.Generator, rows: int, length: int, task: str) -> tuple[np.ndarray, np.ndarray]:
    """Single-query prompts for generation: (prompts [rows, length - answer - 1], answers [rows, A])."""
    b = make_batch(rng, rows, length, {task: 1})
    (_, where), = b.answers
    return b.ids[:, : where[0]], b.ids[:, where]



# --- models --------------------------------------------------------------------------------------
SHAPES = {
    "default": dict(hidden_size=256, num_hidden_layers=8, num_attention_heads=4, num_key_value_heads=2,
                    head_dim=64, intermediate_size=768),
    "pilot": dict(hidden_size=128, num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                  head_dim=32, intermediate_size=384),
    "smoke": dict(hidden_size=64, num_hidden_layers=4, num_attention_heads=2, num_key_value_heads=1,
                  head_dim=32, intermediate_size=128),
}
VARIANTS = ("full", "ksa", "sca")
INIT_STD = 0.05  # weight init std (Qwen3's default 0.02 is sized for hidden 4096; see the module docstring)
EMB_STD = 1.0  # token embedding init std, untied from the output head (see the module docstring)


def base_config(shape: str, init_std: float = INIT_STD):
    from transformers import Qwen3Config

    return Qwen3Config(**SHAPES[shape], vocab_size=VOCAB, max_position_embeddings=65536, rope_theta=1e6,
                       tie_word_embeddings=False, eos_token_id=EOS, pad_token_id=PAD, bos_token_id=BOS,
                       initializer_range=init_std)


def hybrid_windows(layers: int, window: int) -> list[int]:
    """3:1 hybrid: three KSA layers of `window` chunks, then one full layer (ksa.FULL_WINDOW), repeated."""
    from ksa.config import hybrid_windows as hw

    return hw(layers, window=window, ratio=3)


def build_full(shape: str, seed: int, init_std: float = INIT_STD, emb_std: float = EMB_STD):
    """The full-attention model at its initial weights (fp32, CPU): linear layers and the output head
    N(0, init_std), token embeddings N(0, emb_std)."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    full = AutoModelForCausalLM.from_config(base_config(shape, init_std), attn_implementation="sdpa",
                                            dtype=torch.float32)
    with torch.no_grad():
        full.get_input_embeddings().weight.normal_(0.0, emb_std)
    return full


def build_models(shape: str, window: int, impl: str, seed: int, init_std: float = INIT_STD,
                 emb_std: float = EMB_STD) -> dict:
    """{variant: model} with identical initial weights (fp32, CPU)."""
    import ksa

    full = build_full(shape, seed, init_std, emb_std)
    windows = hybrid_windows(full.config.num_hidden_layers, window)
    out = {"full": full}
    for name, visible in (("ksa", True), ("sca", False)):
        settings = ksa.KSAConfig(chunk=8, summaries=1, windows=windows, impl=impl, summaries_visible=visible)
        out[name] = ksa.convert_model(copy.deepcopy(full), settings)
    return out


# --- the plan: curriculum, schedule --------------------------------------------------------------
@dataclass
class Plan:
    """What to train and evaluate. Progress p in [0, 1) is step / steps, or elapsed / budget_s when a
    time budget is set; the learning rate is a function of p (warm-up, stable, decay: lr_at).

    Curriculum: stage i (length, max kv pairs, share) ends at the latest when p reaches the sum of the
    shares up to i (normalised), or earlier once mastered: every model's train-batch accuracy on kv
    and hop2 was >= `mastery` at `gate_logs` logged steps in a row (every 5th step). A mastered stage
    hands its remaining time to the later, longer ones; `mastery` 0 turns gating off. (Gated on the
    full model alone, the CPU pilot moved on from the recall rows as soon as full had learned them,
    before either hybrid had.)"""

    shape: str
    stages: list[tuple]  # (length, max kv pairs, largest share of progress[, RECALL | {task: queries} | tasks])
    steps: int | None  # None: train until budget_s is spent
    tokens_per_step: int
    eval_lengths: list[int]
    eval_rows: int
    eval_tokens: int  # tokens per eval forward
    budget_s: float | None = None
    lr: float = 1e-3
    warmup: int = 30  # steps
    window: int = 16
    seed: int = 0
    init_std: float = INIT_STD
    emb_std: float = EMB_STD
    mastery: float = 0.9
    gate_logs: int = 4
    decay_from: float = 0.8  # progress at which the learning rate starts its cosine decay

    def stage_index(self, p: float) -> int:
        """The stage the time-based schedule is in at progress p (the latest stage allowed)."""
        total, acc = sum(st[2] for st in self.stages), 0.0
        for i, st in enumerate(self.stages):
            acc += st[2] / total
            if p < acc:
                return i
        return len(self.stages) - 1

    def stage_at(self, p: float) -> tuple[int, int]:
        """(length, max kv pairs) of the time-based schedule at progress p."""
        return tuple(self.stages[self.stage_index(p)][:2])

    def lr_at(self, step: int, p: float) -> float:
        """Warm-up, stable, decay: linear warm-up over `warmup` steps, then lr until progress
        `decay_from`, then a cosine down to lr/10 at p = 1. Kept high while the retrieval circuit has
        not formed (a cosine over the whole run had lowered it by a third before the pilot left its
        first stage)."""
        q = max(0.0, (min(p, 1.0) - self.decay_from) / (1.0 - self.decay_from))
        return self.lr * min(1.0, (step + 1) / self.warmup) * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * q)))


# Shares are upper bounds (a mastered stage ends early); the first stages get generous ones because a
# run whose retrieval circuit never forms says nothing, while a short last stage only weakens 8K.
# Noise-free recall rows first, then dense kv rows, then the tasks one at a time (module docstring).
RECALL = "recall"  # a stage of recall_batch rows
DENSE_KV = {"kv": 16}  # 16 kv queries a row (with replacement): the recall circuit meets the task's noise
KV_NEEDLE, RETRIEVAL = ("kv", "needle"), ("kv", "needle", "hop2")
GPU_STAGES = [(64, 4, 0.10, RECALL), (128, 4, 0.06, DENSE_KV), (256, 8, 0.06, KV_NEEDLE), (512, 16, 0.08, RETRIEVAL),
              (1024, MAX_PAIRS, 0.10), (2048, MAX_PAIRS, 0.10), (4096, MAX_PAIRS, 0.20), (8192, MAX_PAIRS, 0.30)]
PILOT_STAGES = [(64, 4, 0.30, RECALL), (128, 4, 0.10, DENSE_KV), (256, 8, 0.15, KV_NEEDLE), (256, 8, 0.15, RETRIEVAL),
                (512, MAX_PAIRS, 0.30)]


def plan_for(args) -> Plan:
    if args.smoke:
        return Plan("smoke", [(128, 4, 0.5), (256, MAX_PAIRS, 0.5)], args.steps or 40, 2048, [256, 512], 8, 4096,
                    lr=3e-3, warmup=5, window=2, seed=args.seed)
    timed = dict(steps=args.steps, budget_s=None if args.steps else args.budget_s)
    if args.pilot:
        return Plan("pilot", PILOT_STAGES, tokens_per_step=args.tokens_per_step or 8192,
                    eval_lengths=[256, 512, 1024, 2048], eval_rows=args.eval_rows, eval_tokens=16384,
                    lr=args.lr, window=4, seed=args.seed, mastery=args.mastery, **timed)
    return Plan("default", GPU_STAGES, tokens_per_step=args.tokens_per_step or 65536,
                eval_lengths=[1024, 2048, 4096, 8192, 16384, 32768], eval_rows=args.eval_rows, eval_tokens=131072,
                lr=args.lr, seed=args.seed, mastery=args.mastery, **timed)


# --- training and evaluation ---------------------------------------------------------------------
def query_logits(model, ids: torch.Tensor, qtok: int, autocast: bool) -> torch.Tensor:
    """Logits [B, qtok, V] predicting the last qtok tokens (positions T-qtok-1 .. T-2)."""
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        out = model(input_ids=ids, logits_to_keep=qtok + 1, use_cache=False)
    return out.logits[:, :-1].float()


def supervised(batch: Batch) -> list[int]:
    """Positions in ids the loss covers: every answer token and every answer-ending <eos>."""
    return sorted([p for _, ps in batch.answers for p in ps] + batch.eos)


def batch_loss(model, batch: Batch, device: str, hits: dict | None = None) -> torch.Tensor:
    """Mean cross-entropy over the answer tokens and their <eos>. With `hits`, also appends per task a
    bool tensor [B] per query: argmax right at every answer position (the train-batch accuracy, read
    before the update, so each batch is unseen when scored)."""
    ids = torch.from_numpy(batch.ids).to(device, non_blocking=True)
    length, qtok = batch.ids.shape[1], batch.query_tokens
    where = supervised(batch)
    rel = torch.tensor([p - (length - qtok) for p in where], device=device)
    logits = query_logits(model, ids, qtok, device.startswith("cuda"))[:, rel]
    target = ids[:, where]
    if hits is not None:
        right = logits.detach().argmax(-1) == target  # [B, n]
        col = {p: i for i, p in enumerate(where)}
        for task, ps in batch.answers:
            hits.setdefault(task, []).append(right[:, [col[p] for p in ps]].all(1))
    return F.cross_entropy(logits.flatten(0, 1), target.flatten())


def is_recall(stage: tuple) -> bool:
    """Whether a curriculum stage draws recall_batch rows."""
    return stage[3:4] == (RECALL,)


def stage_queries(stage: tuple) -> dict[str, int]:
    """Queries per row of a curriculum stage: its 4th element as {task: count}, or the tasks it names
    with queries_for(its length)'s counts, or (no 4th element) queries_for for all of TASKS. A RECALL
    stage (recall_batch rows) asks kv only."""
    spec = stage[3] if len(stage) > 3 else TASKS
    if is_recall(stage):
        return {"kv": recall_queries(stage[0], stage[1])}
    if isinstance(spec, dict):
        return dict(spec)
    return {t: n for t, n in queries_for(stage[0]).items() if t in spec}


def stage_tasks(stage: tuple) -> tuple[str, ...]:
    """The tasks a curriculum stage queries."""
    return tuple(stage_queries(stage))


def train_batch(plan: Plan, step: int, length: int, pairs: int, stage: int = 0) -> Batch:
    """The batch of `step` (seed (plan.seed, step)): tokens_per_step // length rows at the stage,
    with the stage's queries (the body holds every task's items that fit). The kv queries of a row
    are drawn with replacement: drawn without, a row with as many queries as pairs lets each later
    query be answered by elimination (the value not asked for yet), a shortcut the CPU pilot took
    (0.75 at 2 pairs, module docstring) instead of a keyed lookup."""
    rng, rows = np.random.default_rng([plan.seed, step]), max(1, plan.tokens_per_step // length)
    if is_recall(plan.stages[stage]):
        return recall_batch(rng, rows, length, pairs)
    return make_batch(rng, rows, length, stage_queries(plan.stages[stage]), max_pairs=pairs, replace=True)


def warm_up(models: dict, plan: Plan, device: str) -> float:
    """One forward + backward per model and length (kernel compilation, allocator), no update; seconds."""
    t0 = time.perf_counter()
    for i, (length, pairs, *_) in enumerate(plan.stages):
        batch = train_batch(plan, 999_999_999, length, pairs, i)
        for model in models.values():
            batch_loss(model.to(device), batch, device).backward()
            model.zero_grad(set_to_none=True)
    sync(device)
    return time.perf_counter() - t0


class Curriculum:
    """The current stage: never behind the time-based schedule, ahead of it once the gate models
    (`gate` names them) have mastered the stage (Plan docstring). `events` records every change (step,
    seconds, stage, why)."""

    def __init__(self, plan: Plan, gate: str):
        self.plan, self.gate, self.index, self.streak = plan, gate, 0, 0
        self.events: list[dict] = []

    def at(self, step: int, p: float, elapsed: float) -> tuple[int, int]:
        scheduled = self.plan.stage_index(p)
        if scheduled > self.index:
            self._move(scheduled, step, elapsed, "schedule")
        if not self.events:
            self._move(0, step, elapsed, "start")
        return tuple(self.plan.stages[self.index][:2])

    def observe(self, acc: dict[str, float], step: int, elapsed: float) -> None:
        """Feed the train-batch accuracy of one logged step (per task, the lowest of the gate models)."""
        keyed = [acc[t] for t in ("kv", "hop2") if t in acc]
        good = bool(keyed) and self.plan.mastery > 0 and min(keyed) >= self.plan.mastery
        self.streak = self.streak + 1 if good else 0
        if self.streak >= self.plan.gate_logs and self.index + 1 < len(self.plan.stages):
            self._move(self.index + 1, step + 1, elapsed, "mastered")

    def _move(self, index: int, step: int, elapsed: float, why: str) -> None:
        self.index, self.streak = index, 0
        length, pairs = self.plan.stages[index][:2]
        self.events.append({"step": step, "s": round(elapsed, 2), "stage": index, "length": length,
                            "pairs": pairs, "tasks": list(stage_tasks(self.plan.stages[index])),
                            "recall": is_recall(self.plan.stages[index]), "why": why})


def train_lockstep(models: dict, plan: Plan, device: str, log_every: int = 50, on_write=None,
                   write_every_s: float = 30.0) -> dict:
    """Train every model on the same batches in lockstep: step k draws batch (plan.seed, k) once, at the
    curriculum stage and learning rate of the progress shared by all, and each model takes its step.
    With a time budget, all models stop at the same step. Every 5th step logs each model's loss and
    train-batch accuracy; every `write_every_s` seconds `on_write(state)` gets the state so far.
    Returns {variants: {name: {loss, train_acc, train_s, step_s_by_length}}, steps, train_wall_s, curriculum}."""
    opts = {n: torch.optim.AdamW(m.parameters(), lr=plan.lr, betas=(0.9, 0.95), weight_decay=0.01,
                                 fused=device.startswith("cuda") or None) for n, m in models.items()}
    for m in models.values():
        m.to(device).train()
    rows = {n: {"loss": [], "train_acc": [], "train_s": 0.0, "lengths": {}} for n in models}
    cur = Curriculum(plan, "+".join(models))
    state = {"variants": rows, "steps": 0, "train_wall_s": 0.0, "curriculum": cur.events}
    t0 = last_write = time.perf_counter()
    step = 0
    while True:
        elapsed = time.perf_counter() - t0
        p = step / plan.steps if plan.steps else elapsed / plan.budget_s
        if p >= 1.0:
            break
        length, pairs = cur.at(step, p, elapsed)
        batch = train_batch(plan, step, length, pairs, cur.index)
        lr = plan.lr_at(step, p)
        for name, model in models.items():
            _model_step(model, opts[name], batch, lr, device, rows[name], step, length)
        if step % 5 == 0:
            accs = [rows[n]["train_acc"][-1][1] for n in models]  # the stage ends early once all master it
            cur.observe({t: min(a[t] for a in accs) for t in accs[0]}, step, elapsed)
        if log_every and step % log_every == 0:
            print(f"  step {step:4d} len {length:5d} pairs {pairs:2d} lr {lr:.2e} | " + " | ".join(
                f"{n} {r['loss'][-1][1]:.3f} " + " ".join(f"{t} {a:.2f}" for t, a in r['train_acc'][-1][1].items())
                for n, r in rows.items()) + f" | {elapsed:6.1f}s", flush=True)
        step += 1
        state.update(steps=step, train_wall_s=time.perf_counter() - t0)
        if on_write and time.perf_counter() - last_write > write_every_s:
            on_write(_timings(state))
            last_write = time.perf_counter()
    state.update(steps=step, train_wall_s=time.perf_counter() - t0)
    return _timings(state, final=True)


def _model_step(model, opt, batch: Batch, lr: float, device: str, row: dict, step: int, length: int) -> None:
    """One optimizer step of one model; every 5th step records loss and train-batch accuracy."""
    t = time.perf_counter()
    hits: dict | None = {} if step % 5 == 0 else None
    loss = batch_loss(model, batch, device, hits)
    for g in opt.param_groups:
        g["lr"] = lr
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
    opt.step()
    if hits is not None:  # .item() syncs: the step time below is complete
        row["loss"].append((step, loss.item()))
        row["train_acc"].append((step, {t: float(torch.cat(v).float().mean()) for t, v in hits.items()}))
    else:
        sync(device)
    dt = time.perf_counter() - t
    row["train_s"] += dt
    row["lengths"].setdefault(str(length), []).append(dt)


def _timings(state: dict, final: bool = False) -> dict:
    """A JSON-ready copy of the training state: per-step seconds by length replace the raw lists
    (mean, the first step at each length excluded: it pays for compilation)."""
    out = {k: v for k, v in state.items() if k != "variants"}
    out["variants"] = {}
    for name, row in state["variants"].items():
        r = {k: v for k, v in row.items() if k != "lengths"}
        r["step_s_by_length"] = {n: float(np.mean(v[1:] or v)) for n, v in row["lengths"].items()}
        r["steps_by_length"] = {n: len(v) for n, v in row["lengths"].items()}
        out["variants"][name] = r
    out["curriculum"] = list(state["curriculum"])
    out["training_done"] = final
    return out


@torch.no_grad()
def evaluate(model, plan: Plan, device: str, on_length=None) -> dict[str, dict[str, float]]:
    """{str(length): {task: accuracy, "all": accuracy over every query}} on held-out draws at full
    difficulty (32 pairs, TRAIN_QUERIES); `on_length(result so far)` after each length."""
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
        if on_length:
            on_length(result)
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
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()}
    try:  # the version from the metadata: importing triton on a CPU-only machine slows torch CPU ops ~100x
        from importlib.metadata import version

        info["triton"] = version("triton")
    except Exception:  # noqa: BLE001 - not installed
        pass
    return info


def write_json(path: Path, obj: dict) -> None:
    """Write atomically (a temporary file renamed over the old one): a run killed mid-write leaves the
    previous complete file."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=1))
    tmp.replace(path)


# --- output ------------------------------------------------------------------------------------
def print_table(result: dict) -> None:
    lengths = result["plan"]["eval_lengths"]
    done = {v: row for v, row in result["variants"].items() if row.get("accuracy")}
    for task in ("all", *TASKS):
        print(f"\nheld-out accuracy, {task} (train lengths {sorted({s[0] for s in result['plan']['stages']})})")
        print(f"{'variant':>8} " + " ".join(f"{n:>7}" for n in lengths))
        for v, row in done.items():
            print(f"{v:>8} " + " ".join(f"{row['accuracy'].get(str(n), {}).get(task, float('nan')):>7.3f}"
                                        for n in lengths))
    print(f"\n{result['steps']} steps; train time: "
          + ", ".join(f"{v} {row['train_s']:.1f}s" for v, row in result["variants"].items()))
    print("seconds per step by length: " + "; ".join(
        f"{v} " + " ".join(f"{n}:{t:.3f}" for n, t in row["step_s_by_length"].items())
        for v, row in result["variants"].items()))
    print("curriculum: " + ", ".join(f"step {e['step']} -> {e['length']}x{e['pairs']} ({e['why']})"
                                     for e in result["curriculum"]))


def save_models(models: dict, folder: Path) -> None:
    tok = build_tokenizer()
    for name, model in models.items():
        model.generation_config.eos_token_id = EOS
        model.generation_config.pad_token_id = PAD
        model.save_pretrained(folder / name)
        tok.save_pretrained(folder / name)


def pack_models(folder: Path, names: list[str], out: Path) -> list[str]:
    """One tar per saved model (`folder/name` as written by save_models, weights cast to bfloat16 to
    halve the size): the form in which trained models leave a GPU machine that returns few, small
    files. `tar -xf name.tar -C DIR` gives DIR/name back, loadable by from_pretrained."""
    import tarfile
    import tempfile

    from safetensors.torch import load_file, save_file

    out.mkdir(parents=True, exist_ok=True)
    written = []
    for name in names:
        with tempfile.TemporaryDirectory() as tmp:
            staged = Path(tmp) / name
            staged.mkdir()
            for f in (folder / name).iterdir():
                if f.suffix == ".safetensors":
                    save_file({k: v.to(torch.bfloat16) for k, v in load_file(f).items()}, staged / f.name,
                              metadata={"format": "pt"})
                else:
                    staged.joinpath(f.name).write_bytes(f.read_bytes())
            with tarfile.open(out / f"{name}.tar", "w") as tar:
                tar.add(staged, arcname=name)
        written.append(str(out / f"{name}.tar"))
    return written


# --- main ----------------------------------------------------------------------------------------
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="bench/results/ksa_replication", help="folder for results.json")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--smoke", action="store_true", help="tiny CPU run (4 layers, 128-256 tokens, 40 steps)")
    ap.add_argument("--pilot", action="store_true",
                    help="the CPU pilot: 4 layers, hidden 128, curriculum 64 -> 512 tokens, eval 256-2K, windows of 4 chunks")
    ap.add_argument("--steps", type=int, default=None, help="training steps (all variants; smoke default 40)")
    ap.add_argument("--budget-s", type=float, default=200.0,
                    help="without --steps: seconds of lockstep training for all variants together (excludes "
                         "warm-up/compile, evaluation and saving)")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--mastery", type=float, default=0.9,
                    help="advance the curriculum early once every model's train accuracy on kv and hop2 reaches this (0: off)")
    ap.add_argument("--tokens-per-step", type=int, default=None, help="tokens per training batch (default 65536; pilot 8192)")
    ap.add_argument("--eval-rows", type=int, default=32, help="held-out sequences per length")
    ap.add_argument("--variants", default=",".join(VARIANTS), help="comma-separated subset of full,ksa,sca")
    ap.add_argument("--impl", default=None, help="KSA kernel (default triton on CUDA, reference on CPU)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--save-models", default=None, help="write the trained models (HF folders + tokenizer) here")
    ap.add_argument("--pack-models", default=None,
                    help="with --save-models: also write full.tar and ksa.tar (bfloat16) into this folder")
    ap.add_argument("--write-every-s", type=float, default=30.0, help="rewrite results.json this often while training")
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


def scale(args) -> str:
    """What a result's numbers are: 'gpu', 'cpu pilot', 'smoke' or 'cpu' (label in every results.json)."""
    if args.smoke:
        return "smoke"
    if args.device.startswith("cuda"):
        return "gpu"
    return "cpu pilot" if args.pilot else "cpu"


def _header(args, plan: Plan, models: dict, impl: str) -> dict:
    full = next(iter(models.values()))
    n_params = sum(p.numel() for n, p in full.named_parameters() if "summary_" not in n)
    windows = list(models["ksa"].config.ksa_windows) if "ksa" in models else None
    return {"bench": "ksa_replication", "scale": scale(args),
            "machine": machine_info(args.device), "plan": asdict(plan),
            "model": {"shape": SHAPES[plan.shape], "params": n_params, "vocab": VOCAB, "chunk": 8, "summaries": 1,
                      "windows": windows, "ksa_impl": impl, "init_std": plan.init_std,
                      "emb_std": plan.emb_std, "tied_embeddings": False},
            "tasks": {"train_queries": TRAIN_QUERIES, "queries_by_stage": [stage_queries(s) for s in plan.stages],

                      "answer_len": ANSWER_LEN, "chance": chance()},
            "status": "warm-up", "variants": {}}


def _run(args: argparse.Namespace) -> dict:
    plan = plan_for(args)
    variants = [v.strip() for v in args.variants.split(",") if v.strip()]
    unknown = set(variants) - set(VARIANTS)
    if unknown or not variants:
        sys.exit(f"unknown variant(s) {sorted(unknown)}; choose from {','.join(VARIANTS)}")
    impl = args.impl or ("triton" if args.device.startswith("cuda") else "reference")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    t_start = time.perf_counter()
    models = build_models(plan.shape, plan.window, impl, plan.seed, plan.init_std, plan.emb_std)
    models = {v: models[v] for v in variants}
    result = _header(args, plan, models, impl)
    print(f"model {result['model']['params'] / 1e6:.2f}M params, windows {result['model']['windows']}, "
          f"{f'{plan.steps} steps' if plan.steps else f'{plan.budget_s:.0f}s of training'} x {plan.tokens_per_step} "
          f"tokens (all variants in lockstep), curriculum {plan.stages}, eval {plan.eval_lengths}", flush=True)
    write_json(path, result)
    result["warmup_s"] = warm_up(models, plan, args.device)
    print(f"warm-up (compile) {result['warmup_s']:.1f}s", flush=True)
    result["status"] = "training"

    def merge(state: dict) -> None:
        result.update({k: v for k, v in state.items() if k != "variants"})
        for name, row in state["variants"].items():
            result["variants"].setdefault(name, {}).update(row)
        write_json(path, result)

    merge(train_lockstep(models, plan, args.device, log_every=0 if args.smoke else 50, on_write=merge,
                         write_every_s=args.write_every_s))
    if args.save_models:
        save_models(models, Path(args.save_models))
        result["saved_models"] = args.save_models
        if args.pack_models:
            result["packed_models"] = pack_models(Path(args.save_models), [v for v in ("full", "ksa") if v in models],
                                                  Path(args.pack_models))
    _evaluate_all(models, plan, args.device, result, path)
    result["total_s"] = time.perf_counter() - t_start
    result["status"] = "done"
    write_json(path, result)
    print_table(result)
    print(f"wrote {path} in {result['total_s']:.1f}s")
    return result


def _evaluate_all(models: dict, plan: Plan, device: str, result: dict, path: Path) -> None:
    """Held-out accuracy of every model, results.json rewritten after each length."""
    result["status"] = "evaluating"
    for name, model in models.items():
        row = result["variants"][name]
        row.update(model_type=model.config.model_type,
                   summaries_visible=getattr(model.config, "ksa_summaries_visible", None))
        t1 = time.perf_counter()

        def on_length(acc: dict, row=row, t1=t1) -> None:
            row["accuracy"], row["eval_s"] = dict(acc), time.perf_counter() - t1
            write_json(path, result)

        evaluate(model, plan, device, on_length)
        accs = " ".join(f"{n}:{a['all']:.2f}" for n, a in row["accuracy"].items())
        print(f"{name}: train {row['train_s']:.1f}s eval {row['eval_s']:.1f}s | accuracy {accs}", flush=True)
        model.to("cpu")
        if device.startswith("cuda"):
            torch.cuda.empty_cache()


if __name__ == "__main__":
    main()
