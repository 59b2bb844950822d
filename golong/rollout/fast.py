"""A fast rollout engine for policies vLLM cannot serve: static KV cache, CUDA graphs, continuous batching.

Why not transformers' `generate`: each decode step there re-enters Python for every module, grows
the KV cache by concatenation and launches hundreds of small kernels, so a 0.6B model after a 32K
prompt spends ~70 ms per step where reading weights + KV takes ~1 ms. This engine:
- keeps K/V in preallocated tensors [max_batch, kv_heads, max_len, head_dim] per layer, written in
  place at each row's position (no per-step allocation or copy);
- runs its own layer loop over the model's HF modules (embed -> per layer: norm, q/k/v proj,
  q/k head norms (Qwen3), RoPE from the model's rotary_emb, cache write, attention, o_proj, residual,
  post-norm, MLP -> final norm -> lm_head), so one decode step is a fixed sequence of kernels that
  a CUDA graph can capture, one graph per (batch bucket, cache-length bucket), captured on first use;
- serves a fixed pool of `max_batch` slots: a sequence that finishes (EOS or max_new_tokens) frees
  its slot for the next waiting one; the G samples of one prompt share one prefill (the prompt's
  K/V are copied from a live sibling's slot), and live rows are moved down to the lowest slots when
  that lets a smaller batch bucket run;
- samples on the device with a counter-based random stream keyed by (seed, prompt index, sample
  index, step): a sample's tokens do not depend on which other rows share its batch.

Measured on one H200 (2026-11-28, Qwen3-0.6B shape, bf16, bench/engine_decode.py): 7.1 ms per decode
step after a 32K prompt at batch 1 (transformers `generate`: 68.5 ms; HBM floor 1.0 ms), 5.6 ms after
8K. What is left is mostly launch-bound: ~60 small kernels per layer even inside one graph.

Supported: Qwen3 / Qwen2 / Llama architectures with full attention. Any other model (KSA policies
among them) falls back to the transformers engine (`HFEngine`: one prefill per prompt, rows leave
the batch at EOS, no graphs and no slot refill); `engine.fast` says which path is in use.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from golong.rollout.base import Completion, RolloutEngine, SamplingParams, copy_weights_into

SUPPORTED = ("qwen3", "qwen2", "llama")
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
MASK32 = 0xFFFFFFFF


# --- counter-based randomness -------------------------------------------------------------------
def mix32(x: Any) -> Any:
    """A 32-bit integer hash (xorshift-multiply rounds); works on Python ints and int64 tensors.

    Multipliers stay below 2^31 so x * c < 2^63 never overflows int64.
    """
    x = x ^ (x >> 16)
    x = (x * 0x7FEB352D) & MASK32
    x = x ^ (x >> 15)
    x = (x * 0x2C1B3C6D) & MASK32
    return x ^ (x >> 16)


def row_key(seed: int, prompt: int, sample: int) -> int:
    """The random stream of one sample: key = h(h(h(seed) ^ prompt) ^ sample)."""
    return mix32(mix32(mix32(seed & MASK32) ^ (prompt & MASK32)) ^ (sample & MASK32))


def uniform_noise(keys: torch.Tensor, steps: torch.Tensor, vocab: int) -> torch.Tensor:
    """u[b, v] in (0, 1) from h(h(key_b ^ h(step_b)) + v * golden): the same numbers for a row whatever
    else is in the batch."""
    r = mix32(keys ^ mix32(steps & MASK32))
    idx = torch.arange(vocab, device=keys.device, dtype=torch.int64)
    h = mix32((r[:, None] + idx[None, :] * 0x9E3779B1) & MASK32)
    return ((h >> 8).to(torch.float32) + 0.5) * (1.0 / (1 << 24))


def processed_logprobs(logits: torch.Tensor, params: SamplingParams) -> torch.Tensor:
    """log p of the sampler: log_softmax(filter(logits / T)); filter = top-k, then top-p to -inf.

    Top-p drops a token when the mass of the tokens ranked before it already reaches top_p (the
    first token always stays). Greedy (T = 0) uses T = 1 and no filter.
    """
    if params.temperature == 0:
        return torch.log_softmax(logits, -1)
    scores = logits / params.temperature
    if 0 < params.top_k < scores.shape[-1]:
        kth = torch.topk(scores, params.top_k, dim=-1).values[:, -1:]
        scores = scores.masked_fill(scores < kth, float("-inf"))
    if params.top_p < 1.0:
        sorted_scores, order = torch.sort(scores, descending=True, dim=-1)
        probs = torch.softmax(sorted_scores, -1)
        drop_sorted = (probs.cumsum(-1) - probs) >= params.top_p
        scores = scores.masked_fill(torch.zeros_like(drop_sorted).scatter(-1, order, drop_sorted), float("-inf"))
    return torch.log_softmax(scores, -1)


def sample_rows(
    logits: torch.Tensor, params: SamplingParams, keys: torch.Tensor, steps: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(token, log p(token)) per row. Sampling is Gumbel-max, token = argmax(log p + g),
    g = -log(-log u), an exact draw from p; greedy takes argmax(log p)."""
    logp = processed_logprobs(logits.float(), params)
    if params.temperature == 0:
        token = logp.argmax(-1)
    else:
        u = uniform_noise(keys, steps, logp.shape[-1])
        token = (logp - torch.log(-torch.log(u))).argmax(-1)
    return token, logp.gather(-1, token[:, None]).squeeze(-1)


