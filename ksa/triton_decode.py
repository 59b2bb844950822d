"""Split-K flash decoding: a few stacked queries attend to one part of a key set, in key splits.

Decode attention over keys held in several parts (a shared prompt, a row's own keys, ...) is done
part by part and merged by log-sum-exp. For one part, per batch entry n and kv head h:

  q [N, H, M, D] (M stacked queries), k, v [N, H, S, D], bias [N, Wd, C, S] float32 (0 visible,
  -inf or -1e30 hidden); query m = (w * G + g) * C + c (w < Wd, g < G, c < C, M = Wd * G * C)
  reads bias row (n, w, c), the same for every g of the group:

      s[n, h, m, j] = (q[n, h, m] . k[n, h, j]) * scale + bias[n, w(m), c(m), j]

  X = ceil(S / split) splits of the key axis; split x holds keys [x * split, min(x * split + split, S)),
  split = split_size(N * H, S) unless the caller names one (a power of two, 128..2048: the largest that
  gives at least TARGET_PROGRAMS programs, so that a short key part or few (n, h) still fill the GPU):

      lse[n, h, x, m]    = log sum_{j in x} exp(s[n, h, m, j])              (-inf: every key hidden)
      o[n, h, x, m, :]   = sum_{j in x} exp(s[n, h, m, j] - lse[n, h, x, m]) v[n, h, j, :]   (0 then)

  One launch may take a second key part of the same queries (k2, v2, bias2 over S2 keys): its splits
  follow the first's (X = X1 + X2), so a KSA layer's window text and summaries cost one launch, not two.

  merge_partials combines any number of splits (of one part or several parts concatenated on axis 2):

      out = sum_x exp(lse_x - mx) o_x / sum_x exp(lse_x - mx),   mx = max_x lse_x

The kernel (grid N * H by X) loads the M queries of (n, h) as one tile and walks its split in key
tiles with an online softmax in base 2 (qk2 = s * log2(e)) whose running max starts at the finite
-1e30, so hidden keys give p = 0 and a fully hidden split gives l = 0 (never NaN). k, v and bias are
read in place through their strides (they are slices of caches; a copy would cost more than the
attention) and never beyond key S.

On a machine without CUDA the kernel runs in Triton's interpreter (TRITON_INTERPRET=1, set here
before the kernel is defined): correct but slow, for tests on tiny shapes.
"""

from __future__ import annotations

import os

import torch

if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")  # read when @triton.jit runs, i.e. below

import triton  # noqa: E402
import triton.language as tl  # noqa: E402

from ksa.triton_attention import require_backend  # noqa: E402

SPLIT = 2048  # most keys per split (one program each); see split_size
MIN_SPLIT = 128  # fewest: below, writing a split's partials costs more than a quarter of reading its K/V
TARGET_PROGRAMS = 128  # about one program per SM of an H100 / H200 (132 SMs); see split_size
BLOCK_N = 64  # keys per tile inside a split
LOG2E = 1.4426950408889634
_LOG2E = tl.constexpr(LOG2E)
_NEG = tl.constexpr(-1.0e30)  # finite "minus infinity" for the running max

assert SPLIT % MIN_SPLIT == 0 and MIN_SPLIT % BLOCK_N == 0


