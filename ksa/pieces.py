"""Shared-prompt attention as unmasked pieces merged by their log-sum-exp.

A unit of a shared-prompt row is laid out as its prompt P, then its responses R_1 .. R_G one after
another: golong's rows (golong.packing.pack_shared; its optim.shared_prompt_kernel "sdpa"), and the text
slots of a KSA shared row in a layer whose window covers it (ksa/shared.py), where text attends causally
to text only. Per unit, three kinds of piece attend with no mask beyond plain causality, each one call of
a fused attention kernel that also returns its log-sum-exp:

    prompt:  o_P, l_P = attn(q_P, k_P, v_P, causal)
    cross:   o_X, l_X = attn(q_R, k_P, v_P)               q_R: all the unit's responses at once
    own:     o_i, l_i = attn(q_Ri, k_Ri, v_Ri, causal)     one call per response

A response token's output is the softmax over both key sets, merged from the two pieces:

    l = logaddexp(l_X, l_own)        o = exp(l_X - l) * o_X + exp(l_own - l) * o_own

Backward runs each piece's kernel backward with the merged (o, l) in place of the piece's own: a
piece's probabilities exp(s - l) are then the columns of the whole softmax, and rowsum(dO * o) is the
whole row's, so each piece gives the whole attention's gradient on its keys; the pieces' gradients add
up where they share queries (cross and own) or keys (prompt and cross). No K/V is copied per response,
and the prompt's keys are read by two calls whatever G is.

Kernels: cuDNN's fused attention on CUDA (FlashAttention-2 with cuDNN's SDPA backend switched off),
torch's flash kernel on the CPU (the tests' path). Grouped-query heads are expanded before the pieces
(autograd sums their gradients back). Every tensor a kernel sees is laid out [B, S, H, D] in memory (the
model's q, k, v are): with TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1, cuDNN then builds one plan per
power-of-two length instead of one per length (~80 ms a forward + backward at 1.7B / 32K on an H100,
bench/cudnn_plans.py); the pieces' lengths are new at almost every step.

Under a selective checkpoint that keeps attention ops' outputs (golong's checkpoint_policy "save_attention")
the pieces' kernels are dispatcher ops it keeps: the recompute reruns only the merge.

Slots outside every unit (a KSA row's summary slots) get zero output and zero gradient: the caller fills them.
"""

from __future__ import annotations

import os

import torch

aten = torch.ops.aten


MIN_MEAN_RESPONSE = 1024  # on CUDA the pieces pay off from this mean response length on (pays_off)


def long_enough(response_lengths) -> bool:
    """Whether responses average at least MIN_MEAN_RESPONSE tokens (none: no)."""
    lengths = list(response_lengths)
    return bool(lengths) and sum(lengths) >= MIN_MEAN_RESPONSE * len(lengths)


def pays_off(device: torch.device, response_lengths=()) -> bool:
    """Whether the pieces beat a single masked kernel where both apply. On CUDA: only with cuDNN's fused
    attention keying its plans by power-of-two length (TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1; without it a new
    length costs a plan, ~80 ms, and lengths change at almost every step), and only for responses that
    average at least MIN_MEAN_RESPONSE tokens (when given): each response is one more kernel call each way,
    outside the compiled graphs. On an H100 (2026-12-06) full attention's pieces took the learner 5.6 s a
    step against FlexAttention's 6.6 s with 2K-token responses (1.7B / 32K), 1.91 s against 1.26 s with
    256-token ones (0.6B / 8K). On the CPU (torch's flash kernel, no plans: the tests' path) always."""
    if device.type != "cuda":
        return True
    lengths = list(response_lengths)
    if lengths and not long_enough(lengths):
        return False
    return torch.backends.cuda.cudnn_sdp_enabled() and os.environ.get("TORCH_CUDNN_SDPA_AVOID_RECOMPILE") == "1"


TINY = 16  # a piece with at most this many queries and keys takes _tiny_attention


def _tiny_scores(q, k, causal: bool, scale: float) -> torch.Tensor:
    """Scores q k^T * scale [B, H, Lq, Lk] in float32 or wider, -inf above the diagonal when causal."""
    acc = torch.promote_types(q.dtype, torch.float32)
    s = q.to(acc) @ k.to(acc).transpose(-1, -2) * scale
    if causal:
        s = s.masked_fill(torch.ones(s.shape[-2:], dtype=torch.bool, device=s.device).triu(1), float("-inf"))
    return s


def _tiny_attention(q, k, v, causal: bool, scale: float):
    """A piece of a few tokens, computed from its scores: softmax(s) v and logsumexp(s). cuDNN's backward
    refuses one query over one key ("s_q = s_kv = 1 is not supported": a bucketed row's one padding token,
    a response of one token; H100, 2026-12-06), and a kernel launch costs more than the arithmetic here."""
    s = _tiny_scores(q, k, causal, scale)
    lse = torch.logsumexp(s, -1)
    return (torch.exp(s - lse.unsqueeze(-1)) @ v.to(s.dtype)).to(q.dtype), lse, ("tiny",)


