"""Sequence packing and chunked per-token log-probabilities.

Many (prompt + response) sequences are laid end to end in one row of a micro-batch, with
position_ids restarting at 0 for each sequence and no padding. transformers (>= 4.56) recognises
this layout from the position_ids when no attention mask is passed and builds a block-diagonal
causal mask (eager / sdpa / flex); flash-attention backends get the boundaries as explicit varlen
arguments. Tokens never attend across sequences; tests/test_packing.py checks it numerically
against separate forwards. Models that cannot be packed this way (KSA, linear attention) run each
micro-batch as a right-padded batch through their own forward instead.

Responses that share a prompt (the G samples of a GRPO group) can be packed with the prompt once:
prompt, response 1, ..., response G, each response placed at the positions that follow the prompt
and attending to the prompt and to itself only (`pack_shared`). The prompt's forward and backward
then run once per group instead of G times: at long context (prompt >> response) the learner does
nearly G times less work, with the same log-probs and gradients (tests/test_packing.py). KSA models
lay such a row out on the KSA layout themselves (ksa/shared.py: each response continues the prompt's
chunking and owns the summary of the chunk it completes; tests/test_ksa_shared.py).

Shared-prompt rows are padded to a bucket length (`bucket_length`: at most 12.5% padding above 1K
tokens, 8 lengths per octave) with one extra sequence nothing else attends to, and their FlexAttention
BlockMask is built directly from the row's spans, without compilation (`shared_block_mask`). A KSA
model's shared row is padded on its own layout instead: text and summary slots together are brought
to a bucket length by padding slots (`ksa_layout_padding`, ksa/shared.py). The compiled FlexAttention
kernel runs between the compiled layers' graphs and is compiled once per bucket length, not once per
packed length; compiled decoder layers (model.compile) are dynamic in the length from their first
call (golong.models.compile_layers), so ordinary packed rows need no buckets.

Log-probs are taken from the final hidden states of the response-predicting positions only, in
chunks of `chunk` tokens: the LM head, log-softmax and gather run per chunk (and are recomputed in
backward), so the [tokens, vocab] logits of a long response are never held at once.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from functools import lru_cache

import torch
from torch.utils.checkpoint import checkpoint

from golong.checkpointing import kept_through_recompute
from ksa import is_ksa
from ksa.flex_attention import (  # bucket lengths: multiples of TILE
    TILE,
    flex_between_graphs,
    intervals_block_mask,
)
from ksa.pieces import long_enough, pieces_attention
from ksa.shared import shared_length


def plan_micro_batches(lengths: Sequence[int], budget: int) -> list[list[int]]:
    """First-fit-decreasing bins of sequence indices whose total length is <= budget.

    A sequence longer than the budget gets a bin of its own (it cannot be split). Bins come out in
    the order they were opened (largest first); indices inside a bin are in decreasing length.
    """
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    bins: list[list[int]] = []
    room: list[int] = []
    for i in order:
        n = lengths[i]
        for b, free in enumerate(room):
            if n <= free:
                bins[b].append(i)
                room[b] -= n
                break
        else:
            bins.append([i])
            room.append(budget - n)
    return bins


def plan_shared_micro_batches(prompt_lens: Sequence[int], groups: Sequence[Sequence[tuple[int, int]]], budget: int) -> list[list[list[int]]]:
    """Micro-batches of prompt-sharing units: group g is its prompt (prompt_lens[g] tokens) and its
    members (sample index, response length). A group is cut into units of prompt + as many members
    as fit the budget (at least one member each; every unit repeats the prompt); units are binned
    first-fit-decreasing by their length. Returns bins of units, a unit being a list of sample indices."""
    units: list[list[int]] = []
    sizes: list[int] = []
    for p, members in zip(prompt_lens, groups, strict=True):
        unit: list[int] = []
        size = p
        for i, r in members:
            if unit and size + r > budget:
                units.append(unit)
                sizes.append(size)
                unit, size = [], p
            unit.append(i)
            size += r
        units.append(unit)
        sizes.append(size)
    return [[units[u] for u in b] for b in plan_micro_batches(sizes, budget)]


@dataclass
class PackedRow:
    """One packed micro-batch: input_ids/position_ids [1, L]; per sequence (start, prompt_len, response_len)
    with its prompt at [start, start + prompt_len), and where its response starts (`response_at`).

    Shared-prompt rows (`pack_shared`) also carry per-token `docs` (unit index) and `members` (-1 for
    prompt tokens, the response's index within its unit otherwise): a token attends to earlier tokens
    of its unit that are prompt tokens or of its own response. Padding (`pad_shared`) is one more unit
    of `padding` prompt tokens at the end: it attends only to itself, so every row's softmax stays finite."""

    input_ids: torch.Tensor
    position_ids: torch.Tensor
    spans: list[tuple[int, int, int]]
    response_at: list[int] = field(default_factory=list)
    docs: torch.Tensor | None = None
    members: torch.Tensor | None = None
    padding: int = 0  # trailing tokens of a sequence of their own (bucketed rows); their outputs are dropped
    layout_padding: int = 0  # a KSA model's shared row: padding slots its layout gets (not in input_ids; ksa_layout_padding)
    kernel: str = "flex"  # a shared row's attention: "flex" (CUDA: one BlockMask; CPU: dense) or "sdpa" (SharedPieces)

    def __post_init__(self) -> None:
        if not self.response_at:
            self.response_at = [s + p for s, p, _ in self.spans]

    @property
    def response_tokens(self) -> int:
        return sum(r for _, _, r in self.spans)


def pack(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]]) -> PackedRow:
    """Concatenate prompt+response sequences into one row with per-sequence positions."""
    ids: list[int] = []
    pos: list[int] = []
    spans = []
    for p, r in zip(prompts, responses, strict=True):
        if not p:
            raise ValueError("every sequence needs at least one prompt token (the first response token is predicted from it)")
        spans.append((len(ids), len(p), len(r)))
        ids.extend(p)
        ids.extend(r)
        pos.extend(range(len(p) + len(r)))
    return PackedRow(torch.tensor([ids], dtype=torch.long), torch.tensor([pos], dtype=torch.long), spans)