def split_size(programs: int, keys: int) -> int:
    """Keys per split for `programs` = N * H (batch entries x KV heads) over `keys` keys: SPLIT, halved
    while fewer than TARGET_PROGRAMS programs would run and the split stays >= MIN_SPLIT. (A part of
    1,024 keys over 2 x 8 (n, h) runs 128 programs of 128 keys, not 32 of 512 on a 132-SM GPU: 1.13-1.22x
    faster on an H100. A target of 256 programs, two per SM, halved 4,096 keys over 2 x 8 to 256-key splits
    and ran 0.86-0.89x with 16-32 queries: bench/results/h100_2026-12-06/decode_kernel_target256.json.
    Long parts: a shared prompt's 8K-32K keys over 2-4 x 8 (n, h), 16 stacked queries, kernel + compiled
    merge at 512 / 1,024 / 2,048 / 4,096 keys a split: 4 x 8K 60 / 59 / 53 / 64 us, 2 x 8K 38 / 34 / 37 /
    62, 4 x 32K 200 / 188 / 190 / 193, 2 x 32K 103 / 102 / 103 / 99 (H100, bench/decode_kernel.py --splits,
    bench/results/h100_2026-12-06e/call7_splits/): splits of up to 2,048 keys are as fast or faster, with
    a quarter of the partials to merge, hence SPLIT = 2048 (it was 512).)"""
    split = SPLIT
    while split > MIN_SPLIT and programs * -(-keys // split) < TARGET_PROGRAMS:
        split //= 2
    return split


@triton.jit
def _key_tile(q, k_base, v_base, bias_rows, cols, hi, row_ok, sk_s, sk_d, sv_s, sv_d, sb_s,
              qk_scale, D: tl.constexpr, PREC: tl.constexpr):  # fmt: skip
    """Base-2 scores [BLOCK_M, BLOCK_N] of one key tile and its values: q.k * scale * log2(e) +
    bias * log2(e) (bias_rows [BLOCK_M]: each query's bias row); keys >= hi (and padded query rows)
    -inf, never loaded."""
    offs_d = tl.arange(0, D)
    key_ok = cols < hi
    k = tl.load(k_base + cols[:, None] * sk_s + offs_d[None, :] * sk_d, mask=key_ok[:, None], other=0.0)
    v = tl.load(v_base + cols[:, None] * sv_s + offs_d[None, :] * sv_d, mask=key_ok[:, None], other=0.0)
    vis = row_ok[:, None] & key_ok[None, :]
    bias = tl.load(bias_rows[:, None] + cols[None, :] * sb_s, mask=vis, other=float("-inf"))
    s = tl.dot(q, tl.trans(k), input_precision=PREC) * qk_scale + bias.to(tl.float32) * _LOG2E
    return s, v


@triton.jit
def _decode_kernel(
    Q, K, V, Bias, K2, V2, Bias2, Out, LSE,
    H, M, S, S2, X1, X, G, C, qk_scale,
    sk_s, sk_d, sv_s, sv_d, sb_s,
    sk_n, sk_h, sv_n, sv_h, sb_n, sb_w, sb_c,
    sk2_n, sk2_h, sv2_n, sv2_h, sb2_n, sb2_w, sb2_c,
    SPLIT_: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N_: tl.constexpr, D: tl.constexpr, PREC: tl.constexpr,
):  # fmt: skip
    """One (n, h) and one split x: (o, lse) of its M queries. Grid: (N * H, X). Splits x < X1 are the
    first key part's (K, V, Bias over S keys), the others the second's (K2, V2, Bias2 over S2). The
    parts share their key and head-dim strides (sk_s ... sb_s: the caller checks), so the branch below
    picks only base addresses and bounds, never a stride Triton may have specialised in one part alone."""
    nh = tl.program_id(0)
    x = tl.program_id(1)
    n = (nh // H).to(tl.int64)
    h = (nh % H).to(tl.int64)
    rows = tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, D)
    row_ok = rows < M
    q_ptr = Q + nh.to(tl.int64) * M * D + rows[:, None] * D + offs_d[None, :]
    q = tl.load(q_ptr, mask=row_ok[:, None], other=0.0)
    w_row = (rows // (G * C)).to(tl.int64)  # query m -> bias row (n, w, c)
    c_row = (rows % C).to(tl.int64)
    if x < X1:
        k_base = K + (n * sk_n + h * sk_h)
        v_base = V + (n * sv_n + h * sv_h)
        bias_ptr = Bias + (n * sb_n + w_row * sb_w + c_row * sb_c)
        lo = x * SPLIT_
        hi = tl.minimum(lo + SPLIT_, S)
    else:
        k_base = K2 + (n * sk2_n + h * sk2_h)
        v_base = V2 + (n * sv2_n + h * sv2_h)
        bias_ptr = Bias2 + (n * sb2_n + w_row * sb2_w + c_row * sb2_c)
        lo = (x - X1) * SPLIT_
        hi = tl.minimum(lo + SPLIT_, S2)

    m_i = tl.full([BLOCK_M], _NEG, dtype=tl.float32)
    l_i = tl.zeros([BLOCK_M], dtype=tl.float32)
    acc = tl.zeros([BLOCK_M, D], dtype=tl.float32)
    for j0 in range(lo, hi, BLOCK_N_):
        cols = j0 + tl.arange(0, BLOCK_N_)
        s, v = _key_tile(q, k_base, v_base, bias_ptr, cols, hi, row_ok, sk_s, sk_d, sv_s, sv_d, sb_s,
                         qk_scale, D, PREC)  # fmt: skip
        m_new = tl.maximum(m_i, tl.max(s, 1))  # finite: starts at -1e30
        alpha = tl.math.exp2(m_i - m_new)
        p = tl.math.exp2(s - m_new[:, None])  # hidden keys: 2^-inf or 2^(-1.4e30 + ...) = 0
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = tl.dot(p.to(v.dtype), v, acc * alpha[:, None], input_precision=PREC)
        m_i = m_new

    seen = l_i > 0
    l_safe = tl.where(seen, l_i, 1.0)
    out = acc / l_safe[:, None]  # acc is 0 where nothing was seen
    lse = tl.where(seen, (m_i + tl.math.log2(l_safe)) / _LOG2E, float("-inf"))
    part = (nh.to(tl.int64) * X + x) * M
    tl.store(Out + (part + rows[:, None]) * D + offs_d[None, :], out, mask=row_ok[:, None])
    tl.store(LSE + part + rows, lse, mask=row_ok)


def _split_and_count(nh: int, s, s2, split: int) -> tuple[int, int, int]:
    """(split, X1 = ceil(S / split), X2 = ceil(S2 / split)); split 0 means split_size(nh, S + S2). S may be
    a SymInt under torch.compile (the engine's key parts have fixed sizes: a guard on them costs nothing)."""
    split = split or split_size(int(nh), int(s) + int(s2))
    return split, (s + split - 1) // split, (s2 + split - 1) // split


def _check(q, k, v, bias, group, columns) -> None:
    n, h, m, d = q.shape
    s = k.shape[2]
    assert d >= 16 and d & (d - 1) == 0, f"head dim must be a power of two >= 16, got {d}"
    assert k.shape == v.shape == (n, h, s, d), (
        f"k {tuple(k.shape)} / v {tuple(v.shape)} vs q {tuple(q.shape)}"
    )
    assert q.dtype == k.dtype == v.dtype, f"q, k, v dtypes differ: {q.dtype}, {k.dtype}, {v.dtype}"
    assert bias.dim() == 4, f"bias must be [N, Wd, C, S], got {tuple(bias.shape)}"
    wd = bias.shape[1]
    assert bias.shape == (n, wd, columns, s), (
        f"bias {tuple(bias.shape)} is not [N={n}, Wd, C={columns}, S={s}]"
    )
    assert m == wd * group * columns, f"M = {m} stacked queries but Wd * G * C = {wd} * {group} * {columns}"


def _partials(q, k, v, bias, k2, v2, bias2, scale, group, columns, split):
    n, h, m, d = q.shape
    split, x1, x2 = _split_and_count(n * h, k.shape[2], 0 if k2 is None else k2.shape[2], split)
    o = q.new_empty((n, h, x1 + x2, m, d), dtype=torch.float32)
    lse = q.new_empty((n, h, x1 + x2, m), dtype=torch.float32)
    if o.numel() == 0:
        return o, lse
    if k2 is None:  # one part: the kernel's second part is never reached (x < X1 everywhere)
        k2, v2, bias2 = k, v, bias
    inner = (k.stride(2), k.stride(3), v.stride(2), v.stride(3), bias.stride(3))
    if inner != (k2.stride(2), k2.stride(3), v2.stride(2), v2.stride(3), bias2.stride(3)):
        # the kernel takes one set of key / head-dim strides: parts laid out differently launch apart
        first = _partials(q, k, v, bias, None, None, None, scale, group, columns, split)
        second = _partials(q, k2, v2, bias2, None, None, None, scale, group, columns, split)
        return torch.cat([first[0], second[0]], 2), torch.cat([first[1], second[1]], 2)
    q = q.contiguous()  # small; k, v, bias stay where they are (read through their strides)
    _decode_kernel[(n * h, x1 + x2)](
        q, k, v, bias, k2, v2, bias2, o, lse, h, m, k.shape[2], k2.shape[2], x1, x1 + x2, group, columns,
        scale * LOG2E, *inner,
        k.stride(0), k.stride(1), v.stride(0), v.stride(1), bias.stride(0), bias.stride(1), bias.stride(2),
        k2.stride(0), k2.stride(1), v2.stride(0), v2.stride(1), bias2.stride(0), bias2.stride(1), bias2.stride(2),
        SPLIT_=split, BLOCK_M=max(16, triton.next_power_of_2(m)), BLOCK_N_=BLOCK_N, D=d,
        PREC="ieee" if q.dtype == torch.float32 else "tf32", num_warps=4,
    )  # fmt: skip
    return o, lse


@torch.library.custom_op("ksa::decode_partials", mutates_args=())
def decode_partials(
    q: torch.Tensor,
    k: torch.Tensor,
    v: torch.Tensor,
    bias: torch.Tensor,
    scale: float,
    group: int,
    columns: int,
    split: int = 0,
    k2: torch.Tensor | None = None,
    v2: torch.Tensor | None = None,
    bias2: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """(o [N, H, X, M, D] float32, lse [N, H, X, M] float32, natural log) of q [N, H, M, D] over one key
    part k, v [N, H, S, D] with bias [N, Wd, C, S] (query m = (w * group + g) * columns + c reads
    bias[n, w, c]), per split of `split` keys (0: split_size(N * H, S)), X = ceil(S / split). k, v,
    bias may be strided views (never copied). A torch custom op: torch.compile calls it as one opaque op.

    k2, v2, bias2: a second key part of the same queries ([N, H, S2, D], [N, Wd, C, S2]) in the same
    launch: its splits follow the first's on axis 2 (X = X1 + X2, the split size chosen for S + S2),
    as merge_key_parts would concatenate the two calls' partials."""
    require_backend(q, _decode_kernel, "ksa.triton_decode")
    _check(q, k, v, bias, group, columns)
    if k2 is not None:
        assert v2 is not None and bias2 is not None, "a second key part needs k2, v2 and bias2"
        _check(q, k2, v2, bias2, group, columns)
    assert split == 0 or (split % BLOCK_N == 0 and split > 0), f"split must be 0 or a multiple of {BLOCK_N}"
    return _partials(q, k, v, bias, k2, v2, bias2, scale, group, columns, split)


@decode_partials.register_fake
def _(q, k, v, bias, scale, group, columns, split=0, k2=None, v2=None, bias2=None):
    n, h, m, d = q.shape
    _, x1, x2 = _split_and_count(n * h, k.shape[2], 0 if k2 is None else k2.shape[2], split)
    return (q.new_empty((n, h, x1 + x2, m, d), dtype=torch.float32),
            q.new_empty((n, h, x1 + x2, m), dtype=torch.float32))


def decode_key_parts(q: torch.Tensor, parts: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], scale: float,
                     group: int, columns: int) -> tuple[torch.Tensor, torch.Tensor]:
    """decode_partials of q over one or two key parts [(k, v, bias), ...] in one launch: the partials
    of the first part's splits, then the second's, on axis 2."""
    assert len(parts) in (1, 2), f"one or two key parts per launch, got {len(parts)}"
    second = dict(zip(("k2", "v2", "bias2"), parts[1], strict=True)) if len(parts) == 2 else {}
    return decode_partials(q, *parts[0], scale, group, columns, **second)


def stacked_to_rows(o: torch.Tensor, lse: torch.Tensor, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Partials of stacked queries, o [blocks, H, X, width * M', D] and lse [blocks, H, X, width * M'],
    as per-row partials [blocks * width, H, X, M', ...]: row r = block * width + w holds the block's
    queries w * M' + m' (so they can be concatenated on axis 2 with the rows' own parts)."""
    o_rows = o.unflatten(3, (width, -1)).movedim(3, 1).flatten(0, 1)
    return o_rows, lse.unflatten(3, (width, -1)).movedim(3, 1).flatten(0, 1)


def merge_partials(o: torch.Tensor, lse: torch.Tensor) -> torch.Tensor:
    """out [N, H, M, D] float32 = sum_x exp(lse_x - mx) o_x / sum_x exp(lse_x - mx) over axis 2, mx =
    max_x lse_x (clamped finite). Queries whose every key is hidden (all lse -inf) get 0."""
    mx = lse.amax(2, keepdim=True).clamp_min(-1.0e30)
    w = torch.exp(lse - mx)  # -inf -> 0; the largest term is 1, so the sum is >= 1 unless all hidden
    num = (w.unsqueeze(-1) * o.float()).sum(2)
    den = w.sum(2).clamp_min(1.0e-30)
    return num / den.unsqueeze(-1)


def merge_key_parts(parts: list[tuple[torch.Tensor, torch.Tensor]]) -> torch.Tensor:
    """merge_partials over several key parts' per-row partials [(o [N, H, X_i, M, D], lse [N, H, X_i, M]), ...]:
    their splits side by side on axis 2, then one log-sum-exp merge; [N, H, M, D] float32."""
    return merge_partials(torch.cat([o for o, _ in parts], 2), torch.cat([lse for _, lse in parts], 2))