def _tiny_backward(dout, q, k, v, out, lse, causal: bool, scale: float):
    """(dq, dk, dv) of a tiny piece given the merged (out, lse): P = exp(s - lse), dV = P^T dO,
    dS = P * (dO V^T - rowsum(dO * O)), dQ = dS K * scale, dK = dS^T Q * scale."""
    s = _tiny_scores(q, k, causal, scale)
    p = torch.exp(s - lse.to(s.dtype).unsqueeze(-1))
    do = dout.to(s.dtype)
    ds = p * (do @ v.to(s.dtype).transpose(-1, -2) - (do * out.to(s.dtype)).sum(-1, keepdim=True))
    return ((ds @ k.to(s.dtype) * scale).to(q.dtype), (ds.transpose(-1, -2) @ q.to(s.dtype) * scale).to(k.dtype),
            (p.transpose(-1, -2) @ do).to(v.dtype))


def _attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool, scale: float):
    """One piece: (output [B, H, Lq, D], log-sum-exp [B, H, Lq] float, what its backward needs)."""
    if q.shape[2] <= TINY and k.shape[2] <= TINY:
        return _tiny_attention(q, k, v, causal, scale)
    if not q.is_cuda:
        out, lse = aten._scaled_dot_product_flash_attention_for_cpu(q, k, v, 0.0, causal, scale=scale)
        return out, lse, ("cpu", lse.shape, lse.stride())
    if torch.backends.cuda.cudnn_sdp_enabled():
        out, lse, cq, ck, mq, mk, seed, offset, _ = aten._scaled_dot_product_cudnn_attention(
            q, k, v, None, True, 0.0, causal, False, scale=scale)
        kind = "cudnn"
    else:
        out, lse, cq, ck, mq, mk, seed, offset, _ = aten._scaled_dot_product_flash_attention(
            q, k, v, 0.0, causal, False, scale=scale)
        kind = "flash"
    return out, lse.reshape(q.shape[:3]), (kind, lse.shape, lse.stride(), cq, ck, mq, mk, seed, offset)


def _lse_as_forward(lse: torch.Tensor, shape, strides) -> torch.Tensor:
    """The merged log-sum-exp of a piece's queries in the shape and strides its forward kernel gave: its
    backward reads it that way. cuDNN's length-bucketed backward (TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1) reuses
    one plan for every length of a bucket, with the log-sum-exp strides of the first call: its forward lays
    the log-sum-exp out [B, S, H] (strides free of the length) with a unit last stride, and a contiguous
    [B, H, S] copy gave wrong gradients and an illegal memory access on an H100 (2026-12-06)."""
    return torch.empty_strided(shape, strides, dtype=lse.dtype, device=lse.device).copy_(lse.reshape(shape))


def _attention_backward(dout, q, k, v, out, lse, how, causal: bool, scale: float):
    """(dq, dk, dv) of one piece, given the row's merged output and log-sum-exp at its queries."""
    kind = how[0]
    if kind == "tiny":
        return _tiny_backward(dout, q, k, v, out, lse, causal, scale)
    lse = _lse_as_forward(lse, how[1], how[2])
    if kind == "cpu":
        return aten._scaled_dot_product_flash_attention_for_cpu_backward(dout, q, k, v, out, lse, 0.0, causal, scale=scale)
    cq, ck, mq, mk, seed, offset = how[3:]
    if kind == "cudnn":
        return aten._scaled_dot_product_cudnn_attention_backward(
            dout, q, k, v, out, lse, seed, offset, None, cq, ck, mq, mk, 0.0, causal, scale=scale)
    return aten._scaled_dot_product_flash_attention_backward(
        dout, q, k, v, out, lse, cq, ck, mq, mk, 0.0, causal, seed, offset, scale=scale)


def _bshd(t: torch.Tensor) -> torch.Tensor:
    """t [B, H, S, D] laid out as [B, S, H, D] in memory (a copy only if it is not)."""
    return t.transpose(1, 2).contiguous().transpose(1, 2)


def _cat_seq(parts: list[torch.Tensor]) -> torch.Tensor:
    """[B, H, S_i, D] pieces -> [B, H, sum S_i, D], laid out [B, S, H, D]."""
    return torch.cat([t.transpose(1, 2) for t in parts], 1).transpose(1, 2)


def _seq_zeros(like: torch.Tensor, length: int, trailing: tuple[int, ...]) -> torch.Tensor:
    """Zeros [B, H, length, *trailing] of like's dtype and device, laid out [B, length, H, *trailing]."""
    b, h = like.shape[:2]
    return like.new_zeros(b, length, h, *trailing).transpose(1, 2)


def _merge(o1, l1, o2, l2):
    """Two attentions of the same queries over disjoint key sets -> their attention over the union."""
    lse = torch.logaddexp(l1, l2)
    acc = torch.promote_types(o1.dtype, torch.float32)
    out = o1.to(acc) * torch.exp(l1 - lse).unsqueeze(-1) + o2.to(acc) * torch.exp(l2 - lse).unsqueeze(-1)
    return out.to(o1.dtype), lse