def bucket_length(n: int) -> int:
    """The packed length a row of n tokens is padded to: n rounded up to a multiple of
    max(128, pow2(n) / 16), pow2(n) the smallest power of two >= n. Padding stays under 12.5% of n
    above 1024 tokens (under 128 tokens below); an octave (2^k, 2^(k+1)] holds 8 buckets, so a run whose
    micro-batches range from 8K to 16K tokens meets at most 8 lengths. Multiples of 128, FlexAttention's tile."""
    step = max(TILE, (1 << max(n - 1, 1).bit_length()) // 16)
    return -(-n // step) * step


def pack_shared(units: Sequence[tuple[Sequence[int], Sequence[Sequence[int]]]], pad_to: int | None = None) -> PackedRow:
    """Lay out units (prompt, [responses]) as prompt, response 1, ..., response k, unit after unit.
    Each response takes the positions following its prompt; spans come out in the given order.
    With `pad_to`, a last unit of padding tokens (id 0, no responses) fills the row to that length."""
    ids: list[int] = []
    pos: list[int] = []
    docs: list[int] = []
    members: list[int] = []
    spans, response_at = [], []
    for u, (prompt, responses) in enumerate(units):
        if not prompt:
            raise ValueError("every sequence needs at least one prompt token (the first response token is predicted from it)")
        start = len(ids)
        ids.extend(prompt)
        pos.extend(range(len(prompt)))
        docs.extend([u] * len(prompt))
        members.extend([-1] * len(prompt))
        for m, r in enumerate(responses):
            spans.append((start, len(prompt), len(r)))
            response_at.append(len(ids))
            ids.extend(r)
            pos.extend(range(len(prompt), len(prompt) + len(r)))
            docs.extend([u] * len(r))
            members.extend([m] * len(r))
    padding = max(0, (pad_to or 0) - len(ids))
    ids.extend([0] * padding)
    pos.extend(range(padding))
    docs.extend([len(units)] * padding)
    members.extend([-1] * padding)
    return PackedRow(
        torch.tensor([ids], dtype=torch.long), torch.tensor([pos], dtype=torch.long), spans, response_at,
        torch.tensor(docs, dtype=torch.long), torch.tensor(members, dtype=torch.long), padding,
    )


def _base_and_head(model):
    """(decoder that returns hidden states, lm_head, config) of a causal LM, also under a peft wrapper."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.get_decoder(), base.get_output_embeddings(), base.config


def supports_packing(model) -> bool:
    """Whether sequence boundaries in one row are honoured. Not for KSA models (summary slots are
    inserted per sequence) nor linear-attention / convolution layers (they ignore position_ids)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    layer_types = set(getattr(config, "layer_types", None) or [])
    return not is_ksa(config) and layer_types <= {"full_attention", "sliding_attention"}


def supports_prompt_sharing(model) -> bool:
    """Shared-prompt rows need packing support and plain causal attention in every layer (the shared
    attention below has no sliding window), or a KSA model (ksa/shared.py lays the row out)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    config = base.config
    return uses_ksa_layout(model) or (
        supports_packing(model)
        and set(getattr(config, "layer_types", None) or ["full_attention"]) == {"full_attention"}
        and not getattr(config, "use_sliding_window", False)
    )


def uses_ksa_layout(model) -> bool:
    """A KSA model that lays shared-prompt rows out itself (summary slots inserted per unit)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return is_ksa(base.config) and hasattr(base, "shared_prompt_hidden")


def lays_out_every_row(model) -> bool:
    """A KSA model whose kernel is FlexAttention (impl "flex"): its ordinary packed rows go on the shared
    layout too (units of one response each: the same slots as each pair alone), one row of a bucket
    length instead of a right-padded batch whose batch size and length change with every micro-batch.
    FlexAttention then runs compiled static once per bucket; traced into a compiled layer with symbolic
    shapes it fails on the CPU (an index out of bounds at the second length, a C++ build error when
    dynamic from the first)."""
    return uses_ksa_layout(model) and getattr(_base_and_head(model)[2], "ksa_impl", None) == "flex"


SHARED_PROMPT_ATTENTION = "golong_shared_prompt"


def _shared_prompt_attention(module, query, key, value, attention_mask, dropout=0.0, scaling=None, golong_mask=None, **kwargs):
    """transformers attention function for shared-prompt rows: q, k, v [B, H, L, D] under `golong_mask`
    (a dense bool mask on CPU, a FlexAttention BlockMask on CUDA); returns [B, L, H, D]."""
    gqa = query.shape[1] != key.shape[1]
    if golong_mask is None:
        raise RuntimeError("shared-prompt attention called without its mask (use packed_logprobs)")
    if isinstance(golong_mask, torch.Tensor):
        out = torch.nn.functional.scaled_dot_product_attention(query, key, value, attn_mask=golong_mask, scale=scaling, enable_gqa=gqa)
    elif isinstance(golong_mask, SharedPieces):
        out = pieces_attention(query, key, value, golong_mask, scaling, gqa)
    else:  # outside the compiled layer's graph, compiled static once per bucket length; not rerun by
        # save_attention's recompute (golong.checkpointing: the policy cannot see this kernel)
        out = kept_through_recompute(flex_between_graphs, query, key, value, golong_mask, scaling, gqa)
    return out.transpose(1, 2).contiguous(), None


@lru_cache(maxsize=1)
def _register_shared_attention() -> None:
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface

    # one compiled FlexAttention per bucket length (bucket_length): keep dynamo's default limit of 8
    # from sending a run over many buckets to the unfused path, whose memory grows with L^2
    torch._dynamo.config.cache_size_limit = max(torch._dynamo.config.cache_size_limit, 64)
    AttentionInterface.register(SHARED_PROMPT_ATTENTION, _shared_prompt_attention)
    AttentionMaskInterface.register(SHARED_PROMPT_ATTENTION, lambda *args, **kwargs: None)  # the mask comes as golong_mask


@contextmanager
def shared_attention(model, row: PackedRow) -> Iterator[None]:
    """For a shared-prompt row: the model's attention layers run the shared-prompt attention for the
    duration (they read the implementation at every call). Hold it over forward AND backward: a
    checkpointed layer recomputes its forward in backward and must see the same attention."""
    if row.members is None:
        yield
        return
    if not supports_prompt_sharing(model):
        raise ValueError(f"{type(model).__name__} cannot take shared-prompt rows (sliding-window or linear-attention layers); use pack()")
    if uses_ksa_layout(model):  # the KSA model lays out and masks the row itself (_ksa_shared_hidden)
        yield
        return
    _register_shared_attention()
    config = _base_and_head(model)[2]
    before = config._attn_implementation
    config._attn_implementation = SHARED_PROMPT_ATTENTION
    try:
        yield
    finally:
        config._attn_implementation = before


def shared_kernel(setting: str, response_lengths: Sequence[int]) -> str:
    """A shared row's attention kernel for optim.shared_prompt_kernel `setting`: "flex" or "sdpa" as set;
    "auto" takes the pieces ("sdpa") when the row's responses average at least ksa.pieces.MIN_MEAN_RESPONSE
    tokens, else one FlexAttention: the pieces cost a kernel call per response each way (G + 2 calls a unit,
    outside the compiled graphs), FlexAttention recomputes its attention in backward (measurements:
    ksa.pieces.pays_off)."""
    if setting != "auto":
        return setting
    return "sdpa" if long_enough(response_lengths) else "flex"


def shared_mask(row: PackedRow, device, block: bool | None = None):
    """The attention rule of a shared-prompt row: same unit, causal, key is prompt or the query's own
    response. A dense [1, 1, L, L] bool mask (the CPU default: FlexAttention has no CPU backward) or
    a FlexAttention BlockMask (the CUDA default; never dense, see shared_block_mask); with
    row.kernel "sdpa", the row's pieces on any device (SharedPieces)."""
    if row.kernel == "sdpa":
        return shared_pieces(row)
    if not (torch.device(device).type == "cuda" if block is None else block):
        docs, members = row.docs.to(device), row.members.to(device)
        idx = torch.arange(docs.numel(), device=device)
        return _shared_rule(docs, members)(None, None, idx[:, None], idx[None, :])[None, None]
    return shared_block_mask(row, device)


@dataclass(frozen=True)
class SharedPieces:
    """A shared-prompt row as the pieces that attend without a mask beyond causality: per unit
    ((prompt start, prompt length), ((response start, response length), ...)), in row order; the
    padding of a bucketed row is a unit of its own with no responses."""

    units: tuple[tuple[tuple[int, int], tuple[tuple[int, int], ...]], ...]


def shared_pieces(row: PackedRow) -> SharedPieces:
    """The row's SharedPieces, read from its per-token units and members (a run of prompt tokens, -1,
    opens a unit; the runs of one member that follow are its responses)."""
    docs, members = row.docs.cpu(), row.members.cpu()
    change = torch.ones(docs.numel(), dtype=torch.bool)
    change[1:] = (docs[1:] != docs[:-1]) | (members[1:] != members[:-1])
    starts = torch.nonzero(change).flatten().tolist()
    ends = [*starts[1:], docs.numel()]
    units: list[tuple[tuple[int, int], list[tuple[int, int]]]] = []
    for start, end in zip(starts, ends, strict=True):
        if members[start] < 0:
            units.append(((start, end - start), []))
        elif units and docs[start] == docs[units[-1][0][0]]:
            units[-1][1].append((start, end - start))
        else:
            raise ValueError(f"shared row: response tokens at {start} follow no prompt of their unit")
    return SharedPieces(tuple((prompt, tuple(responses)) for prompt, responses in units))


def _shared_rule(docs: torch.Tensor, members: torch.Tensor):
    def rule(b, h, q, k):
        return (docs[q] == docs[k]) & (k <= q) & ((members[k] < 0) | (members[k] == members[q]))

    return rule


def _attended_intervals(docs: torch.Tensor, members: torch.Tensor) -> torch.Tensor:
    """Per query token of a shared-prompt row, the two key intervals it attends, as [L, 4]
    (lo1, hi1, lo2, hi2), inclusive, an interval with hi < lo being empty: its unit's prompt up to
    itself, and (a response token) its own response up to itself. The rule of `shared_mask` reads
    exactly this way because a unit is laid out as its prompt, then its responses one after another."""
    n = docs.numel()
    idx = torch.arange(n, device=docs.device)
    new_doc = torch.ones(n, dtype=torch.bool, device=docs.device)
    new_doc[1:] = docs[1:] != docs[:-1]
    new_run = new_doc.clone()  # a new (unit, member) run: the start of a prompt or a response
    new_run[1:] |= members[1:] != members[:-1]
    doc_start = torch.cummax(torch.where(new_doc, idx, 0), 0).values
    run_start = torch.cummax(torch.where(new_run, idx, 0), 0).values
    prompt = members < 0
    # a unit's prompt ends where its first response starts (or at the unit's end): the prompt run's end
    prompt_end = torch.zeros(n, dtype=torch.long, device=docs.device)  # per doc start: last prompt index of that unit
    prompt_end.scatter_reduce_(0, doc_start[prompt], idx[prompt], reduce="amax", include_self=False)
    hi1 = torch.minimum(idx, prompt_end[doc_start])
    lo2 = torch.where(prompt, idx + 1, run_start)  # empty for prompt tokens
    return torch.stack([doc_start, hi1, lo2, idx], 1)


def shared_block_mask(row: PackedRow, device):
    """FlexAttention BlockMask of a shared-prompt row, built without compilation or an L x L mask:
    each query attends at most two key intervals (_attended_intervals), counted tile by tile
    (ksa.flex_attention.intervals_block_mask). Equal to create_block_mask's (tests/test_packing_buckets.py)."""
    docs, members = row.docs.to(device), row.members.to(device)
    length = docs.numel()
    n_tiles = -(-length // TILE)
    pad_docs = torch.cat([docs, docs.new_full((n_tiles * TILE - length,), -1)])
    pad_members = torch.cat([members, members.new_full((n_tiles * TILE - length,), -1)])
    return intervals_block_mask(_attended_intervals(docs, members), _shared_rule(pad_docs, pad_members), length)


def _varlen_kwargs(row: PackedRow, config, device) -> dict:
    """Sequence boundaries for flash-attention backends (precomputed, so compile needs no inference)."""
    if "flash" not in str(getattr(config, "_attn_implementation", "")):
        return {}
    lens = torch.tensor([p + r for _, p, r in row.spans])
    cu = torch.nn.functional.pad(lens.cumsum(0), (1, 0)).to(device=device, dtype=torch.int32)
    m = int(lens.max())
    return {"cu_seq_lens_q": cu, "cu_seq_lens_k": cu, "max_length_q": m, "max_length_k": m}


def _padded_hidden(model, row: PackedRow, device) -> torch.Tensor:
    """Final hidden states [L, H] in the packed layout, from one right-padded batch through the
    model's own forward (with its LM head swapped for the identity, so no full-vocab logits)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    seqs = [row.input_ids[0, s : s + p + r] for s, p, r in row.spans]
    ids = torch.nn.utils.rnn.pad_sequence(seqs, batch_first=True, padding_value=0).to(device)
    mask = torch.nn.utils.rnn.pad_sequence([torch.ones_like(x) for x in seqs], batch_first=True).to(device)
    head = base.get_output_embeddings()
    base.set_output_embeddings(torch.nn.Identity())
    try:
        hidden = base(input_ids=ids, attention_mask=mask, use_cache=False).logits
    finally:
        base.set_output_embeddings(head)
    return torch.cat([hidden[i, : x.numel()] for i, x in enumerate(seqs)])


def _ksa_units(row: PackedRow) -> list[tuple[int, list[int]]]:
    """(prompt length, [response lengths]) per unit of a shared-prompt row (pack_shared: the spans of
    one unit share its prompt's start; a `pack` row: one response per unit); checked to cover the row
    (padding tokens are not supported)."""
    units: list[tuple[int, list[int]]] = []
    starts: list[int] = []
    for s, p, r in row.spans:
        if not starts or starts[-1] != s:
            starts.append(s)
            units.append((p, []))
        units[-1][1].append(r)
    if sum(p + sum(rs) for p, rs in units) != row.input_ids.shape[1]:
        raise ValueError("a shared-prompt row for a KSA model needs at least one response per prompt and no pad_to")
    return units


def ksa_layout_padding(model, row: PackedRow) -> int:
    """Padding slots that bring a row's KSA shared layout (text and summary slots,
    ksa.shared.shared_length) to its bucket length: compiled layers and the compiled FlexAttention
    kernel then meet the few lengths `bucket_length` gives, as the full-attention rows do."""
    config = _base_and_head(model)[2]
    n = shared_length(_ksa_units(row), config.ksa_chunk, config.ksa_summaries)
    return bucket_length(n) - n


def _ksa_shared_hidden(model, row: PackedRow) -> torch.Tensor:
    """Final hidden states [L, H] of a shared-prompt row through a KSA model (ksa/shared.py), its
    layout padded by `row.layout_padding` slots."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return base.shared_prompt_hidden(row.input_ids[0].to(base.device), _ksa_units(row), pad=row.layout_padding,
                                     attention_call=kept_through_recompute)  # fmt: skip


def _chunk_logprobs(hidden: torch.Tensor, targets: torch.Tensor, head: torch.nn.Module, scale: float, softcap: float | None):
    """log p(target) and entropy [n] for hidden states [n, H]; the softmax runs in float32."""
    logits = head(hidden).float()
    if softcap:
        logits = torch.tanh(logits / softcap) * softcap
    logits = logits * scale
    logz = torch.logsumexp(logits, dim=-1)
    logp = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - logz
    probs = torch.softmax(logits, dim=-1)
    entropy = logz - (probs * logits).sum(-1)
    return logp, entropy


def packed_logprobs(
    model,
    row: PackedRow,
    *,
    chunk: int = 1024,
    temperature: float = 1.0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """Per-sequence response log-probs and entropies (lists of [R_i] float32 tensors) of one packed row.

    Gradients flow into the log-probs when grad is enabled; entropies are always detached.
    `temperature` divides the logits (match the sampler's temperature for exact ratios). A backward
    through a shared-prompt row's checkpointed layers needs `shared_attention` held until it is done:
    such callers hold it themselves and call `row_logprobs`.
    """
    with shared_attention(model, row):
        return row_logprobs(model, row, chunk=chunk, temperature=temperature)


def row_logprobs(
    model,
    row: PackedRow,
    *,
    chunk: int = 1024,
    temperature: float = 1.0,
) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """`packed_logprobs` for a caller that holds `shared_attention(model, row)` (a no-op for other rows)."""
    decoder, head, config = _base_and_head(model)
    device = next(model.parameters()).device
    if (row.members is not None and uses_ksa_layout(model)) or lays_out_every_row(model):
        hidden = _ksa_shared_hidden(model, row)
    elif row.members is not None:
        out = decoder(
            input_ids=row.input_ids.to(device), position_ids=row.position_ids.to(device), use_cache=False,
            golong_mask=shared_mask(row, device),
        )
        hidden = out.last_hidden_state[0]
    elif supports_packing(model):
        out = decoder(
            input_ids=row.input_ids.to(device), position_ids=row.position_ids.to(device), use_cache=False,
            **_varlen_kwargs(row, config, device),
        )
        hidden = out.last_hidden_state[0]  # [L, H]
    else:
        hidden = _padded_hidden(model, row, device)
    # response token 0 is predicted at the prompt's last token, token j > 0 at response token j - 1
    where = torch.cat([
        torch.cat([torch.tensor([s + p - 1]), torch.arange(a, a + r - 1)]) if r else torch.zeros(0, dtype=torch.long)
        for (s, p, r), a in zip(row.spans, row.response_at, strict=True)
    ]).to(device)  # fmt: skip
    targets = torch.cat([row.input_ids[0, a : a + r] for (_, _, r), a in zip(row.spans, row.response_at, strict=True)]).to(device)
    h = hidden.index_select(0, where)
    scale = 1.0 / (temperature if temperature and temperature > 0 else 1.0)
    scale /= float(getattr(config, "logits_scaling", 1.0) or 1.0)
    softcap = getattr(config, "final_logit_softcapping", None)
    logps, ents = [], []
    for a in range(0, h.shape[0], chunk):
        hc, tc = h[a : a + chunk], targets[a : a + chunk]
        if torch.is_grad_enabled() and hc.requires_grad:
            lp, en = checkpoint(_chunk_logprobs, hc, tc, head, scale, softcap, use_reentrant=False)
        else:
            lp, en = _chunk_logprobs(hc, tc, head, scale, softcap)
        logps.append(lp)
        ents.append(en.detach())
    logp = torch.cat(logps) if logps else h.new_zeros(0, dtype=torch.float32)
    ent = torch.cat(ents) if ents else h.new_zeros(0, dtype=torch.float32)
    sizes = [r for _, _, r in row.spans]
    return list(logp.split(sizes)), list(ent.split(sizes))


def pad_stack(values: Sequence[torch.Tensor], fill: float = 0.0) -> tuple[torch.Tensor, torch.Tensor]:
    """Right-pad 1-D tensors into [B, T] plus a bool mask of real entries."""
    t = max((v.numel() for v in values), default=0)
    out = values[0].new_full((len(values), t), fill) if values else torch.zeros(0, 0)
    mask = torch.zeros(len(values), t, dtype=torch.bool, device=out.device)
    for i, v in enumerate(values):
        out[i, : v.numel()] = v
        mask[i, : v.numel()] = True
    return out, mask
