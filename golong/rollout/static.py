"""golong's own rollout engine (`rollout.engine: static`): static K/V storage, CUDA graphs, continuous
batching, for full-attention and KSA policies alike. Named for what makes it fast: every tensor a
decode step touches is allocated once, with fixed shapes, so the step can be captured as a graph.

Why not transformers' `generate`: each decode step there re-enters Python for every module, grows
the KV cache by concatenation and launches hundreds of small kernels, so a 0.6B model after a 32K
prompt spends ~70 ms per step where reading weights + KV takes ~1 ms. This engine:
- keeps K/V in preallocated tensors per layer, sized for what a `generate` call needs (rows x
  longest prompt + new tokens, grown in buckets and kept), written in place at each row's position;
  with `kv_budget_gb` the row count is capped so the storage fits the budget;
- KSA policies (ksa_qwen3 / ksa_qwen2 / ksa_llama) keep a text ring of (W+1)*C slots plus a summary
  store in their windowed layers (ksa/static_cache.py), so their storage per row is a fraction of
  full attention's and the same budget admits more rows; a decode step feeds the chunk's summary
  slots as extra query columns whenever any row completes a chunk (a second graph per bucket, or, with
  ksa_summaries_every_step, in every step: one graph per bucket, rows without a chunk end discard them; the
  step's inputs and the summary q/k/v blend come from ksa/decode.py, as in the model's own cached
  decode); prompts are prefilled by the same layer loop, several per forward (below), each attended
  on its own KSA layout by the model's kernel (ksa/static_cache.py, PackedPrefill);
- runs its own layer loop over the model's HF modules (embed -> per layer: norm, q/k/v proj,
  q/k head norms (Qwen3), RoPE from the model's rotary_emb, cache write, attention, o_proj, residual,
  post-norm, MLP -> final norm -> lm_head), so one decode step is a fixed sequence of kernels that
  a CUDA graph can capture, one graph per (batch bucket, cache-length bucket, query columns) or,
  sharing prompts, (batch bucket, block width, prompt-length bucket, response-length bucket),
  captured on first use; weight updates copy into the same tensors, so graphs stay valid;
- full attention, `share_prefix` (the default): the G samples of a prompt run in a block of G
  consecutive slots; per layer the prompt's K/V is stored once per block (a prefix row) and each
  slot keeps only its response's K/V, and a decode step attends the block's prefix with the G rows'
  queries stacked against it (read once, not G times) and merges that with each row's own part by
  log-sum-exp (golong/rollout/prefix.py). By byte count, at 8K prompts, G=8 and 256 new tokens a
  step reads ~6x less K/V and ~G x less is stored, so a kv_budget_gb admits more rows. A block is
  admitted whole and freed whole: a finished row's slot idles until its group is done (another
  prompt's row could not use it without its own prefix, and the group's read is one prefix
  however many rows are live); a group wider than max_batch (or the budget) runs as several
  blocks, each with its prompt. `kv_tokens_read` counts each live block's prompt once plus each
  row's own entries, `kv_bytes_read` the bytes that reads (KSA ring layers: window and summaries
  only). KSA policies share the same way (ksa/static_shared.py): a block's prefix rows hold the
  prompt's text its responses can still see (all of it in full layers, the last window in
  ring layers) and the summaries of its whole chunks; each row its own text ring and summaries; one
  softmax over the four parts. share_prefix=False: each slot holds prompt + response;
- serves a fixed pool of slots (in blocks, above): a sequence that finishes (EOS or max_new_tokens)
  frees its slot (its block) for the next waiting one; the G samples of one prompt share one
  prefill (without share_prefix the prompt's K/V are copied from a live sibling's slot), the
  prompts admitted together are prefilled in packed forwards (up to prefill_chunk text tokens
  each; attention per prompt, the rest as GEMMs over the whole pack; full-attention and KSA
  policies alike; stats: prefill_batches, prefill_max_prompts, prefill_tokens), and live rows
  (blocks) are moved down to the lowest slots when that lets a smaller batch bucket run;
- samples on the device with a counter-based random stream keyed by (seed, prompt index, sample
  index, step) (golong/rollout/sampling.py): a sample's tokens do not depend on which other rows
  share its batch.
- looks one step ahead (`look_ahead`): unless a row reaches max_new_tokens at this step, each decode
  step is enqueued before the previous step's tokens are read, its token inputs taken from that
  step's sampled tokens on the device and the rest (positions, sampler steps) one further on the
  host; the tokens come back through pinned memory, so the device decodes while the host reads them
  and schedules (host work a step: ~0.3 ms on the 2-core CPU, a 0.6B / 8K decode step is ~3.7 ms on an
  H100). A row whose EOS is read after the next step was enqueued has that token dropped, and the
  engine reads that step too before it admits, compacts and goes on: a freed slot takes its next
  prompt one step later than without look-ahead. Same tokens as reading each step first
  (tests/test_rollout_look_ahead.py); not yet timed on a GPU.

Measured on one H200 (2026-11-28, Qwen3-0.6B shape, bf16, full attention, bench/engine_decode.py):
7.1 ms per decode step after a 32K prompt at batch 1 (transformers `generate`: 68.5 ms; HBM floor
1.0 ms), 5.6 ms after 8K. What is left is mostly launch-bound: ~60 small kernels per layer even
inside one graph. `compile_decode` (opt-in; full attention and KSA) runs each decode layer through one
torch.compile'd function (make_decode_layer: inductor, automatic dynamic shapes, fullgraph, the layer's weights
and K/V storage as inputs, K/V written in place; one compile per step shape and attention kind serves
every layer), before the graph captures it; on the CPU
inductor makes a layer 8-9 fused kernels + 9-11 matmuls (uncompiled: ~80-130 aten calls per layer incl.
views). Sampling runs inside the step's graph either way (one replay and one copy to the host a step). share_prefix has run on CPUs only
(bench/prefix_decode.py: hidden 256, 4 layers, 2 prompts of 2K, G=8, 64 new tokens, float32, one
thread: 18.5 -> 13.6 ms per step, K/V read per step 130 -> 18 MiB, stored 132 -> 32 MiB).

Supported: Qwen3 / Qwen2 / Llama architectures and their KSA forms (`unsupported_reason` says why
another model is not). For any other model (and LoRA-wrapped peft models) the engine registry
(golong/rollout/__init__.py) builds the transformers decode loop instead (`LoopEngine`,
rollout/loop.py) and logs the reason; `StaticEngine` itself refuses such a model.
"""

from __future__ import annotations

import time
import warnings
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from golong.rollout.base import Completion, RolloutEngine, SamplingParams, copy_weights_into
from golong.rollout.prefix import cascade_attention, fit_budget, length_bias
from golong.rollout.sampling import eos_ids, noise_columns, row_key, sample_rows
from ksa import completes_chunk, is_ksa, mix_summary, step_inputs
from ksa.pieces import repeat_heads
from ksa.static_cache import PackedPrefill, StaticKSALayer, write_slots
from ksa.static_cache import decode_attention as ksa_decode_attention
from ksa.static_shared import SharedKSALayer, slot_counts
from ksa.static_shared import decode_attention as shared_ksa_decode_attention

SUPPORTED = ("qwen3", "qwen2", "llama")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


# --- buckets and small helpers --------------------------------------------------------------------
def batch_bucket(n: int, max_batch: int) -> int:
    """The smallest bucket >= n (buckets 1, 2, 4, ..., capped at max_batch)."""
    return min(next(b for b in (*BATCH_BUCKETS, 1 << 30) if b >= n), max_batch)