def repeat_heads(x: torch.Tensor, groups: int) -> torch.Tensor:
    """K / V [B, Hkv, S, D] -> [B, Hkv * groups, S, D] for grouped query heads, laid out [B, S, H, D] in
    memory as a model's q is (cuDNN keys its plans by power-of-two length for that layout only)."""
    return x.transpose(1, 2).repeat_interleave(groups, 2).transpose(1, 2)


def _responses(responses) -> tuple[list[tuple[int, int]], slice | None]:
    """A unit's non-empty responses and the slots they fill together (None: no response)."""
    kept = [(rs, r) for rs, r in responses if r]
    return kept, slice(kept[0][0], kept[0][0] + sum(r for _, r in kept)) if kept else None


def _check_layout(units) -> None:
    for (ps, p), responses in units:
        at = ps + p
        for rs, r in responses:
            if rs != at:
                raise ValueError(f"shared row: the response at {rs} does not follow its unit's last piece (at {at})")
            at += r


class _PiecesAttention(torch.autograd.Function):
    @staticmethod
    def forward(ctx, q, k, v, units, scale):
        out = _seq_zeros(q, q.shape[2], (v.shape[-1],))
        lse, saved = None, []
        for (ps, p), responses in units:
            kp, vp = k[:, :, ps : ps + p], v[:, :, ps : ps + p]
            o, l_p, how = _attention(q[:, :, ps : ps + p], kp, vp, True, scale)
            lse = _seq_zeros(l_p, q.shape[2], ()) if lse is None else lse
            out[:, :, ps : ps + p], lse[:, :, ps : ps + p] = o, l_p
            saved.append(how)
            responses, rows = _responses(responses)
            if rows is None:
                continue
            o_x, l_x, how_x = _attention(q[:, :, rows], kp, vp, False, scale)
            owns = [_attention(q[:, :, rs : rs + r], k[:, :, rs : rs + r], v[:, :, rs : rs + r], True, scale) for rs, r in responses]
            out[:, :, rows], lse[:, :, rows] = _merge(o_x, l_x, _cat_seq([o for o, _, _ in owns]), torch.cat([lse for _, lse, _ in owns], 2))
            saved.append((how_x, [how for _, _, how in owns]))
        ctx.save_for_backward(q, k, v, out, lse)
        ctx.units, ctx.scale, ctx.how = units, scale, saved
        return out

    @staticmethod
    def backward(ctx, dout):
        q, k, v, out, lse = ctx.saved_tensors
        dout = _bshd(dout)  # the strides of out
        dq, dk, dv = torch.zeros_like(q), torch.zeros_like(k), torch.zeros_like(v)
        how = iter(ctx.how)
        for (ps, p), responses in ctx.units:
            prompt = slice(ps, ps + p)
            grads = _attention_backward(dout[:, :, prompt], q[:, :, prompt], k[:, :, prompt], v[:, :, prompt],
                                        out[:, :, prompt], lse[:, :, prompt], next(how), True, ctx.scale)
            for total_grad, grad in zip((dq, dk, dv), grads, strict=True):
                total_grad[:, :, prompt] = grad
            responses, rows = _responses(responses)
            if rows is None:
                continue
            how_x, how_own = next(how)
            gq, gk, gv = _attention_backward(dout[:, :, rows], q[:, :, rows], k[:, :, prompt], v[:, :, prompt],
                                             out[:, :, rows], lse[:, :, rows], how_x, False, ctx.scale)
            dq[:, :, rows] = gq
            dk[:, :, prompt] += gk
            dv[:, :, prompt] += gv
            for (rs, r), how_i in zip(responses, how_own, strict=True):
                own = slice(rs, rs + r)
                gq, gk, gv = _attention_backward(dout[:, :, own], q[:, :, own], k[:, :, own], v[:, :, own],
                                                 out[:, :, own], lse[:, :, own], how_i, True, ctx.scale)
                dq[:, :, own] += gq
                dk[:, :, own] = gk
                dv[:, :, own] = gv
        return dq, dk, dv, None, None


@torch.compiler.disable
def pieces_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pieces, scale: float | None, gqa: bool) -> torch.Tensor:
    """A shared-prompt row's attention, q [1, Hq, L, D], k / v [1, Hkv, L, D] -> [1, Hq, L, D], from its
    golong.packing.SharedPieces (each unit: (prompt start, length), ((response start, length), ...)),
    piece by piece (module docstring). Outside the compiled layers' graphs: the pieces are Python numbers
    that differ row to row."""
    _check_layout(pieces.units)
    if gqa:
        k, v = (repeat_heads(t, q.shape[1] // k.shape[1]) for t in (k, v))
    return _PiecesAttention.apply(q, k, v, pieces.units, q.shape[-1] ** -0.5 if scale is None else scale)
