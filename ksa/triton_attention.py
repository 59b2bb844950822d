"""KSA attention as a Triton kernel (FlashAttention-2 style, forward + backward).

The kernel thinks in the *prefix order* of ksa/attention.py: per sequence, region rows [0, NS) are
the NS = (T // C) * S summaries and [0, T) the T text tokens. It never materialises that order: a
region row is turned into its slot of the interleaved layout by index arithmetic (`_slot`), so q, k,
v, the outputs and the gradients stay where the model has them. Query and key tiles never straddle
the two regions, so every tile knows its kind at compile time and the KSA mask (ksa/flex_attention.py,
`prefix_rule`) becomes index ranges per tile:

  text q tile, rows t in [t0, t0+BM), chunks c_lo..c_hi (c = t // C):
      text keys      [max(0, (c_lo-W)*C), t0+BM)          full tiles: k >= (c_hi-W)*C and k <= t0
      summary keys   [0, (c_hi-W)*S)                      full tiles: k < (c_lo-W)*S
  summary q tile, rows s (chunk s // S):
      text keys of its chunks [c_lo*C, (c_hi+1)*C), summary keys [c_lo*S, s0+BM)  (always masked)

Only those tiles are visited; the elementwise mask is evaluated only on edge tiles (never stored).
The backward pass mirrors this: dQ walks the same key tiles per query tile, dK/dV walk the query
tiles that see each key tile (a summary key is seen by every text query more than W chunks later, so
those loops are long and are launched first). Softmax uses base 2: qk2 = q.k * scale * log2(e),
lse2 = max + log2(sum), p = 2^(qk2 - lse2). GQA: dK/dV are computed per query head and summed over
the group afterwards (no atomics; a loop over the group inside the kernel spilled registers).
Packed sequences: one launch per sequence, each at its offset along L.

On a machine without CUDA the kernels run in Triton's interpreter (TRITON_INTERPRET=1, set here
before any kernel is defined): correct but slow, for tests on tiny shapes.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when @triton.jit runs, i.e. below

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

LOG2E = 1.4426950408889634
NEG = tl.constexpr(-1.0e30)  # finite "minus infinity": a row that has seen only masked keys stays finite
# Integer arguments that follow the sequence lengths. Triton compiles a kernel again for each new pattern
# of its integer arguments being 1 or a multiple of 16; these only bound loops and masks (addresses scale
# by D, a constexpr), so they are left unspecialised: one compile serves every length and packing.
# KSA_TRITON_SPECIALIZE_LENGTHS=1 (read at import) specialises them again, for timing the two against
# each other (bench/run_h200.sh ksaspec).
LENGTH_ARGS = [] if os.environ.get("KSA_TRITON_SPECIALIZE_LENGTHS") == "1" else ["BASE", "T", "NS", "W", "n_tiles", "L"]


@triton.jit
def _attrs(rows, IS_SUM: tl.constexpr, C: tl.constexpr, S: tl.constexpr):
    """(chunk, pos) of region rows: summary -> (s // S, s % S), text -> (t // C, t)."""
    if IS_SUM:
        return rows // S, rows % S
    else:
        return rows // C, rows


@triton.jit
def _allowed(q_rows, k_rows, W, Q_SUM: tl.constexpr, K_SUM: tl.constexpr, C: tl.constexpr, S: tl.constexpr,
             KEYS_DOWN: tl.constexpr):  # fmt: skip
    """The KSA rule for a [BM, BN] tile (q and k rows in their own region's coordinates), or with
    KEYS_DOWN for the transposed [BN, BM] tile (keys down, queries across) of the backward."""
    qc, qp = _attrs(q_rows, Q_SUM, C, S)
    kc, kp = _attrs(k_rows, K_SUM, C, S)
    if KEYS_DOWN:
        qc, qp = qc[None, :], qp[None, :]
        kc, kp = kc[:, None], kp[:, None]
    else:
        qc, qp = qc[:, None], qp[:, None]
        kc, kp = kc[None, :], kp[None, :]
    if Q_SUM:
        if K_SUM:
            ok = (kc == qc) & (kp <= qp)
        else:
            ok = kc == qc
    else:
        if K_SUM:
            ok = kc < qc - W
        else:
            ok = (kp <= qp) & (kc >= qc - W)
    return ok


@triton.jit
def _slot(rows, IS_SUM: tl.constexpr, C: tl.constexpr, S: tl.constexpr):
    """Interleaved index of region rows: summary s -> (s // S) * (C + S) + C + s % S, text t -> t + (t // C) * S."""
    if IS_SUM:
        return (rows // S) * (C + S) + C + rows % S
    else:
        return rows + (rows // C) * S


@triton.jit
def _tile_ptr(row0, limit, IS_SUM: tl.constexpr, C: tl.constexpr, S: tl.constexpr,
              ROWS: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr):  # fmt: skip
    """Element offsets and mask of the tile of region rows [row0, row0 + ROWS), for the final store.

    Written as (scalar start) + (local part) so that the compiler does not merge it with the load
    addresses computed at the start, which would keep a [ROWS, D] address tensor live in registers."""
    r = tl.arange(0, ROWS)
    d = tl.arange(0, BLOCK_D)
    if IS_SUM:
        first = (row0 // S) * (C + S) + C
        j = row0 % S + r
        idx = first + (j // S) * (C + S) + j % S
    else:
        first = row0 + (row0 // C) * S
        j = row0 % C + r
        idx = first + r + (j // C) * S
    return idx[:, None] * D + d[None, :], ((row0 + r) < limit)[:, None] & (d < D)[None, :]


@triton.jit
def _q_visit(
    acc, m_i, l_i, q, do, lse, delta, q_rows,
    k_base, v_base, seg, n_lo, n_hi, limit, qk_scale, W,
    MODE: tl.constexpr, MASKED: tl.constexpr, Q_SUM: tl.constexpr, K_SUM: tl.constexpr,
    C: tl.constexpr, S: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """Walk key tiles [n_lo, n_hi) of one region for a query tile. MODE 0: forward (online softmax
    into acc, m_i, l_i); MODE 1: dQ (acc += dS @ K, unscaled)."""
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    for n0 in range(n_lo, n_hi, BLOCK_N):
        rows = n0 + offs_n
        ptr = (seg + _slot(rows, K_SUM, C, S))[:, None] * D + offs_d[None, :]
        ld = (rows < limit)[:, None] & (offs_d < D)[None, :]
        k = tl.load(k_base + ptr, mask=ld, other=0.0)
        v = tl.load(v_base + ptr, mask=ld, other=0.0)
        qk = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale
        if MASKED:
            qk = tl.where(_allowed(q_rows, rows, W, Q_SUM, K_SUM, C, S, False), qk, NEG)
        if MODE == 0:
            m_new = tl.maximum(m_i, tl.max(qk, 1))
            alpha = tl.math.exp2(m_i - m_new)
            p = tl.math.exp2(qk - m_new[:, None])
            l_i = l_i * alpha + tl.sum(p, 1)
            acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
            m_i = m_new
        else:
            p = tl.math.exp2(qk - lse[:, None])
            dp = tl.dot(do, tl.trans(v), input_precision=PREC)
            ds = p * (dp - delta[:, None])
            acc = tl.dot(ds.to(k.dtype), k, acc, input_precision=PREC)
    return acc, m_i, l_i


@triton.jit(do_not_specialize=LENGTH_ARGS)
def _q_side_kernel(
    Q, K, V, Out, LSE, DO, DELTA, DQ,
    BASE, T, NS, W, n_tiles, L, HQ, GROUP, qk_scale, scale,
    MODE: tl.constexpr, Q_SUM: tl.constexpr, VIS: tl.constexpr, SPLIT: tl.constexpr, C: tl.constexpr, S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """One query tile: forward (MODE 0: O, LSE) or dQ (MODE 1). Grid: (B * HQ, n_tiles)."""
    pid = n_tiles - 1 - tl.program_id(1)  # later tiles see more summaries: start them (all heads) first
    bh = tl.program_id(0)
    b = bh // HQ
    hk = (bh % HQ) // GROUP
    q_off = bh.to(tl.int64) * L * D
    kv_off = (b * (HQ // GROUP) + hk).to(tl.int64) * L * D
    k_base, v_base = K + kv_off, V + kv_off

    m0 = pid * BLOCK_M
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    q_rows = m0 + offs_m
    if Q_SUM:
        q_limit = NS
    else:
        q_limit = T
    row_ok = q_rows < q_limit
    q_slots = BASE + _slot(q_rows, Q_SUM, C, S)
    ptr = q_slots[:, None] * D + offs_d[None, :]
    ld = row_ok[:, None] & (offs_d < D)[None, :]
    q = tl.load(Q + q_off + ptr, mask=ld, other=0.0)
    acc = tl.zeros([BLOCK_M, BLOCK_D], dtype=tl.float32)
    m_i = tl.full([BLOCK_M], NEG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    if MODE == 0:
        do = q  # unused
        lse = l_i
        delta = l_i
    else:
        do = tl.load(DO + q_off + ptr, mask=ld, other=0.0)
        lse = tl.load(LSE + bh.to(tl.int64) * L + q_slots, mask=row_ok, other=float("inf"))
        delta = tl.load(DELTA + bh.to(tl.int64) * L + q_slots, mask=row_ok, other=0.0)

    last = tl.minimum(m0 + BLOCK_M, q_limit) - 1
    if Q_SUM:
        c_lo = m0 // S
        c_hi = last // S
        # text of the own chunks, then the own chunks' summaries up to the query (all edge tiles)
        acc, m_i, l_i = _q_visit(acc, m_i, l_i, q, do, lse, delta, q_rows, k_base, v_base, BASE,
                                 c_lo * C, (c_hi + 1) * C, T, qk_scale, W,
                                 MODE, True, True, False, C, S, BLOCK_N, BLOCK_D, D, PREC)  # fmt: skip
        acc, m_i, l_i = _q_visit(acc, m_i, l_i, q, do, lse, delta, q_rows, k_base, v_base, BASE,
                                 c_lo * S, last + 1, NS, qk_scale, W,
                                 MODE, True, True, True, C, S, BLOCK_N, BLOCK_D, D, PREC)  # fmt: skip
    else:
        c_lo = m0 // C
        c_hi = last // C
        hi = last + 1
        start = tl.maximum(c_lo - W, 0) * C // BLOCK_N * BLOCK_N
        fa = tl.cdiv(tl.maximum(c_hi - W, 0) * C, BLOCK_N) * BLOCK_N
        a = tl.minimum(tl.maximum(fa, start), hi)
        bnd = tl.minimum(tl.maximum(a, (m0 + 1) // BLOCK_N * BLOCK_N), hi)
        if SPLIT:  # edge tiles masked, the middle of the band without a mask
            acc, m_i, l_i = _q_visit(acc, m_i, l_i, q, do, lse, delta, q_rows, k_base, v_base, BASE,
                                     start, a, T, qk_scale, W,
                                     MODE, True, False, False, C, S, BLOCK_N, BLOCK_D, D, PREC)  # fmt: skip
            acc, m_i, l_i = _q_visit(acc, m_i, l_i, q, do, lse, delta, q_rows, k_base, v_base, BASE,
                                     a, bnd, T, qk_scale, W,
                                     MODE, False, False, False, C, S, BLOCK_N, BLOCK_D, D, PREC)  # fmt: skip
            acc, m_i, l_i = _q_visit(acc, m_i, l_i, q, do, lse, delta, q_rows, k_base, v_base, BASE,
                                     bnd, hi, T, qk_scale, W,
                                     MODE, True, False, False, C, S, BLOCK_N, BLOCK_D, D, PREC)  # fmt: skip
        else:  # one loop, mask everywhere: fewer live registers than three pipelined loops
            acc, m_i, l_i = _q_visit(acc, m_i, l_i, q, do, lse, delta, q_rows, k_base, v_base, BASE,
                                     start, hi, T, qk_scale, W,
                                     MODE, True, False, False, C, S, BLOCK_N, BLOCK_D, D, PREC)  # fmt: skip
        if VIS:
            s_full = tl.maximum(c_lo - W, 0) * S // BLOCK_N * BLOCK_N
            s_hi = tl.maximum(c_hi - W, 0) * S
            if SPLIT:
                acc, m_i, l_i = _q_visit(acc, m_i, l_i, q, do, lse, delta, q_rows, k_base, v_base, BASE,
                                         0, s_full, NS, qk_scale, W,
                                         MODE, False, False, True, C, S, BLOCK_N, BLOCK_D, D, PREC)  # fmt: skip
            else:
                s_full = 0
            acc, m_i, l_i = _q_visit(acc, m_i, l_i, q, do, lse, delta, q_rows, k_base, v_base, BASE,
                                     s_full, s_hi, NS, qk_scale, W,
                                     MODE, True, False, True, C, S, BLOCK_N, BLOCK_D, D, PREC)  # fmt: skip

    # output addresses rebuilt here rather than kept live in registers through the loops
    o_ptr, o_ld = _tile_ptr(m0, q_limit, Q_SUM, C, S, BLOCK_M, BLOCK_D, D)
    o_ptr += BASE * D
    if MODE == 0:
        out = acc / l_i[:, None]
        tl.store(Out + q_off + o_ptr, out.to(Out.dtype.element_ty), mask=o_ld)
        tl.store(LSE + bh.to(tl.int64) * L + q_slots, m_i + tl.math.log2(l_i), mask=row_ok)
    else:
        tl.store(DQ + q_off + o_ptr, (acc * scale).to(DQ.dtype.element_ty), mask=o_ld)


@triton.jit
def _kv_visit(
    dk, dv, k, v, k_rows, q_base, do_base, lse_base, delta_base, seg, m_lo, m_hi, limit, qk_scale, W,
    MASKED: tl.constexpr, Q_SUM: tl.constexpr, K_SUM: tl.constexpr, C: tl.constexpr, S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """Walk query tiles [m_lo, m_hi) of one region for a key tile: dV += P^T dO, dK += dS^T Q (unscaled)."""
    offs_m = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, BLOCK_D)
    for m0 in range(m_lo, m_hi, BLOCK_M):
        rows = m0 + offs_m
        row_ok = rows < limit
        slots = seg + _slot(rows, Q_SUM, C, S)
        ptr = slots[:, None] * D + offs_d[None, :]
        ld = row_ok[:, None] & (offs_d < D)[None, :]
        q = tl.load(q_base + ptr, mask=ld, other=0.0)
        do = tl.load(do_base + ptr, mask=ld, other=0.0)
        lse = tl.load(lse_base + slots, mask=row_ok, other=float("inf"))
        delta = tl.load(delta_base + slots, mask=row_ok, other=0.0)
        # keys along M (BN = 128 rows) keeps the Hopper MMAs at M >= 64 even for short query tiles
        qk_t = tl.dot(k, tl.trans(q), input_precision=PREC) * qk_scale  # [BN, BM]
        if MASKED:
            qk_t = tl.where(_allowed(rows, k_rows, W, Q_SUM, K_SUM, C, S, True), qk_t, NEG)
        p_t = tl.math.exp2(qk_t - lse[None, :])
        dv = tl.dot(p_t.to(do.dtype), do, dv, input_precision=PREC)
        dp_t = tl.dot(v, tl.trans(do), input_precision=PREC)
        ds_t = p_t * (dp_t - delta[None, :])
        dk = tl.dot(ds_t.to(q.dtype), q, dk, input_precision=PREC)
    return dk, dv


@triton.jit(do_not_specialize=[a for a in LENGTH_ARGS if a != "n_tiles"])
def _dkdv_kernel(
    Q, K, V, DO, LSE, DELTA, DK, DV,
    BASE, T, NS, W, L, HQ, GROUP, qk_scale, scale,
    K_SUM: tl.constexpr, VIS: tl.constexpr, SPLIT: tl.constexpr, C: tl.constexpr, S: tl.constexpr,
    BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr,
    PREC: tl.constexpr,
):  # fmt: skip
    """dK, dV of one key tile from one query head (GQA: summed over the group afterwards, outside; a loop
    over the group here would keep too many registers live). Grid: (B * HQ, tiles)."""
    n0 = tl.program_id(1) * BLOCK_N  # the first key tiles have the longest loops: all heads start there
    bh = tl.program_id(0)
    kv_off = ((bh // HQ) * (HQ // GROUP) + (bh % HQ) // GROUP).to(tl.int64) * L * D
    q_off = bh.to(tl.int64) * L * D
    offs_n = tl.arange(0, BLOCK_N)
    offs_d = tl.arange(0, BLOCK_D)
    k_rows = n0 + offs_n
    if K_SUM:
        k_limit = NS
        per = S
    else:
        k_limit = T
        per = C
    ptr = (BASE + _slot(k_rows, K_SUM, C, S))[:, None] * D + offs_d[None, :]
    ld = (k_rows < k_limit)[:, None] & (offs_d < D)[None, :]
    k = tl.load(K + kv_off + ptr, mask=ld, other=0.0)
    v = tl.load(V + kv_off + ptr, mask=ld, other=0.0)
    dk = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    dv = tl.zeros([BLOCK_N, BLOCK_D], dtype=tl.float32)
    kc_lo = n0 // per
    kc_hi = (tl.minimum(n0 + BLOCK_N, k_limit) - 1) // per
    q_base, do_base = Q + q_off, DO + q_off
    lse_base, delta_base = LSE + bh.to(tl.int64) * L, DELTA + bh.to(tl.int64) * L
    if K_SUM:
        if VIS:  # text queries more than W chunks later; all of them once past the tile's last chunk
            start = tl.minimum((kc_lo + W + 1) * C, T) // BLOCK_M * BLOCK_M
            fa = tl.minimum(tl.cdiv((kc_hi + W + 1) * C, BLOCK_M) * BLOCK_M, T)
            fa = tl.maximum(fa, start)
            if not SPLIT:
                fa = T
            dk, dv = _kv_visit(dk, dv, k, v, k_rows, q_base, do_base, lse_base, delta_base, BASE,
                               start, fa, T, qk_scale, W,
                               True, False, True, C, S, BLOCK_M, BLOCK_D, D, PREC)  # fmt: skip
            if SPLIT:
                dk, dv = _kv_visit(dk, dv, k, v, k_rows, q_base, do_base, lse_base, delta_base, BASE,
                                   fa, T, T, qk_scale, W,
                                   False, False, True, C, S, BLOCK_M, BLOCK_D, D, PREC)  # fmt: skip
        dk, dv = _kv_visit(dk, dv, k, v, k_rows, q_base, do_base, lse_base, delta_base, BASE,
                           n0, tl.minimum((kc_hi + 1) * S, NS), NS, qk_scale, W,
                           True, True, True, C, S, BLOCK_M, BLOCK_D, D, PREC)  # fmt: skip
    else:
        end = tl.minimum((kc_hi + W + 1) * C, T)
        start = n0 // BLOCK_M * BLOCK_M
        fa = tl.cdiv(n0 + BLOCK_N - 1, BLOCK_M) * BLOCK_M
        fb = tl.minimum((kc_lo + W + 1) * C, T) // BLOCK_M * BLOCK_M
        a = tl.minimum(tl.maximum(fa, start), end)
        bnd = tl.minimum(tl.maximum(a, fb), end)
        if SPLIT:
            dk, dv = _kv_visit(dk, dv, k, v, k_rows, q_base, do_base, lse_base, delta_base, BASE,
                               start, a, T, qk_scale, W,
                               True, False, False, C, S, BLOCK_M, BLOCK_D, D, PREC)  # fmt: skip
            dk, dv = _kv_visit(dk, dv, k, v, k_rows, q_base, do_base, lse_base, delta_base, BASE,
                               a, bnd, T, qk_scale, W,
                               False, False, False, C, S, BLOCK_M, BLOCK_D, D, PREC)  # fmt: skip
        else:
            bnd = start
        dk, dv = _kv_visit(dk, dv, k, v, k_rows, q_base, do_base, lse_base, delta_base, BASE,
                           bnd, end, T, qk_scale, W,
                           True, False, False, C, S, BLOCK_M, BLOCK_D, D, PREC)  # fmt: skip
        # summaries of the tile's complete chunks read their chunk's text
        dk, dv = _kv_visit(dk, dv, k, v, k_rows, q_base, do_base, lse_base, delta_base, BASE,
                           kc_lo * S, tl.minimum((kc_hi + 1) * S, NS), NS, qk_scale, W,
                           True, True, False, C, S, BLOCK_M, BLOCK_D, D, PREC)  # fmt: skip

    o_ptr, o_ld = _tile_ptr(n0, k_limit, K_SUM, C, S, BLOCK_N, BLOCK_D, D)
    o_ptr += q_off + BASE * D
    tl.store(DK + o_ptr, (dk * scale).to(DK.dtype.element_ty), mask=o_ld)
    tl.store(DV + o_ptr, dv.to(DV.dtype.element_ty), mask=o_ld)


@triton.jit(do_not_specialize=["n_rows"])
def _delta_kernel(Out, DO, DELTA, n_rows, BLOCK: tl.constexpr, BLOCK_D: tl.constexpr, D: tl.constexpr):
    """delta = rowsum(dO * Out) in fp32 (the softmax-backward correction term)."""
    rows = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    offs_d = tl.arange(0, BLOCK_D)
    ld = (rows < n_rows)[:, None] & (offs_d < D)[None, :]
    ptr = rows.to(tl.int64)[:, None] * D + offs_d[None, :]
    o = tl.load(Out + ptr, mask=ld, other=0.0).to(tl.float32)
    do = tl.load(DO + ptr, mask=ld, other=0.0).to(tl.float32)
    tl.store(DELTA + rows, tl.sum(o * do, 1), mask=rows < n_rows)


# ---------------------------------------------------------------- launch


# (BLOCK_M, BLOCK_N, num_warps, num_stages) per kernel: the fastest of a small sweep on an H200
# (bench/ksa_attention.py --sweep), checked for register spills with cuobjdump -res-usage.
GPU_TILES = {
    "fwd": (64, 64, 4, 3),  # query tile x key tile
    "dq": (64, 64, 4, 2),  # query tile x key tile
    "kv": (64, 128, 8, 2),  # query tile x key tile (each program owns the key tile)
}
# True: full tiles of a band run in their own loop without the elementwise mask; False: one masked
# loop per region (fewer loops). Both are exact; the benchmark's sweep picks.
SPLIT_FULL_TILES = True
INTERPRETER_TILES = {"fwd": (16, 16, 4, 1), "dq": (16, 16, 4, 1), "kv": (16, 16, 4, 1)}


def _tiles(device: torch.device, kernel: str) -> tuple[int, int, int, int]:
    """Tile sizes of `kernel`. Interpreter: small tiles so tiny tests cross tile edges."""
    return (GPU_TILES if device.type == "cuda" else INTERPRETER_TILES)[kernel]


def _segments(seq_lens, chunk, summaries, window, q, k, scale, vis):
    """Kernel arguments of each packed sequence: its start in L, text length, summary count."""
    b, hq, length, d = q.shape
    common = dict(
        L=length, HQ=hq, GROUP=hq // k.shape[1], qk_scale=scale * LOG2E, scale=scale, VIS=vis,
        SPLIT=SPLIT_FULL_TILES, C=chunk, S=summaries, BLOCK_D=max(16, triton.next_power_of_2(d)), D=d,
        PREC="ieee" if q.dtype == torch.float32 else "tf32",
    )  # fmt: skip
    start = 0
    for text_len in seq_lens:
        n_sum = (text_len // chunk) * summaries
        # a window past the last chunk changes nothing; clamping keeps the index arithmetic in int32
        yield dict(common, BASE=start, T=text_len, NS=n_sum, W=min(window, text_len // chunk + 1))
        start += text_len + n_sum


def _forward(q, k, v, seq_lens, chunk, summaries, window, scale, vis):
    b, hq, length, d = q.shape
    o = torch.empty_like(q)
    lse = torch.empty(b, hq, length, device=q.device, dtype=torch.float32)
    bm, bn, warps, stages = _tiles(q.device, "fwd")
    for args in _segments(seq_lens, chunk, summaries, window, q, k, scale, vis):
        for q_sum, rows in ((True, args["NS"]), (False, args["T"])):
            n_tiles = triton.cdiv(rows, bm)
            if n_tiles:
                _q_side_kernel[(b * hq, n_tiles)](
                    q, k, v, o, lse, q, lse, q, n_tiles=n_tiles, MODE=0, Q_SUM=q_sum,
                    BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **args,
                )  # fmt: skip
    return o, lse


def _backward(q, k, v, o, lse, do, seq_lens, chunk, summaries, window, scale, vis):
    b, hq, length, d = q.shape
    group = hq // k.shape[1]
    delta = torch.empty_like(lse)
    n_rows = b * hq * length
    _delta_kernel[(triton.cdiv(n_rows, 64),)](
        o, do, delta, n_rows, BLOCK=64, BLOCK_D=max(16, triton.next_power_of_2(d)), D=d
    )
    dq = torch.empty_like(q)
    # dK, dV per query head; with GQA in fp32 and summed over each group below
    dk, dv = (torch.empty(q.shape, device=q.device, dtype=torch.float32 if group > 1 else q.dtype) for _ in "kv")
    for args in _segments(seq_lens, chunk, summaries, window, q, k, scale, vis):
        bm, bn, warps, stages = _tiles(q.device, "dq")
        for q_sum, rows in ((True, args["NS"]), (False, args["T"])):
            n_tiles = triton.cdiv(rows, bm)
            if n_tiles:
                _q_side_kernel[(b * hq, n_tiles)](
                    q, k, v, o, lse, do, delta, dq, n_tiles=n_tiles, MODE=1, Q_SUM=q_sum,
                    BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **args,
                )  # fmt: skip
        bm, bn, warps, stages = _tiles(q.device, "kv")
        for k_sum, rows in ((True, args["NS"]), (False, args["T"])):  # long summary-key loops first
            n_tiles = triton.cdiv(rows, bn)
            if n_tiles:
                _dkdv_kernel[(b * hq, n_tiles)](
                    q, k, v, do, lse, delta, dk, dv, K_SUM=k_sum,
                    BLOCK_M=bm, BLOCK_N=bn, num_warps=warps, num_stages=stages, **args,
                )  # fmt: skip
    if group > 1:
        dk, dv = (x.view(b, hq // group, group, length, d).sum(2).to(k.dtype) for x in (dk, dv))
    return dq, dk, dv


def interpreted(kernel) -> bool:
    """True when `kernel` *and* triton's own library functions were defined in interpreter mode."""
    return all(type(f).__name__ == "InterpretedFunction" for f in (kernel, tl.zeros))


# ---------------------------------------------------------------- the kernels as torch ops
# Registered as custom ops so torch.compile treats them as opaque calls (with shapes from the fake
# implementations) and fuses everything around them; autograd goes through register_autograd.


def require_backend(q: torch.Tensor, kernel, what: str) -> None:
    """A clear error where `kernel` cannot run on q's device (shared by the KSA Triton kernels)."""
    if q.device.type != "cuda" and not interpreted(kernel):
        raise RuntimeError(
            f"{what} needs CUDA tensors, or (slow, for tests) TRITON_INTERPRET=1 set in the "
            "environment before anything imports triton (e.g. at the top of conftest.py)"
        )


@torch.library.custom_op("ksa::triton_attention", mutates_args=())
def triton_attention_op(
    q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, seq_lens: list[int],
    chunk: int, summaries: int, window: int, scale: float, summaries_visible: bool,
) -> tuple[torch.Tensor, torch.Tensor]:  # fmt: skip
    """(out [B, Hq, L, D], lse [B, Hq, L] float32, base 2) of KSA attention on the interleaved layout."""
    require_backend(q, _q_side_kernel, "impl='triton'")
    q, k, v = (x.contiguous() for x in (q, k, v))
    return _forward(q, k, v, tuple(seq_lens), chunk, summaries, window, scale, summaries_visible)


@triton_attention_op.register_fake
def _(q, k, v, seq_lens, chunk, summaries, window, scale, summaries_visible):
    return torch.empty_like(q, memory_format=torch.contiguous_format), q.new_empty(q.shape[:3], dtype=torch.float32)


@torch.library.custom_op("ksa::triton_attention_backward", mutates_args=())
def triton_attention_backward_op(
    grad_out: torch.Tensor, q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, out: torch.Tensor, lse: torch.Tensor,
    seq_lens: list[int], chunk: int, summaries: int, window: int, scale: float, summaries_visible: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:  # fmt: skip
    """(dq, dk, dv) of `triton_attention_op` given the gradient of its output."""
    require_backend(q, _q_side_kernel, "impl='triton'")
    q, k, v, out, grad_out = (x.contiguous() for x in (q, k, v, out, grad_out))
    return _backward(q, k, v, out, lse.contiguous(), grad_out, tuple(seq_lens), chunk, summaries, window, scale, summaries_visible)


@triton_attention_backward_op.register_fake
def _(grad_out, q, k, v, out, lse, seq_lens, chunk, summaries, window, scale, summaries_visible):
    return tuple(torch.empty_like(x, memory_format=torch.contiguous_format) for x in (q, k, v))


def _setup_context(ctx, inputs, output) -> None:
    q, k, v, *cfg = inputs
    ctx.save_for_backward(q, k, v, *output)
    ctx.cfg = cfg
    ctx.mark_non_differentiable(output[1])


def _backward_rule(ctx, grad_out, _grad_lse):
    q, k, v, out, lse = ctx.saved_tensors
    dq, dk, dv = triton_attention_backward_op(grad_out, q, k, v, out, lse, *ctx.cfg)
    return dq, dk, dv, None, None, None, None, None, None


triton_attention_op.register_autograd(_backward_rule, setup_context=_setup_context)


def triton_ksa_attention(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    *,
    seq_lens: tuple[int, ...],
    chunk: int,
    summaries: int,
    window: int,
    scale: float,
    summaries_visible: bool,
) -> torch.Tensor:
    """KSA attention of q, k, v ([B, H, L, D]) on the interleaved layout, packed sequences along L."""
    out, _ = triton_attention_op(q, k, v, list(seq_lens), chunk, summaries, window, scale, summaries_visible)
    return out