# --- buckets and small helpers --------------------------------------------------------------------
def batch_bucket(n: int, max_batch: int) -> int:
    """The smallest bucket >= n (buckets 1, 2, 4, ..., capped at max_batch)."""
    return min(next(b for b in (*BATCH_BUCKETS, 1 << 30) if b >= n), max_batch)


def length_bucket(n: int, max_len: int) -> int:
    """Round n up to a multiple of max(256, pow2(n)/8): at most ~12% of attended K/V is padding and a
    sequence growing from 1K to 32K needs ~40 graphs, not one per token."""
    step = max(256, (1 << max(n - 1, 1).bit_length()) // 8)
    return min(-(-n // step) * step, max_len)


def eos_ids(model: Any, tokenizer: Any) -> set[int]:
    ids: set[int] = set()
    cfg = getattr(model, "generation_config", None)
    for value in (getattr(cfg, "eos_token_id", None), tokenizer.eos_token_id):
        if isinstance(value, int):
            ids.add(value)
        elif isinstance(value, list | tuple):
            ids.update(int(v) for v in value)
    if not ids:
        raise ValueError("the tokenizer has no eos_token_id: the engine cannot tell where a response ends")
    return ids


def rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """x * cos + rotate_half(x) * sin; x [B, H, T, D], cos/sin [B, T, D]."""
    half = x.shape[-1] // 2
    rotated = torch.cat((-x[..., half:], x[..., :half]), dim=-1)
    return x * cos[:, None] + rotated * sin[:, None]


def rms_norm(norm: Any, x: torch.Tensor) -> torch.Tensor:
    """The model's RMSNorm, w * (x / sqrt(mean(x^2) + eps)) computed in fp32 and rounded to x's dtype
    before the weight (as Qwen / Llama do), with torch's rms_norm op: fewer kernels per decode step."""
    normed = F.rms_norm(x.float(), (x.shape[-1],), eps=norm.variance_epsilon)
    return norm.weight * normed.to(x.dtype)


def fast_path_problem(model: Any) -> str | None:
    """Why the fast path cannot run this model, or None when it can."""
    cfg = model.config
    if cfg.model_type not in SUPPORTED:
        return f"model_type {cfg.model_type!r} (fast path: {', '.join(SUPPORTED)})"
    if any(t != "full_attention" for t in getattr(cfg, "layer_types", None) or []):
        return "sliding-window layers"
    if (getattr(cfg, "rope_scaling", None) or {}).get("rope_type", "default") not in ("default", "linear", "llama3"):
        return "dynamic RoPE scaling"
    norm = model.model.layers[0].input_layernorm
    if not hasattr(norm, "variance_epsilon") or "Gemma" in type(norm).__name__:
        return f"norm {type(norm).__name__} (fast path: Qwen / Llama RMSNorm)"
    return None


@dataclass
class _Seq:
    prompt: int
    sample: int
    slot: int
    length: int  # tokens in the cache (prompt + fed responses)
    key: int
    tokens: list[int] = field(default_factory=list)
    logps: list[float] = field(default_factory=list)
    finish: str = "length"


@dataclass
class _Graph:
    graph: Any
    tok: torch.Tensor
    pos: torch.Tensor
    logits: torch.Tensor


class FastEngine(RolloutEngine):
    """Static-cache, CUDA-graph, continuous-batching generation (see the module docstring)."""

    def __init__(
        self,
        model: Any,
        tokenizer: Any,
        *,
        max_batch: int = 32,
        max_len: int = 8192,
        device: str | None = None,
        cuda_graphs: bool = True,
        prefill_chunk: int = 8192,
    ):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.device = torch.device(device) if device else next(model.parameters()).device
        self.model.to(self.device)
        self.max_batch, self.max_len, self.prefill_chunk = max_batch, max_len, prefill_chunk
        self.eos = eos_ids(model, tokenizer)
        self.fallback_reason = fast_path_problem(model)
        self.fast = self.fallback_reason is None
        self.stats: dict[str, float] = {}
        if not self.fast:
            from golong.rollout.hf import HFEngine

            self._hf = HFEngine(model, tokenizer, batch_size=max_batch, device=str(self.device))
            return
        cfg = model.config
        self.use_graphs = cuda_graphs and self.device.type == "cuda"
        # Split probs @ V over the cache length (see _decode). Off: on an H200 cuBLAS's own choice was
        # faster (32K prompt, batch 1: 6.6 ms/step unsplit vs 7.1 split; bench/results/engine_decode_h200.json).
        self.split_pv = False
        self.kv_heads = cfg.num_key_value_heads
        self.heads = cfg.num_attention_heads
        self.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
        self.dtype = next(model.parameters()).dtype
        self.k_cache: list[torch.Tensor] = []
        self.v_cache: list[torch.Tensor] = []
        self._graphs: dict[tuple[int, int], _Graph] = {}
        self._pool = None

    # --- memory ------------------------------------------------------------------------------
    def _ensure_cache(self) -> None:
        if self.k_cache:
            return
        shape = (self.max_batch, self.kv_heads, self.max_len, self.head_dim)
        n = self.model.config.num_hidden_layers
        self.k_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n)]
        self.v_cache = [torch.zeros(shape, dtype=self.dtype, device=self.device) for _ in range(n)]

    def cache_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.k_cache + self.v_cache)

    def load_weights(self, state_dict: dict[str, Any]) -> None:
        """Copy into the existing parameter tensors (captured graphs keep pointing at them)."""
        copy_weights_into(self.model, state_dict)

    def sleep(self) -> None:
        """Drop graphs and the KV cache, park the weights on the CPU (graphs are re-captured on wake)."""
        if self.device.type == "cpu":
            return
        self._graphs.clear()
        self._pool = None
        self.k_cache, self.v_cache = [], []
        self.model.to("cpu")
        torch.cuda.empty_cache()

    def wake(self) -> None:
        if self.device.type != "cpu":
            self.model.to(self.device)

    # --- the model, layer by layer -----------------------------------------------------------------
    def _layers(self, ids: torch.Tensor, pos: torch.Tensor, attend) -> torch.Tensor:
        """Hidden states after the final norm; ids/pos [B, T]; attend(i, q, k, v) -> [B, H, T, D]."""
        inner = self.model.model
        h = inner.embed_tokens(ids)
        cos, sin = inner.rotary_emb(h, pos)
        b, t = ids.shape
        for i, layer in enumerate(inner.layers):
            a = layer.self_attn
            x = rms_norm(layer.input_layernorm, h)
            q = a.q_proj(x).view(b, t, -1, self.head_dim)
            k = a.k_proj(x).view(b, t, -1, self.head_dim)
            v = a.v_proj(x).view(b, t, -1, self.head_dim).transpose(1, 2)
            if hasattr(a, "q_norm"):
                q, k = rms_norm(a.q_norm, q), rms_norm(a.k_norm, k)
            q = rope(q.transpose(1, 2), cos, sin)
            k = rope(k.transpose(1, 2), cos, sin)
            o = attend(i, q, k, v, a.scaling)
            h = h + a.o_proj(o.transpose(1, 2).reshape(b, t, -1))
            h = h + layer.mlp(rms_norm(layer.post_attention_layernorm, h))
        return rms_norm(inner.norm, h)

    def _logits(self, h: torch.Tensor) -> torch.Tensor:
        return self.model.lm_head(h).float()

    def _prefill(self, prompt: list[int], slot: int) -> torch.Tensor:
        """Write the prompt's K/V into `slot`, `prefill_chunk` tokens at a time; next-token logits [V]."""
        ids = torch.tensor(prompt, device=self.device)[None]
        h = None
        for c0 in range(0, len(prompt), self.prefill_chunk):
            c1 = min(c0 + self.prefill_chunk, len(prompt))

            def attend(i, q, k, v, scale, c0=c0, c1=c1):
                self.k_cache[i][slot, :, c0:c1] = k[0]
                self.v_cache[i][slot, :, c0:c1] = v[0]
                # K/V repeated per query head (one chunk, transient): every SDPA backend takes it.
                groups = self.heads // self.kv_heads
                keys = self.k_cache[i][slot : slot + 1, :, :c1].repeat_interleave(groups, 1)
                vals = self.v_cache[i][slot : slot + 1, :, :c1].repeat_interleave(groups, 1)
                if c0 == 0:
                    return F.scaled_dot_product_attention(q, keys, vals, is_causal=True, scale=scale)
                allowed = torch.arange(c1, device=q.device)[None, :] <= torch.arange(c0, c1, device=q.device)[:, None]
                return F.scaled_dot_product_attention(q, keys, vals, attn_mask=allowed, scale=scale)

            pos = torch.arange(c0, c1, device=self.device)[None]
            h = self._layers(ids[:, c0:c1], pos, attend)
        return self._logits(h[:, -1])[0]

    def _decode(self, tok: torch.Tensor, pos: torch.Tensor, span: int) -> torch.Tensor:
        """One token for rows 0..B-1 of the cache; tok/pos [B]; attends cache positions < span.

        Each row writes its K/V at `pos` and attends positions <= pos. GQA is folded into the query
        length (q [B, kv_heads, groups, D] against K [B, kv_heads, span, D]) so no K/V is repeated.
        """
        b = tok.shape[0]
        rows = torch.arange(b, device=tok.device)
        groups = self.heads // self.kv_heads
        visible = torch.arange(span, device=tok.device)[None, :] <= pos[:, None]  # [B, span]
        bias = torch.zeros(visible.shape, dtype=torch.float32, device=tok.device).masked_fill(~visible, float("-inf"))
        flat = (rows[:, None] * self.kv_heads + torch.arange(self.kv_heads, device=tok.device)) * self.max_len
        flat = (flat + pos[:, None]).reshape(-1)  # index of (row, head, pos) in the [-1, D] view

        # The split view of V merges (row, head, chunk) into one GEMM batch without a copy only when
        # rows are 1 or the span is the whole cache; otherwise matmul would copy V, so do not split.
        split = None
        if self.split_pv and (b == 1 or span == self.max_len):
            split = next((c for c in (512, 256, 128, 64, 32, 16, 8) if span % c == 0 and span // c >= 2), None)

        def attend(i, q, k, v, scale):
            kc, vc = self.k_cache[i], self.v_cache[i]
            kc.view(-1, self.head_dim).index_copy_(0, flat, k.reshape(-1, self.head_dim))
            vc.view(-1, self.head_dim).index_copy_(0, flat, v.reshape(-1, self.head_dim))
            qg = q.reshape(b, self.kv_heads, groups, self.head_dim)
            scores = torch.matmul(qg, kc[:b, :, :span].transpose(-1, -2)).float() * scale + bias[:, None, None]
            probs = torch.softmax(scores, -1).to(vc.dtype)
            if split is None:
                return torch.matmul(probs, vc[:b, :, :span]).reshape(b, self.heads, 1, self.head_dim)
            # probs @ V reduces over all `span` positions: as one GEMM per (row, head) that is a long
            # serial reduction; split into chunks of `split` positions (one small GEMM each, run in
            # parallel) and add the partial outputs in fp32.
            parts = span // split
            p5 = probs.view(b, self.kv_heads, groups, parts, split).transpose(2, 3)
            v5 = vc[:b, :, :span].view(b, self.kv_heads, parts, split, self.head_dim)
            out = torch.matmul(p5, v5).float().sum(2).to(vc.dtype)
            return out.reshape(b, self.heads, 1, self.head_dim)

        return self._logits(self._layers(tok[:, None], pos[:, None], attend)[:, -1])

    def _decode_step(self, tok: torch.Tensor, pos: torch.Tensor, span: int) -> torch.Tensor:
        if not self.use_graphs:
            return self._decode(tok, pos, span)
        g = self._graphs.get((tok.shape[0], span)) or self._capture(tok.shape[0], span)
        g.tok.copy_(tok)
        g.pos.copy_(pos)
        g.graph.replay()
        return g.logits

    def _dummy_inputs(self, b: int, span: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs for a warm-up decode of rows 0..b-1: position span - 1, which no live row has filled
        yet (span > every live row's length), so the K/V written there is overwritten or never seen."""
        tok = torch.zeros(b, dtype=torch.long, device=self.device)
        return tok, torch.full((b,), span - 1, dtype=torch.long, device=self.device)

    def _capture(self, b: int, span: int) -> _Graph:
        tok, pos = self._dummy_inputs(b, span)
        # A warm-up on a side stream, as CUDA graph capture requires (lazy inits, cuBLAS workspaces).
        # It really runs, so it must not overwrite live K/V: see _dummy_inputs.
        stream = torch.cuda.Stream(self.device)
        stream.wait_stream(torch.cuda.current_stream(self.device))
        with torch.cuda.stream(stream):
            self._decode(tok, pos, span)
        torch.cuda.current_stream(self.device).wait_stream(stream)
        if self._pool is None:
            self._pool = torch.cuda.graph_pool_handle()
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph, pool=self._pool):
            logits = self._decode(tok, pos, span)
        self._graphs[(b, span)] = g = _Graph(graph, tok, pos, logits)
        return g

    # --- scheduling ----------------------------------------------------------------------------
    def _copy_slot(self, src: int, dst: int, length: int) -> None:
        for kc, vc in zip(self.k_cache, self.v_cache, strict=True):
            kc[dst, :, :length] = kc[src, :, :length]
            vc[dst, :, :length] = vc[src, :, :length]

    @torch.no_grad()
    def generate(self, prompts: list[list[int]], n: int, params: SamplingParams) -> list[list[Completion]]:
        if not self.fast:
            return self._hf.generate(prompts, n, params)
        self.model.eval()
        longest = max((len(p) for p in prompts), default=0)
        if longest + params.max_new_tokens - 1 > self.max_len:
            raise ValueError(
                f"a prompt of {longest} tokens + {params.max_new_tokens} new tokens exceeds max_len={self.max_len}; "
                "raise FastEngine(max_len=...) or shorten prompts"
            )
        if any(len(p) == 0 for p in prompts):
            raise ValueError("an empty prompt cannot be generated from; give at least one token")
        self._ensure_cache()
        stats = {"prefill_s": 0.0, "decode_s": 0.0, "decode_steps": 0, "rows_x_steps": 0, "prefills": 0, "moves": 0}
        waiting = deque((p, j) for p in range(len(prompts)) for j in range(n))
        first_logits: dict[int, torch.Tensor] = {}  # prompt -> logits after its prefill, until all n start
        started: dict[int, int] = {}
        slots: list[_Seq | None] = [None] * self.max_batch
        done: list[list[_Seq | None]] = [[None] * n for _ in prompts]

        def finish_if(seq: _Seq, token: int) -> bool:
            if token in self.eos:
                seq.finish = "stop"
            if seq.finish == "stop" or len(seq.tokens) >= params.max_new_tokens:
                done[seq.prompt][seq.sample] = seq
                slots[seq.slot] = None
                return True
            return False

        while waiting or any(slots):
            # Admit waiting samples into free slots: prefill once per prompt, copy K/V for siblings.
            for slot in range(self.max_batch):
                if not waiting:
                    break
                if slots[slot] is not None:
                    continue
                p, j = waiting.popleft()
                sibling = next((s for s in slots if s is not None and s.prompt == p), None)
                t0 = time.perf_counter()
                if sibling is not None:
                    self._copy_slot(sibling.slot, slot, len(prompts[p]))
                else:
                    first_logits[p] = self._prefill(prompts[p], slot)
                    stats["prefills"] += 1
                logits = first_logits[p]
                started[p] = started.get(p, 0) + 1
                if started[p] == n:
                    first_logits.pop(p)
                seq = _Seq(p, j, slot, len(prompts[p]), row_key(params.seed, p, j))
                tok, lp = sample_rows(logits[None], params, torch.tensor([seq.key], device=self.device),
                                      torch.zeros(1, dtype=torch.long, device=self.device))
                self._sync()
                stats["prefill_s"] += time.perf_counter() - t0
                seq.tokens.append(int(tok))
                seq.logps.append(float(lp))
                slots[slot] = seq
                finish_if(seq, seq.tokens[-1])
            live = [s for s in slots if s is not None]
            if not live:
                continue
            stats["moves"] += self._compact(slots)
            t0 = time.perf_counter()
            b = batch_bucket(max(s.slot for s in live) + 1, self.max_batch)
            # Rows of free slots below b decode a dummy token at position 0 of their own (unused) slot.
            host = [[0] * b for _ in range(4)]  # token, position, key, step per row
            for s in live:
                for field_, value in zip(host, (s.tokens[-1], s.length, s.key, len(s.tokens)), strict=True):
                    field_[s.slot] = value
            tok, pos, keys, steps = torch.tensor(host, dtype=torch.long).to(self.device, non_blocking=True).unbind(0)
            span = length_bucket(max(s.length for s in live) + 1, self.max_len)
            logits = self._decode_step(tok, pos, span)
            new_tok, new_lp = sample_rows(logits, params, keys, steps)
            toks, lps = new_tok.tolist(), new_lp.tolist()
            stats["decode_s"] += time.perf_counter() - t0
            stats["decode_steps"] += 1
            stats["rows_x_steps"] += len(live)
            for s in live:
                s.length += 1
                s.tokens.append(toks[s.slot])
                s.logps.append(lps[s.slot])
                finish_if(s, toks[s.slot])
        self.stats = stats
        return [[self._completion(prompts[p], s) for s in group if s is not None] for p, group in enumerate(done)]

    def _compact(self, slots: list[_Seq | None]) -> int:
        """Move the highest live rows into the lowest free slots while that shrinks the batch bucket
        (copying a row's K/V once costs about what one decode step reads for it anyway); returns the
        number of rows moved."""
        live = [s for s in slots if s is not None]
        moves = 0
        while True:
            top = max(s.slot for s in live)
            if batch_bucket(len(live), self.max_batch) >= batch_bucket(top + 1, self.max_batch):
                return moves
            moves += 1
            free = slots.index(None)
            seq = slots[top]
            assert seq is not None
            self._copy_slot(top, free, seq.length)
            slots[free], slots[top], seq.slot = seq, None, free

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def _completion(self, prompt: list[int], s: _Seq) -> Completion:
        text_ids = s.tokens[:-1] if s.finish == "stop" else s.tokens  # the EOS token is not text
        return Completion(
            prompt_index=s.prompt, prompt_ids=list(prompt), response_ids=s.tokens,
            text=self.tokenizer.decode(text_ids, skip_special_tokens=False),
            logprobs=s.logps, finish_reason=s.finish,  # type: ignore[arg-type]
        )