def length_bucket(n: int, max_len: int) -> int:
    """Round n up to a multiple of max(256, pow2(n)/8): padding is under a quarter of n just above a
    power of two (8,193 -> 10,240) and under an eighth near the next one, and a sequence growing from 1K
    to 32K needs ~40 graphs, not one per token."""
    step = max(256, (1 << max(n - 1, 1).bit_length()) // 8)
    return min(-(-n // step) * step, max_len)


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin; x [B, H, T, D], cos/sin [B, T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def causal_to_last_key(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scale: float) -> torch.Tensor:
    """Attention of a later prefill chunk, q [B, H, C, D] the last C positions of the keys so far k / v
    [B, H, N, D] (heads repeated): query i sees keys up to N - C + i. On CUDA in half precision, flash's
    causal mask, which is aligned that way when there are more keys than queries: no C x N mask is built or
    read, and no cuDNN plan is built per chunk length. Elsewhere SDPA under that mask."""
    c, n = q.shape[2], k.shape[2]
    if q.is_cuda and q.dtype in (torch.bfloat16, torch.float16) and q.shape[-1] % 8 == 0 and q.shape[-1] <= 256:
        return torch.ops.aten._scaled_dot_product_flash_attention(q, k, v, 0.0, True, False, scale=scale)[0]
    allowed = torch.ones(c, n, dtype=torch.bool, device=q.device).tril(n - c)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=allowed, scale=scale)


def rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm, w * (x / sqrt(mean(x^2) + eps)) computed in fp32 and rounded to x's dtype
    before the weight (as Qwen / Llama do), with torch's rms_norm op: fewer kernels per decode step."""
    return rms(x, norm.weight, norm.variance_epsilon)


def rms(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """rms_norm with the weight and eps given as such: w * (x / sqrt(mean(x^2) + eps)) (fp32 inside)."""
    return weight * F.rms_norm(x.float(), (x.shape[-1],), eps=eps).to(x.dtype)


# --- compile_decode: one decode layer as one torch.compile'd function ---------------------------------
RECOMPILES = 4096  # dynamo's per-function compile limit while decoding: one entry per step shape (bucket)


def layer_weights(layer: Any) -> tuple[torch.Tensor | None, ...]:
    """The tensors a decoder layer's decode step reads, in decode_layer's order: input norm w, (w, b)
    of q / k / v, q / k head-norm w (Qwen3; else None), (w, b) of o_proj, post norm w, (w, b) of
    gate / up / down. They are the model's own parameters, passed as inputs on every call (never baked
    into the compiled code), so weight updates copied into them are seen."""
    a, m = layer.self_attn, layer.mlp
    pairs = [(mod.weight, mod.bias) for mod in (a.q_proj, a.k_proj, a.v_proj, a.o_proj, m.gate_proj, m.up_proj, m.down_proj)]
    head_norms = [getattr(getattr(a, name, None), "weight", None) for name in ("q_norm", "k_norm")]
    return (layer.input_layernorm.weight, *pairs[0], *pairs[1], *pairs[2], *head_norms, *pairs[3],
            layer.post_attention_layernorm.weight, *pairs[4], *pairs[5], *pairs[6])


def fused_layer_weights(layer: Any, out: tuple | None = None) -> tuple:
    """layer_weights with q / k / v stacked into one weight [q + k + v rows, hidden] (and bias) in the
    q slots, gate / up into one [2 x intermediate, hidden] in the gate slots, the k / v / up slots
    None: a decode step then runs 4 GEMMs a layer instead of 7, each with more output columns (more
    of the GPU busy at a step's few rows). The stacks are copies, written into `out` (an earlier
    result, so captured CUDA graphs keep their addresses) when given."""
    w = list(layer_weights(layer))
    with torch.no_grad():
        for into, parts in ((1, (1, 3, 5)), (2, (2, 4, 6)), (12, (12, 14)), (13, (13, 15))):  # layer_weights' order
            if w[parts[0]] is not None:
                tensors = [w[i] for i in parts]
                w[into] = torch.cat(tensors) if out is None else torch.cat(tensors, out=out[into])
            for i in parts[1:]:
                w[i] = None
    return tuple(w)


def decode_attention(qg: torch.Tensor, kc: torch.Tensor, vc: torch.Tensor, attn: tuple, scale: float,
                     kernel: str = "torch") -> torch.Tensor:
    """Decode attention of qg [B, Hkv, G, D] over rows 0..B-1 of kc / vc [rows, Hkv, cap, D]; [B, Hkv, G, D].
    attn = (bias [B, span],): softmax(q k^T * scale + bias) v over cache positions < span (per-row
    storage); or (k_prefix, v_prefix, prefix_bias [blocks, P], own_bias [B, R]): cascade_attention
    over prefix rows 0..blocks-1 (first P positions) and own rows (first R) (share_prefix).
    kernel: "torch" (matmul, softmax, matmul) or "triton" (ksa/triton_decode.py, one split-K kernel
    per key part)."""
    b = qg.shape[0]
    if len(attn) == 1:
        (bias,) = attn
        span = bias.shape[-1]
        if kernel == "triton":
            from ksa.triton_decode import decode_partials, merge_partials

            o, lse = decode_partials(qg, kc[:b, :, :span], vc[:b, :, :span], bias[:, None, None, :], scale, qg.shape[2], 1)
            return merge_partials(o, lse).to(qg.dtype)
        scores = torch.matmul(qg, kc[:b, :, :span].transpose(-1, -2)).float() * scale + bias[:, None, None]
        return torch.matmul(torch.softmax(scores, -1).to(vc.dtype), vc[:b, :, :span])
    kp, vp, prefix_bias, own_bias = attn
    (blocks, p), r = prefix_bias.shape, own_bias.shape[1]
    return cascade_attention(qg, kp[:blocks, :, :p], vp[:blocks, :, :p], prefix_bias,
                             kc[:b, :, :r], vc[:b, :, :r], own_bias, scale, kernel)


def summary_weights(layer: Any, n_sum: int, mix: float) -> tuple | None:
    """What a KSA layer's summary columns use beside the shared weights (None when they use only
    those: no summary column this step, or no summary norm / projections, or mix 0): the summary
    input-norm weight (or None), then (w, b) of summary q / k / v projections (or None each)."""
    norm = getattr(layer, "summary_input_layernorm", None)
    a = layer.self_attn
    projs = [getattr(a, f"summary_{n}_proj", None) for n in "qkv"]
    if not n_sum or (norm is None and (mix == 0.0 or all(p is None for p in projs))):
        return None
    pairs = [(None, None) if p is None or mix == 0.0 else (p.weight, p.bias) for p in projs]
    return (None if norm is None else norm.weight, *pairs[0], *pairs[1], *pairs[2])


def full_step_attention(q, k, v, store, scale):
    """Full-attention decode for make_decode_layer: store = (kc, vc, at, attn, kernel); the row's K/V
    written at own index at[row] of kc / vc, then decode_attention; [B, Hq, 1, D]."""
    kc, vc, at, attn, kernel = store
    b, kv_heads, d = q.shape[0], k.shape[1], q.shape[-1]
    write_slots(kc, at, k[:, :, 0])
    write_slots(vc, at, v[:, :, 0])
    return decode_attention(q.reshape(b, kv_heads, -1, d), kc, vc, attn, scale, kernel).reshape(q.shape)


def ksa_step_attention(q, k, v, store, scale):
    """KSA decode for make_decode_layer: store = (pos, storage, biases, layout, kernel) of ksa.static_cache."""
    pos, storage, biases, layout, kernel = store
    return ksa_decode_attention(q, k, v, pos, storage, biases, scale, layout, kernel)


def shared_ksa_step_attention(q, k, v, store, scale):
    """KSA decode on the shared-prompt layout: store = (pos, prompt lengths, storage, biases, layout)
    of ksa.static_shared, and the kernel."""
    pos, plen, storage, biases, layout, kernel = store
    return shared_ksa_decode_attention(q, k, v, pos, plen, storage, biases, scale, layout, kernel)


def make_decode_layer(heads: int, kv_heads: int, head_dim: int, eps: float, head_eps: float, scale: float, act: Any,
                      mix: float = 1.0):
    """decode_layer(h, cos, sin, w, sw, attend, store) -> h': one decoder layer for one decode step, the
    static engine's layer loop body written over plain tensors so that torch.compile can fuse it:
    h [B, n, hidden] (column 0 the text token; for a KSA step with summaries, columns 1.. its chunk's
    summary slots), cos / sin [B, n, D], w = layer_weights(layer), sw = summary_weights(...) (or None),
    attend(q, k, v, store, scale) -> [B, H, n, D] writes the step's K/V and attends
    (full_step_attention or ksa_step_attention; store = its storage, masks and integers).
    x = rms(h) (summary columns: the summary norm where there is one); q/k/v = proj(x) (then the head
    norm), summary columns mix * summary_proj + (1 - mix) * proj; h' = h + o_proj(attend(rope(q),
    rope(k), v)); h'' = h' + down(act(gate(x')) * up(x')), x' = rms(h') (every norm: w * x /
    sqrt(mean(x^2) + eps) in fp32). Shapes and constants are alike across layers, so one compiled
    function serves all of them (compiled per attention kind and shape: StaticEngine._compile_layer)."""

    def decode_layer(h, cos, sin, w, sw, attend, store):
        n_in, qw, qb, kw, kb, vw, vb, qn, kn, ow, ob, n_post, gw, gb, uw, ub, dw, db = w
        b, t = h.shape[0], h.shape[1]
        n_sum = t - 1 if sw is not None else 0
        x = rms(h, n_in, eps)
        if n_sum and sw[0] is not None:
            x = torch.cat([x[:, :-n_sum], rms(h[:, -n_sum:], sw[0], eps)], 1)
        if kw is None:  # q / k / v in one weight (fused_layer_weights): one GEMM, its output split
            qx, kx, vx = F.linear(x, qw, qb).split([heads * head_dim, kv_heads * head_dim, kv_heads * head_dim], -1)
        else:
            qx, kx, vx = F.linear(x, qw, qb), F.linear(x, kw, kb), F.linear(x, vw, vb)

        def split_heads(y, norm):  # [B, n, X] -> [B, n, X / D, D], then the head norm (if any)
            y = y.view(b, y.shape[1], -1, head_dim)
            return y if norm is None else rms(y, norm, head_eps)

        def project(out, norm, extra):
            out = split_heads(out, norm)
            if not n_sum or extra[0] is None:
                return out
            summary = split_heads(F.linear(x[:, -n_sum:], *extra), norm)
            return torch.cat([out[:, :-n_sum], mix_summary(summary, out[:, -n_sum:], mix)], 1)

        none = (None, None)
        q = rope(project(qx, qn, sw[1:3] if n_sum else none).transpose(1, 2), cos, sin)  # [B, H, n, D]
        k = rope(project(kx, kn, sw[3:5] if n_sum else none).transpose(1, 2), cos, sin)  # [B, Hkv, n, D]
        v = project(vx, None, sw[5:7] if n_sum else none).transpose(1, 2)
        o = attend(q, k, v, store, scale)
        h = h + F.linear(o.transpose(1, 2).reshape(b, t, -1), ow, ob)
        x = rms(h, n_post, eps)
        if uw is None:  # gate / up in one weight (fused_layer_weights)
            gate, up = F.linear(x, gw, gb).chunk(2, -1)
        else:
            gate, up = F.linear(x, gw, gb), F.linear(x, uw, ub)
        return h + F.linear(act(gate) * up, dw, db)

    return decode_layer


def layer_biases(layer: Any, *args: Any) -> tuple[torch.Tensor, ...]:
    """layer.biases(*args): the additive masks of one KSA layer kind for a decode step, as a function of
    the layer (StaticKSALayer or SharedKSALayer), so that torch.compile can take it whole."""
    return layer.biases(*args)


def check_decode_settings(decode_kernel: str, fuse_projections: bool, compile_decode: bool) -> None:
    """A ValueError naming the setting to change, for a decode kernel that does not exist or stacked
    projections without the compiled decode layers (the only ones that read them)."""
    if decode_kernel not in ("torch", "triton"):
        raise ValueError(f"rollout.decode_kernel={decode_kernel!r}: use 'torch' or 'triton'")
    if fuse_projections and not compile_decode:
        raise ValueError("rollout.fuse_projections needs rollout.compile_decode=true (the stacked weights are "
                         "read by the compiled decode layer only)")


def unsupported_reason(model: Any) -> str | None:
    """Why `StaticEngine` cannot run this model, or None when it can."""
    if hasattr(model, "peft_config"):
        return "a LoRA (peft) model: merge the adapters first"
    cfg = model.config
    if cfg.model_type.removeprefix("ksa_") not in SUPPORTED:
        return f"model_type {cfg.model_type!r} (static engine: {', '.join(SUPPORTED)} and their KSA forms)"
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or []):
        return "sliding-window layers"
    if (getattr(cfg, "rope_scaling", None) or {}).get("rope_type", "default") not in ("default", "linear", "llama3"):
        return "dynamic RoPE scaling"
    norm = model.model.layers[0].input_layernorm
    if not hasattr(norm, "variance_epsilon") or "Gemma" in type(norm).__name__:
        return f"norm {type(norm).__name__} (static engine: Qwen / Llama RMSNorm)"
    return None


@dataclass
class _Seq:
    prompt: int
    sample: int
    slot: int
    length: int  # tokens in the cache (prompt + fed responses)
    key: int
    prefix: int = 0  # of those, tokens in its block's prefix storage (share_prefix: the prompt), not its own
    tokens: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    finish: str = "length"


@dataclass
class _Graph:
    graph: Any
    inputs: tuple[torch.Tensor, ...]  # (tok, pos) or, sharing prompts, (tok, pos, prefix length); then (keys, steps)
    outputs: tuple[torch.Tensor, torch.Tensor]  # (sampled token, its log p) per row


@dataclass
class _Issued:
    """A decode step enqueued on the device and not read yet: its rows, their sampled tokens and log p
    on the device (the graph's outputs: the next step's token inputs) and their copies on the host,
    readable once `ready` has passed (None: already there)."""
    live: list[_Seq]
    columns: int  # query columns a row (KSA summary steps: more than 1)
    tok: torch.Tensor
    host: tuple[torch.Tensor, torch.Tensor]
    ready: Any = None

    def read(self) -> tuple[list[int], list[float]]:
        if self.ready is not None:
            self.ready.synchronize()  # this step's copies only, not the step enqueued after it
        return self.host[0].tolist(), self.host[1].tolist()


class StaticEngine(RolloutEngine):
    """Static-cache, CUDA-graph, continuous-batching generation (see the module docstring)."""

    # Enqueue each decode step before reading the last one's tokens (the device decodes while the host
    # reads and schedules); False: read each step before the next (the same tokens; tests compare the two)
    look_ahead = True

    # Its own layer loop over the model's submodules: a decoder layer's forward (which the learner may
    # have compiled) never runs here, so a shared model's decode needs no force_eager stance, and
    # compile_decode's own compiled functions run (golong/cluster.py).
    runs_own_layers = True

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 32,
        max_len: int | None = None,
        device: str | None = None,
        cuda_graphs: bool = True,
        prefill_chunk: int = 8192,
        kv_budget_gb: float | None = None,
        share_prefix: bool = True,
        compile_decode: bool = False,
        decode_kernel: str = "torch",
        fuse_projections: bool = False,
        ksa_summaries_every_step: bool = False,
    ):
        """`max_batch` sequences decode at once at most; `max_len` (default: the model's
        max_position_embeddings) bounds prompt + response tokens.
        K/V storage is allocated for what a `generate` call needs (rows, longest prompt + new tokens)
        and kept for later calls; with `kv_budget_gb` the rows are also capped so that storage fits
        the budget (a KSA policy's ring layers need less per row, so more of its sequences run).
        `share_prefix`: each group's prompt K/V is stored once and read once per step for its G rows
        (golong/rollout/prefix.py; KSA policies ksa/static_shared.py); False = every row holds its
        own copy of the prompt.
        `compile_decode`: each decode layer runs through one torch.compile'd function
        (make_decode_layer; inductor, no freezing) so its elementwise ops fuse; the CUDA graph then
        captures the compiled kernels.
        `decode_kernel`: "torch" (decode attention as matmul, softmax, matmul) or "triton" (one split-K
        kernel per key part, ksa/triton_decode.py: K/V read once, scores kept on chip; needs CUDA, on
        a CPU it runs in Triton's interpreter, for tests).
        `fuse_projections` (with compile_decode): the compiled layers read q / k / v and gate / up
        stacked into one weight each (fused_layer_weights; copies refreshed from the parameters at
        every `generate`, ~0.7x the decoder weights' memory more) and run 4 GEMMs a layer instead of 7.
        `ksa_summaries_every_step` (KSA policies): every decode step carries the summary columns, so
        steps have one shape (half the compiled variants and graphs); rows that complete no chunk
        discard theirs, as they do in any step where another row completes one.
        A model it cannot run (`unsupported_reason`) is a ValueError naming the reason."""
        problem = unsupported_reason(model)
        if problem is not None:
            raise ValueError(f"the static engine cannot run {problem}; use rollout.engine=loop")
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)
        max_len = max_len or getattr(model.config, "max_position_embeddings", None) or 1 << 17
        self.max_batch, self.max_len, self.prefill_chunk = max_batch, max_len, prefill_chunk
        self.kv_budget = None if kv_budget_gb is None else int(kv_budget_gb * 1024**3)
        self.eos = eos_ids(model, tokenizer)
        self.stats: dict[str, float] = {}
        cfg = model.config
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        self.kv_heads = cfg.num_key_value_heads
        self.heads = cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.dtype = next(model.parameters()).dtype
        self.ksa = is_ksa(cfg)
        self.mix = float(getattr(cfg, "ksa_mix_coeff", 1.0))
        self.share = share_prefix
        self.compile_decode = compile_decode
        check_decode_settings(decode_kernel, fuse_projections, compile_decode)
        self.decode_kernel, self.fuse_projections = decode_kernel, fuse_projections
        self.summaries_every_step = ksa_summaries_every_step
        self._stacked: list[tuple] | None = None  # fuse_projections: fused_layer_weights per layer
        if self.compile_decode:
            self._fused_layer = self._compile_layer()
        # compile_decode also compiles a KSA step's masks (eager: ~65-80 one-kernel ops per layer kind) and the
        # sampling (eager: ~20 kernels over [B, vocab] int64 for the noise hash and Gumbel-max)
        self._biases = torch.compile(layer_biases, dynamic=None, fullgraph=True) if compile_decode else layer_biases
        self._sample = torch.compile(sample_rows, dynamic=None, fullgraph=True) if compile_decode else sample_rows
        self._noise_columns: torch.Tensor | None = None  # noise_columns(vocab) on the device
        self.rows = self.cap_len = 0  # allocated storage: rows x text tokens (sharing: response tokens)
        self.k_cache: list[torch.Tensor] = []  # full attention: [rows, kv_heads, cap_len, head_dim] per layer
        self.v_cache: list[torch.Tensor] = []
        self.blocks = self.prefix_cap = 0  # sharing: prompt storage, one row per block of slots
        self.k_prefix: list[torch.Tensor] = []  # [blocks, kv_heads, prefix_cap, head_dim] per layer
        self.v_prefix: list[torch.Tensor] = []
        self.ksa_layers: list[Any] = []  # KSA: ksa.static_cache.StaticKSALayer per layer
        self._graphs: dict[tuple, _Graph] = {}  # (step shape, sampler settings) -> graph
        self._pool = None

    # --- memory ------------------------------------------------------------------------------
    def row_bytes(self, length: int) -> int:
        """K/V bytes one row of storage for `length` text tokens takes (golong/rollout/kvmem.py)."""
        from golong.rollout.kvmem import kv_bytes_per_sequence

        return kv_bytes_per_sequence(self.model.config, length, torch.empty((), dtype=self.dtype).element_size())

    def _ensure_cache(self, rows: int, length: int) -> None:
        """Storage for at least `rows` rows of `length` tokens (grown in buckets; graphs are dropped
        when it is re-allocated, since they point at the old tensors)."""
        length = min(self.max_len, max(length_bucket(length, self.max_len), self.cap_len))
        rows = min(self.max_batch, max(batch_bucket(rows, self.max_batch), self.rows))
        if self.kv_budget is not None:
            fit = self.kv_budget // self.row_bytes(length)
            if fit < 1:
                raise ValueError(
                    f"rollout.kv_budget_gb={self.kv_budget / 1024**3:g} holds no sequence of {length} tokens "
                    f"(one needs {self.row_bytes(length) / 1024**3:.3g} GiB); raise the budget or shorten prompts"
                )
            rows = min(rows, fit)
        if rows <= self.rows and length <= self.cap_len:
            return
        self._drop_storage()
        self.rows, self.cap_len = rows, length
        cfg = self.model.config
        if self.ksa:
            self.ksa_layers = [
                StaticKSALayer(rows, self.kv_heads, self.head_dim, length, window=w, chunk=cfg.ksa_chunk,
                               summaries=cfg.ksa_summaries, visible=cfg.ksa_summaries_visible,
                               dtype=self.dtype, device=self.device)
                for w in cfg.ksa_windows
            ]
            return
        self.k_cache, self.v_cache = self._kv_rows(rows, length)

    def _ensure_shared(self, prompts: int, n: int, prompt_len: int, new: int) -> int:
        """share_prefix storage for `prompts` groups of `n` rows: per layer a prefix row per block of
        slots (length_bucket(prompt_len) tokens) and an own row per slot (length_bucket(new) response
        tokens), grown in buckets and kept, like _ensure_cache. Returns the block width: n, or fewer
        where max_batch or kv_budget_gb cannot hold n rows (a group then runs as several blocks, each
        with its own copy of the prompt). With a budget, blocks * prefix row + rows * own row fits it."""
        width = max(1, min(n, self.max_batch))
        plen = min(self.max_len, max(length_bucket(prompt_len, self.max_len), self.prefix_cap))
        olen = min(self.max_len, max(length_bucket(new, self.max_len), self.cap_len))
        most = self.max_batch // width
        blocks = max(batch_bucket(min(prompts * -(-n // width), most), most), self.blocks)
        rows = min(self.max_batch, max(blocks * width, self.rows))
        if self.kv_budget is not None:
            prefix_bytes, own_bytes = self._shared_bytes(plen, olen)
            width, blocks, rows = fit_budget(self.kv_budget, width, blocks, rows, prefix_bytes, own_bytes)
        if blocks > self.blocks or rows > self.rows or plen > self.prefix_cap or olen > self.cap_len:
            self._drop_storage()
            self.rows, self.cap_len, self.blocks, self.prefix_cap = rows, olen, blocks, plen
            if self.ksa:
                cfg = self.model.config
                self.ksa_layers = [
                    SharedKSALayer(blocks, rows, self.kv_heads, self.head_dim, plen, olen, window=w, chunk=cfg.ksa_chunk,
                                   summaries=cfg.ksa_summaries, visible=cfg.ksa_summaries_visible,
                                   dtype=self.dtype, device=self.device)
                    for w in cfg.ksa_windows
                ]
            else:
                self.k_cache, self.v_cache = self._kv_rows(rows, olen)
                self.k_prefix, self.v_prefix = self._kv_rows(blocks, plen)
        return min(width, self.rows)

    def _shared_bytes(self, plen: int, olen: int) -> tuple[int, int]:
        """K/V bytes of one prefix row (a prompt of plen tokens) and one own row (olen response
        tokens) on the shared layout; KSA layers count their own slots (ksa.static_shared.slot_counts)."""
        if not self.ksa:
            return self.row_bytes(plen), self.row_bytes(olen)
        cfg = self.model.config
        entry = 2 * self.kv_heads * self.head_dim * torch.empty((), dtype=self.dtype).element_size()
        prefix = own = 0
        for w in cfg.ksa_windows:
            C, S = cfg.ksa_chunk, cfg.ksa_summaries
            pt, ps, ot, os_ = slot_counts(w * C >= plen + olen, (w + 1) * C, C, S, plen, olen)
            prefix, own = prefix + (pt + ps) * entry, own + (ot + os_) * entry
        return prefix, own

    def _kv_rows(self, rows: int, length: int) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Zeroed K and V storage [rows, kv_heads, length, head_dim], one tensor per layer each."""
        shape = (rows, self.kv_heads, length, self.head_dim)
        layers = range(self.model.config.num_hidden_layers)
        return ([torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in layers],
                [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in layers])

    def _drop_storage(self) -> None:
        """Forget graphs and all K/V storage (graphs point at the storage tensors)."""
        self._graphs.clear()
        self.k_cache, self.v_cache, self.ksa_layers, self.k_prefix, self.v_prefix = [], [], [], [], []
        self.rows = self.cap_len = self.blocks = self.prefix_cap = 0
        if self.device.type == "cuda":
            torch.cuda.empty_cache()

    @property
    def prompt_k(self) -> list[torch.Tensor]:
        """Where prefills write prompt K per layer: row = a block's prefix row when sharing, else a slot."""
        return self.k_prefix if self.share else self.k_cache

    @property
    def prompt_v(self) -> list[torch.Tensor]:
        return self.v_prefix if self.share else self.v_cache

    def _read_bytes(self, live: list[_Seq], width: int) -> int:
        """K/V bytes a decode step over `live` must read, all layers (golong/rollout/kvmem.read_entries:
        a block's prompt once, each row's own part; KSA ring layers only their window and summaries)."""
        from golong.rollout.kvmem import entry_bytes, read_entries

        blocks: dict[int, tuple[int, list[int]]] = {}  # rows holding their whole prompt together (key -1)
        for s in live:
            blocks.setdefault(s.slot // width if s.prefix else -1, (s.prefix, []))[1].append(s.length)
        entries = sum(read_entries(self.model.config, p, lengths) for p, lengths in blocks.values())
        return entries * entry_bytes(self.model.config, self.dtype.itemsize)

    def cache_bytes(self) -> int:
        """Bytes of all K/V storage: rows (and, sharing prompts, prefix rows; or KSA layers)."""
        tensors = self.k_cache + self.v_cache + self.k_prefix + self.v_prefix
        return sum(t.numel() * t.element_size() for t in tensors) + sum(layer.nbytes() for layer in self.ksa_layers)

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        """Copy into the existing parameter tensors (captured graphs keep pointing at them)."""
        copy_weights_into(self.model, state_dict)

    def free_cache(self) -> None:
        """Drop graphs, the K/V storage and fuse_projections' stacked weight copies on an accelerator
        (re-made by the next `generate`), keep the model: for an engine sharing it with a colocated learner."""
        if self.device.type == "cpu":
            return
        self._drop_storage()
        self._pool = None
        self._stacked = None

    def sleep(self) -> None:
        """Drop graphs and the KV cache, park the weights on the CPU (graphs are re-captured on wake)."""
        if self.device.type == "cpu":
            return
        self.free_cache()
        self.model.to("cpu")
        torch.cuda.empty_cache()

    def wake(self) -> None:
        if self.device.type != "cpu":
            self.model.to(self.device)

    def _compile_layer(self):
        """make_decode_layer for this model, through torch.compile (inductor, default mode: the engine
        captures its own CUDA graphs; fullgraph). dynamic=None (automatic): the first shape compiles
        static, a shape that differs recompiles with the differing sizes symbolic, which then serve
        every later bucket (CPU, tiny KSA model, 1,400 new tokens crossing 6 span buckets: 13 compiles
        in 55 s instead of 26 in 74 s with dynamic=False, steps as fast; dynamic=True: 11 in 227 s)."""
        import torch._inductor.config as inductor_config

        if inductor_config.freezing:
            raise ValueError("rollout.compile_decode needs inductor freezing off (it would bake the weights in); "
                             "unset TORCHINDUCTOR_FREEZING")
        layer = self.model.model.layers[0]
        head_norm = getattr(layer.self_attn, "q_norm", None)
        eps = layer.input_layernorm.variance_epsilon
        fn = make_decode_layer(self.heads, self.kv_heads, self.head_dim, eps, getattr(head_norm, "variance_epsilon", eps),
                               layer.self_attn.scaling, layer.mlp.act_fn, self.mix)
        return torch.compile(fn, dynamic=None, fullgraph=True)

    def _fused_decode(self, h: torch.Tensor, positions: torch.Tensor, attention) -> torch.Tensor:
        """compile_decode's step: h [B, n, hidden] (embedded step inputs) at positions [B, n]: RoPE
        tables, each layer through the compiled decode_layer with attention(i) = (attend, store) of
        layer i (make_decode_layer), final norm, lm_head on column 0 (the text token); logits [B, V]."""
        inner = self.model.model
        n_sum = h.shape[1] - 1
        # Detached: a checkpointed policy's embedding output requires grad even under no_grad
        # (transformers' enable_input_require_grads hook), and the compiled layer guards on it, so the
        # first layer compiled a second variant of every step shape (H100 and CPU, 2026-12-05).
        h = h.detach()
        cos, sin = inner.rotary_emb(h, positions)
        with torch._dynamo.config.patch(recompile_limit=RECOMPILES, accumulated_recompile_limit=RECOMPILES):
            for i, layer in enumerate(inner.layers):
                w = self._stacked[i] if self._stacked else layer_weights(layer)
                h = self._fused_layer(h, cos, sin, w, summary_weights(layer, n_sum, self.mix),
                                      *attention(i))
        return self._logits(rms_norm(inner.norm, h)[:, 0])

    def _full_attention(self, at: torch.Tensor, attn) -> Any:
        """attention(i) under full attention: K/V written at own index at [B]; attn(i) = layer i's
        decode_attention inputs."""
        return lambda i: (full_step_attention, (self.k_cache[i], self.v_cache[i], at, attn(i), self.decode_kernel))

    def _decode_layers(self, h: torch.Tensor, positions: torch.Tensor, attention) -> torch.Tensor:
        """Logits [B, V] of column 0 (the text token) after the decoder layers, where attention(i) =
        (step attention function, its store) of layer i: through the compiled decode layer
        (compile_decode) or the model's modules layer by layer."""
        if self.compile_decode:
            return self._fused_decode(h, positions, attention)

        def attend(i, q, k, v, scale):
            fn, store = attention(i)
            return fn(q, k, v, store, scale)

        return self._logits(self._layers(h, positions, attend, n_sum=h.shape[1] - 1)[:, 0])

    # --- the model, layer by layer -----------------------------------------------------------------
    def _embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.model.embed_tokens(ids)

    def _layers(self, h: torch.Tensor, pos: torch.Tensor, attend, n_sum: int = 0) -> torch.Tensor:
        """Hidden states after the final norm; h [B, T, D] input hidden states, pos [B, T]; attend(i,
        q, k, v, scale) -> [B, H, T, D]. With n_sum > 0 (KSA decode, inputs from ksa.step_inputs) the
        last n_sum columns are summary slots: the summary norm / projections run there where the
        model has them."""
        inner = self.model.model
        b = h.shape[0]
        cos, sin = inner.rotary_emb(h, pos)
        for i, layer in enumerate(inner.layers):
            a = layer.self_attn
            x = rms_norm(layer.input_layernorm, h)
            if n_sum and hasattr(layer, "summary_input_layernorm"):
                x = torch.cat([x[:, :-n_sum], rms_norm(layer.summary_input_layernorm, h[:, -n_sum:])], 1)
            q, k, v = (self._project(a, name, x, n_sum) for name in "qkv")
            q = rope(q.transpose(1, 2), cos, sin)
            k = rope(k.transpose(1, 2), cos, sin)
            o = attend(i, q, k, v.transpose(1, 2), a.scaling)
            h = h + a.o_proj(o.transpose(1, 2).reshape(b, o.shape[2], -1))
            h = h + layer.mlp(rms_norm(layer.post_attention_layernorm, h))
        return rms_norm(inner.norm, h)

    def _project(self, attn: Any, name: str, x: torch.Tensor, n_sum: int) -> torch.Tensor:
        """{name}_proj (then the head norm, Qwen3 q/k) -> [B, T, heads, D]. KSA summary columns use
        m * summary_proj + (1 - m) * shared proj, each after the head norm, m = ksa_mix_coeff."""
        norm = getattr(attn, f"{name}_norm", None)

        def run(linear: Any, inp: torch.Tensor) -> torch.Tensor:
            y = linear(inp).view(*inp.shape[:2], -1, self.head_dim)
            return rms_norm(norm, y) if norm is not None else y

        out = run(getattr(attn, f"{name}_proj"), x)
        extra = getattr(attn, f"summary_{name}_proj", None)
        if not n_sum or extra is None or self.mix == 0.0:
            return out
        summ = mix_summary(run(extra, x[:, -n_sum:]), out[:, -n_sum:], self.mix)
        return torch.cat([out[:, :-n_sum], summ], 1)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(h).float()

    def _prefill_many(self, prompts: list[list[int]], slots: list[int], stats: dict) -> list[torch.Tensor]:
        """Prefill prompts into their slots; next-token logits [V] of each. Prompts go through the layers
        packed together, up to `prefill_chunk` text tokens per forward (_prefill_packed, or
        _prefill_ksa for a KSA policy). A longer prompt goes alone: in chunks under full attention
        (_prefill), in one forward of its own under KSA (as the model's own forward runs it)."""
        out: dict[int, torch.Tensor] = {}
        pack: list[int] = []

        def flush() -> None:
            if not pack:
                return
            group, where = [prompts[i] for i in pack], [slots[i] for i in pack]
            if self.ksa:
                logits = self._prefill_ksa(group, where)
            elif len(group[0]) > self.prefill_chunk:  # alone (see the loop below), in chunks
                logits = [self._prefill(group[0], where[0])]
            else:
                logits = self._prefill_packed(group, where)
            out.update(zip(pack, logits, strict=True))
            stats["prefill_batches"] += 1
            stats["prefill_max_prompts"] = max(stats["prefill_max_prompts"], len(pack))
            pack.clear()

        for i, prompt in enumerate(prompts):
            stats["prefill_tokens"] += len(prompt)
            if sum(len(prompts[k]) for k in pack) + len(prompt) > self.prefill_chunk:
                flush()
            pack.append(i)
        flush()
        return [out[i] for i in range(len(prompts))]

    def _prefill_packed(self, prompts: list[list[int]], slots: list[int]) -> list[torch.Tensor]:
        """Prompts laid end to end in one row, each at its own positions 0..len-1: embeddings, norms,
        projections and MLP run over all their tokens in one pass (larger GEMMs, fewer launches: what a
        batch of short prompts gains), attention runs per prompt (causal SDPA on its slice, no mask to
        build, no padding), and each prompt's K/V goes into its slot. Logits of each prompt's last token."""
        ends = [0]
        for prompt in prompts:
            ends.append(ends[-1] + len(prompt))
        ids = torch.tensor([[t for prompt in prompts for t in prompt]], device=self.device)
        pos = torch.cat([torch.arange(len(prompt)) for prompt in prompts]).to(self.device)[None]
        groups = self.heads // self.kv_heads

        def attend(i, q, k, v, scale):
            outs = []
            for a, b, slot in zip(ends[:-1], ends[1:], slots, strict=True):
                self.prompt_k[i][slot, :, : b - a] = k[0, :, a:b]
                self.prompt_v[i][slot, :, : b - a] = v[0, :, a:b]
                keys, vals = (repeat_heads(x[:, :, a:b], groups) for x in (k, v))
                outs.append(F.scaled_dot_product_attention(q[:, :, a:b], keys, vals, is_causal=True, scale=scale))
            return torch.cat(outs, 2)

        h = self._layers(self._embed(ids), pos, attend)
        return list(self._logits(h[0, torch.tensor(ends[1:], device=self.device) - 1]))

    def _prefill(self, prompt: list[int], slot: int) -> torch.Tensor:
        """Write the prompt's K/V into `slot`, `prefill_chunk` tokens at a time; next-token logits [V]."""
        ids = torch.tensor(prompt, device=self.device)[None]
        h = None
        for c0 in range(0, len(prompt), self.prefill_chunk):
            c1 = min(c0 + self.prefill_chunk, len(prompt))

            def attend(i, q, k, v, scale, c0=c0, c1=c1):
                self.prompt_k[i][slot, :, c0:c1] = k[0]
                self.prompt_v[i][slot, :, c0:c1] = v[0]
                # K/V repeated per query head (transient): every SDPA backend takes it
                groups = self.heads // self.kv_heads
                if c0 == 0:  # the chunk's own K/V, laid out as q
                    keys, vals = repeat_heads(k, groups), repeat_heads(v, groups)
                    return F.scaled_dot_product_attention(q, keys, vals, is_causal=True, scale=scale)
                keys = self.prompt_k[i][slot : slot + 1, :, :c1].repeat_interleave(groups, 1)
                vals = self.prompt_v[i][slot : slot + 1, :, :c1].repeat_interleave(groups, 1)
                return causal_to_last_key(q, keys, vals, scale)

            pos = torch.arange(c0, c1, device=self.device)[None]
            h = self._layers(self._embed(ids[:, c0:c1]), pos, attend)
        return self._logits(h[:, -1])[0]

    def _prefill_ksa(self, prompts: list[list[int]], slots: list[int]) -> list[torch.Tensor]:
        """KSA prompts prefilled in one forward through the engine's layer loop (columns and attention:
        `ksa.static_cache.PackedPrefill`, every prompt's summary slots as trailing columns, so the
        summary norm / q/k/v projections run on them as in a decode step); each prompt's K/V go into
        its slot (`StaticKSALayer.load_prompts`); logits of each prompt's last token."""
        cfg = self.model.config
        lengths = [len(p) for p in prompts]
        pack = PackedPrefill(lengths, cfg.ksa_chunk, cfg.ksa_summaries, self.device)
        h = self._embed(torch.tensor([t for p in prompts for t in p], device=self.device))[None]
        if pack.n_sum:
            summary = self.model.summary_embed.weight.repeat(pack.n_sum // cfg.ksa_summaries, 1).to(h.dtype)
            h = torch.cat([h, summary[None]], 1)

        def attend(i, q, k, v, scale):
            self.ksa_layers[i].load_prompts(slots, lengths, k[0], v[0])
            return pack.attend(q, k, v, window=cfg.ksa_windows[i], impl=cfg.ksa_impl, scale=scale,
                               summaries_visible=cfg.ksa_summaries_visible)

        h = self._layers(h, pack.positions[None], attend, n_sum=pack.n_sum)
        return list(self._logits(h[0, pack.last_text]))

    def _decode(self, tok: torch.Tensor, pos: torch.Tensor, span: int) -> torch.Tensor:
        """One token for rows 0..B-1 of the cache; tok/pos [B]; attends cache positions < span.

        Each row writes its K/V at `pos` and attends positions <= pos. GQA is folded into the query
        length (q [B, kv_heads, groups, D] against K [B, kv_heads, span, D]) so no K/V is repeated.
        """
        visible = torch.arange(span, device=tok.device)[None, :] <= pos[:, None]  # [B, span]
        bias = torch.zeros(visible.shape, dtype=torch.float32, device=tok.device).masked_fill(~visible, float("-inf"))
        return self._decode_layers(self._embed(tok[:, None]), pos[:, None], self._full_attention(pos, lambda i: (bias,)))

    def _decode_shared(self, tok: torch.Tensor, pos: torch.Tensor, prefix: torch.Tensor, width: int,
                       prefix_span: int, own_span: int) -> torch.Tensor:
        """share_prefix decode: one token for rows 0..B-1 (blocks of `width` rows); tok/pos/prefix [B],
        prefix = prompt tokens in the row's block's prefix row (equal across a block). A row writes its
        K/V at own index pos - prefix and attends prefix[: prefix] + own[: pos - prefix + 1]
        (golong/rollout/prefix.py, cascade_attention); spans bound the keys read of each part."""
        b = tok.shape[0]
        own = pos - prefix
        prefix_bias = length_bias(prefix.view(b // width, width).amax(1), prefix_span)  # [blocks, P]
        own_bias = length_bias(own + 1, own_span)  # [B, R]
        return self._decode_layers(self._embed(tok[:, None]), pos[:, None], self._full_attention(
            own, lambda i: (self.k_prefix[i], self.v_prefix[i], prefix_bias, own_bias)))

    def _decode_shared_ksa(self, tok: torch.Tensor, pos: torch.Tensor, prefix: torch.Tensor, width: int,
                           prefix_span: int, own_span: int, n: int) -> torch.Tensor:
        """share_prefix decode of a KSA policy (ksa/static_shared.py): one text token per row (plus the
        S summary slots of its chunk when n > 1); prefix [B] = the row's prompt length, stored once in
        its block's prefix rows; logits of the text token [B, V]."""
        h, positions = step_inputs(self.model, tok, pos, n > 1)
        masks: dict[tuple, tuple] = {}

        def store(i: int) -> tuple:
            layer = self.ksa_layers[i]
            layout = layer.layout(width, prefix_span, own_span)
            if layer.kind() not in masks:
                masks[layer.kind()] = self._compiled("_biases", layer_biases, "the KSA masks", layer, pos, prefix, n, layout)
            return pos, prefix, layer.storage(), masks[layer.kind()], layout, self.decode_kernel

        return self._decode_layers(h, positions, lambda i: (shared_ksa_step_attention, store(i)))

    def _decode_ksa(self, tok: torch.Tensor, pos: torch.Tensor, span: int, n: int) -> torch.Tensor:
        """One text token per row (plus the S summary slots of its chunk when n > 1) through the
        static KSA storage (ksa/static_cache.py); logits of the text token [B, V]."""
        h, positions = step_inputs(self.model, tok, pos, n > 1)
        biases: dict[tuple, tuple[torch.Tensor, torch.Tensor]] = {}

        def masks(layer: StaticKSALayer) -> tuple[torch.Tensor, torch.Tensor]:
            if layer.kind() not in biases:
                biases[layer.kind()] = self._compiled("_biases", layer_biases, "the KSA masks", layer, pos, n, span)
            return biases[layer.kind()]

        def store(i: int) -> tuple:
            layer = self.ksa_layers[i]
            return pos, layer.storage(), masks(layer), layer.layout(span), self.decode_kernel

        return self._decode_layers(h, positions, lambda i: (ksa_step_attention, store(i)))

    def _step_columns(self, pos: list[int]) -> int:
        """Query columns of a decode step: 1, or 1 + S when any row's token completes a KSA chunk (every
        step with summaries_every_step)."""
        if not self.ksa:
            return 1
        C = self.model.config.ksa_chunk
        every = self.summaries_every_step or any(completes_chunk(p, C) for p in pos)
        return 1 + self.model.config.ksa_summaries if every else 1

    # A step's shape, which names its CUDA graph: (B, span, query columns), or when sharing prompts
    # (B, width, prefix span, own span); its inputs: (tok, pos), sharing (tok, pos, prefix length).
    def _run_decode(self, shape: tuple[int, ...], *inputs: torch.Tensor) -> torch.Tensor:
        if self.share:
            return self._decode_shared_ksa(*inputs, *shape[1:]) if self.ksa else self._decode_shared(*inputs, *shape[1:])
        _, span, n = shape
        return self._decode_ksa(*inputs, span, n) if self.ksa else self._decode(*inputs, span)

    def _decode_sample(self, shape: tuple[int, ...], params: SamplingParams,
                       *inputs: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(token, log p) [B] of one decode step: the model's logits sampled on the device
        (sampling.sample_rows; inputs = the step's inputs, then each row's sampler key and step)."""
        *model_inputs, keys, steps = inputs
        logits = self._run_decode(shape, *model_inputs)
        if self._noise_columns is None or self._noise_columns.shape[0] != logits.shape[-1]:
            self._noise_columns = noise_columns(logits.shape[-1], self.device)
        return self._compiled("_sample", sample_rows, "the sampler", logits, params, keys, steps, self._noise_columns)

    def _compiled(self, name: str, eager: Any, what: str, *args: Any) -> Any:
        """self.<name>(*args): the compiled function where compile_decode made one. A new shape compiles
        here, in the warm-up before a graph capture; if inductor / Triton fails there, the engine warns
        once and runs `eager` from then on (exact, only slower)."""
        try:
            return getattr(self, name)(*args)
        except Exception as e:  # noqa: BLE001  an inductor / Triton failure
            if getattr(self, name) is eager:
                raise
            warnings.warn(f"rollout.compile_decode: compiling {what} failed ({type(e).__name__}: "
                          f"{(str(e).strip().splitlines() or [''])[0]}); running it uncompiled", stacklevel=3)
            setattr(self, name, eager)
            return eager(*args)

    def _decode_step(self, shape: tuple[int, ...], params: SamplingParams,
                     inputs: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """_decode_sample, replayed on a GPU from the graph captured for (shape, sampler settings):
        the sampling runs inside the graph, so a step is one replay and one copy to the host."""
        if not self.use_graphs:
            return self._decode_sample(shape, params, *inputs)
        key = (shape, params.temperature, params.top_k, params.top_p)
        g = self._graphs.get(key) or self._capture(key, shape, params)
        for slot, value in zip(g.inputs, inputs, strict=True):
            slot.copy_(value)
        g.graph.replay()
        return g.outputs

    def _dummy_inputs(self, shape: tuple[int, ...]) -> tuple[torch.Tensor, ...]:
        """Inputs for a warm-up decode of rows 0..B-1 that writes K/V where no live row has any yet:
        position span - 1 (span > every live row's length), or when sharing prompts own index
        own span - 1 (prefix length 0), so what it writes is overwritten or never seen.
        (KSA ring layers wrap positions onto live slots: _warm_up saves and restores those.)"""
        b, last = shape[0], (shape[3] if self.share else shape[1]) - 1
        tok = torch.zeros(b, dtype=torch.long, device=self.device)
        pos = torch.full((b,), last, dtype=torch.long, device=self.device)
        zero = torch.zeros_like(tok)
        return (tok, pos, zero, zero.clone(), zero.clone()) if self.share else (tok, pos, zero, zero.clone())

    def _warm_up(self, shape: tuple[int, ...], params: SamplingParams) -> None:
        """Run one decode + sampling on dummy inputs without changing any live row (see _dummy_inputs)."""
        last = (shape[3] if self.share else shape[1]) - 1  # the dummy position (prompt length 0 when sharing)
        saved = [layer.save_rows(shape[0], last) for layer in self.ksa_layers]
        self._decode_sample(shape, params, *self._dummy_inputs(shape))
        for layer, kept in zip(self.ksa_layers, saved, strict=True):
            layer.restore_rows(kept, last)

    def _capture(self, key: tuple, shape: tuple[int, ...], params: SamplingParams) -> _Graph:
        # A warm-up on a side stream, as CUDA graph capture requires (lazy inits, cuBLAS workspaces).
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._warm_up(shape, params)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        inputs = self._dummy_inputs(shape)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            outputs = self._decode_sample(shape, params, *inputs)
        self._graphs[key] = g = _Graph(graph, inputs, outputs)
        return g

    # --- scheduling ----------------------------------------------------------------------------
    def _copy_slot(self, src: int, dst: int, length: int) -> None:
        for layer in self.ksa_layers:
            layer.copy_row(src, dst, length)
        for kc, vc in zip(self.k_cache, self.v_cache, strict=True):
            kc[dst, :, :length] = kc[src, :, :length]
            vc[dst, :, :length] = vc[src, :, :length]

    def _copy_prompt(self, src: int, dst: int, length: int) -> None:
        """A prompt's K/V from one home to another: prefix rows when sharing prompts, else slots."""
        if not self.share:
            return self._copy_slot(src, dst, length)
        for layer in self.ksa_layers:
            layer.copy_prefix(src, dst)
        for kp, vp in zip(self.k_prefix, self.v_prefix, strict=True):
            kp[dst, :, :length] = kp[src, :, :length]
            vp[dst, :, :length] = vp[src, :, :length]

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        """Slots come in blocks of `width`: a group's rows (share_prefix; a finished row's slot idles
        until its block is done) or single rows. `waiting` holds units, the samples of one prompt
        that one block runs."""
        self.model.eval()
        longest = max((len(p) for p in prompts), default=0)
        if longest + params.max_new_tokens - 1 > self.max_len:
            raise ValueError(
                f"a prompt of {longest} tokens + {params.max_new_tokens} new tokens exceeds max_len={self.max_len}; "
                "raise StaticEngine(max_len=...) or shorten prompts"
            )
        if any(len(p) == 0 for p in prompts):
            raise ValueError("an empty prompt cannot be generated from; give at least one token")
        if self.share:
            width = self._ensure_shared(len(prompts), n, longest, params.max_new_tokens)
            slots: list[_Seq | None] = [None] * (min(self.blocks, self.rows // width) * width)
        else:
            width = 1
            self._ensure_cache(len(prompts) * n, longest + params.max_new_tokens)
            slots = [None] * self.rows
        if self.fuse_projections:  # the parameters may have changed since the last call (a colocated learner)
            layers = self.model.model.layers
            self._stacked = [fused_layer_weights(layer, self._stacked[i] if self._stacked else None)
                             for i, layer in enumerate(layers)]
        # `prefills` prompts (`prefill_tokens` text tokens) in `prefill_batches` forwards of <= `prefill_max_prompts`
        # `summary_steps`: decode steps that carried KSA summary columns (their own, wider step shape)
        stats = {"prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0, "summary_steps": 0, "rows_x_steps": 0, "prefills": 0,
                 "prefill_batches": 0, "prefill_tokens": 0, "prefill_max_prompts": 0, "moves": 0, "prompt_copies": 0,
                 "concurrency": 0, "kv_bytes": self.cache_bytes(), "kv_tokens_read": 0, "kv_bytes_read": 0}
        waiting = deque((p, range(j, min(j + width, n))) for p in range(len(prompts)) for j in range(0, n, width))
        first_logits: dict[int, torch.Tensor] = {}  # prompt -> logits after its prefill, until all n start
        started: dict[int, int] = {}
        done: list[list[_Seq | None]] = [[None] * n for _ in prompts]

        def finish_if(seq: _Seq, token: int) -> bool:
            if token in self.eos:
                seq.finish = "stop"
            if seq.finish == "stop" or len(seq.tokens) >= params.max_new_tokens:
                done[seq.prompt][seq.sample] = seq
                slots[seq.slot] = None
                return True
            return False

        ahead: _Issued | None = None  # the step after the one being read, already enqueued
        while waiting or any(slots):
            if ahead is None:
                t0 = time.perf_counter()
                for seq in self._admit(prompts, n, params, waiting, slots, width, first_logits, started, stats):
                    finish_if(seq, seq.tokens[-1])
                stats["prefill_s"] += time.perf_counter() - t0
                live = [s for s in slots if s is not None]
                if not live:
                    continue
                stats["moves"] += self._compact(slots, width)
            t0 = time.perf_counter()
            current = ahead if ahead is not None else self._issue(live, width, len(slots) // width, params)
            # Enqueue the next step before reading this one's tokens, so the device decodes while the host
            # reads them; not when a row reaches max_new_tokens here (its slot is rescheduled first)
            ahead = None
            if self.look_ahead and all(len(s.tokens) + 1 < params.max_new_tokens for s in current.live):
                ahead = self._issue(current.live, width, len(slots) // width, params, after=current)
            if self._absorb(current, slots, width, finish_if, stats) and ahead is not None:
                self._absorb(ahead, slots, width, finish_if, stats)  # a row stopped (EOS): read the step past it too
                ahead = None
            stats["decode_s"] += time.perf_counter() - t0
        self.stats = stats
        return [[self._completion(prompts[p], s) for s in group if s is not None] for p, group in enumerate(done)]

    def _issue(self, live: list[_Seq], width: int, blocks: int, params: SamplingParams,
               after: _Issued | None = None) -> _Issued:
        """Enqueue one decode step over `live` and the copy of its tokens and log p to the host. `after`:
        a step over the same rows not read yet; this one is the step after it (positions one further,
        its sampled tokens fed from the device)."""
        ahead = 0 if after is None else 1
        columns = self._step_columns([s.length + ahead for s in live])
        tok, lp = self._step(live, width, blocks, columns, params, ahead, None if after is None else after.tok)
        if not tok.is_cuda:
            return _Issued(live, columns, tok, (tok, lp))
        host = tuple(torch.empty(t.shape, dtype=t.dtype, pin_memory=True).copy_(t, non_blocking=True) for t in (tok, lp))
        ready = torch.cuda.Event()
        ready.record()
        return _Issued(live, columns, tok, host, ready)

    def _absorb(self, step: _Issued, slots: list, width: int, finish_if, stats: dict) -> bool:
        """Read a step's tokens into its rows that are still live (a row that stopped the step before
        has one decoded past its end: dropped, and left out of `stats`, which count what the rows needed:
        the steps, and what each must read, its floor); True if a row stopped early (EOS)."""
        toks, lps = step.read()
        rows = [s for s in step.live if slots[s.slot] is s]
        if not rows:
            return False
        stats["decode_steps"] += 1
        stats["summary_steps"] += step.columns > 1
        stats["rows_x_steps"] += len(rows)
        stats["concurrency"] = max(stats["concurrency"], len(rows))
        # what the step must read: each row's own K/V, each live block's prefix once
        stats["kv_tokens_read"] += sum(s.length - s.prefix for s in rows) + sum({s.slot // width: s.prefix for s in rows}.values())
        stats["kv_bytes_read"] += self._read_bytes(rows, width)
        stopped = False
        for s in rows:
            s.length += 1
            s.tokens.append(toks[s.slot])
            s.logps.append(lps[s.slot])
            stopped |= finish_if(s, toks[s.slot]) and s.finish == "stop"
        return stopped

    def _step(self, live: list[_Seq], width: int, blocks: int, columns: int, params: SamplingParams,
              ahead: int = 0, fed: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """One decode step (`columns` query columns a row: _step_columns) over the batch bucket of blocks
        holding every live row: each row's next
        token and its log p, drawn with the row's sampler key and step. A row below B without a sequence decodes a dummy token: at
        position 0 of its unused slot, or, beside live rows of its block, at own index 0 of its
        finished row (never read again). `ahead` = 1: the rows' step after the last one read (each row
        `ahead` tokens further), with `fed` [B] (that step's sampled tokens, on the device) as inputs."""
        b = batch_bucket(max(s.slot for s in live) // width + 1, blocks) * width
        host = [[0] * b for _ in range(5)]  # token, position, key, step, prefix length per row
        for s in live:
            first = s.slot - s.slot % width
            host[1][first : first + width] = host[4][first : first + width] = [s.prefix] * width
        for s in live:
            values = (s.tokens[-1], s.length + ahead, s.key, len(s.tokens) + ahead, s.prefix)
            for field_, value in zip(host, values, strict=True):
                field_[s.slot] = value
        # from pinned memory on a GPU: a copy that never waits for the step still running (look_ahead)
        staged = torch.tensor(host, dtype=torch.long, pin_memory=self.device.type == "cuda")
        tok, pos, keys, steps, prefix = staged.to(self.device, non_blocking=True).unbind(0)
        if fed is not None:
            assert fed.shape == tok.shape, f"a step fed from the device needs the same batch ({fed.shape} vs {tok.shape})"
            tok = fed
        if self.share:
            shape = (b, width, length_bucket(max(s.prefix for s in live), self.prefix_cap),
                     length_bucket(max(s.length + ahead - s.prefix for s in live) + 1, self.cap_len))
            if self.ksa:
                shape += (columns,)
            return self._decode_step(shape, params, (tok, pos, prefix, keys, steps))
        span = length_bucket(max(s.length + ahead for s in live) + 1, self.cap_len)
        return self._decode_step((b, span, columns), params, (tok, pos, keys, steps))

    def _admit(self, prompts: list[list[int]], n: int, params: SamplingParams, waiting: deque, slots: list,
               width: int, first_logits: dict[int, torch.Tensor], started: dict[int, int], stats: dict) -> list[_Seq]:
        """Give each free block of `width` slots the next unit from `waiting`. A prompt's K/V lives in
        a home: the block's prefix row when sharing prompts, else the slot (home = slot // width). The
        prompts whose K/V no live home holds are prefilled together (_prefill_many), one home each;
        every other new home copies its prompt from a home that holds it (stats: prompt_copies). Each
        admitted sample then draws its first token, all in one sampling call. Returns the admitted
        sequences, placed in their slots."""
        placed = []  # (slot, prompt, sample)
        for home in range(len(slots) // width):
            if waiting and not any(slots[home * width : (home + 1) * width]):
                p, samples = waiting.popleft()
                placed += [(home * width + t, p, j) for t, j in enumerate(samples)]
        if not placed:
            return []
        holder = {s.prompt: s.slot // width for s in slots if s is not None}  # a live home of each prompt
        fresh: dict[int, int] = {}
        for slot, p, _ in placed:
            if p not in holder and p not in fresh:
                fresh[p] = slot // width
        if fresh:
            first_logits.update(zip(fresh, self._prefill_many([prompts[p] for p in fresh], list(fresh.values()), stats), strict=True))
            stats["prefills"] += len(fresh)
        holder.update(fresh)
        filled = set(fresh.values())  # new homes that hold their prompt
        seqs, logits = [], []
        for slot, p, j in placed:
            if slot // width not in filled:
                self._copy_prompt(holder[p], slot // width, len(prompts[p]))
                filled.add(slot // width)
                stats["prompt_copies"] += 1
            seqs.append(_Seq(p, j, slot, len(prompts[p]), row_key(params.seed, p, j), len(prompts[p]) if self.share else 0))
            logits.append(first_logits[p])
            started[p] = started.get(p, 0) + 1
            if started[p] == n:
                first_logits.pop(p)
        keys = torch.tensor([s.key for s in seqs], device=self.device)
        tok, lp = sample_rows(torch.stack(logits), params, keys, torch.zeros_like(keys))
        for seq, t, x in zip(seqs, tok.tolist(), lp.tolist(), strict=True):
            seq.tokens.append(t)
            seq.logps.append(x)
            slots[seq.slot] = seq
        return seqs

    def _compact(self, slots: list[_Seq | None], width: int) -> int:
        """Move the highest live block (a group's rows when sharing prompts, else one row) into the
        lowest free one while that shrinks the batch bucket (copying a block's K/V once costs about
        what one decode step reads for it anyway); returns the number of blocks moved."""
        count = len(slots) // width
        live = sorted({s.slot // width for s in slots if s is not None})
        moves = 0
        while batch_bucket(len(live), count) < batch_bucket(live[-1] + 1, count):
            src, dst = live.pop(), min(set(range(count)) - set(live))
            prefix = 0
            for t in range(width):
                seq = slots[src * width + t]
                if seq is not None:
                    self._copy_slot(seq.slot, dst * width + t, seq.length - seq.prefix)
                    slots[seq.slot] = None
                    seq.slot, prefix = dst * width + t, seq.prefix
                    slots[seq.slot] = seq
            if prefix:
                self._copy_prompt(src, dst, prefix)
            live = sorted([*live, dst])
            moves += 1
        return moves

    def _completion(self, prompt: list[int], s: _Seq) -> Completion:
        text_ids = s.tokens[:-1] if s.finish == "stop" else s.tokens  # the EOS token is not text
        return Completion(
            prompt_index=s.prompt, prompt_ids=list(prompt), response_ids=s.tokens,
            text=self.tokenizer.decode(text_ids, skip_special_tokens=False),
            logprobs=s.logps, finish_reason=s.finish,  # type: ignore[arg-type]
        )
