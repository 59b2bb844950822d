"""ksa.triton_decode: split-K decode partials and their log-sum-exp merge against float64 softmax
attention, in the callers' layouts (per-row keys, a group's shared prompt, KSA columns).

CPU: the kernel runs in Triton's interpreter (conftest.py sets TRITON_INTERPRET=1 before anything
imports triton). GPU: `pytest -m gpu`.
"""

from __future__ import annotations

import os
import shutil

import torch

if not torch.cuda.is_available():  # before anything imports triton
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from ksa import triton_decode  # noqa: E402
from ksa.triton_attention import interpreted  # noqa: E402
from ksa.triton_decode import (  # noqa: E402
    MIN_SPLIT,
    SPLIT,
    TARGET_PROGRAMS,
    decode_partials,
    merge_partials,
    split_size,
    stacked_to_rows,
)

needs_compiler = pytest.mark.skipif(
    shutil.which("g++") is None and shutil.which("c++") is None,
    reason="torch.compile on the CPU needs a C++ compiler",
)
SPAN = 512  # the tests' length scale in keys: several splits of the sizes the kernel picks for them
HIDE = float("-inf")
DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _on_device():
    """Tensors made in a test live on the GPU where there is one (the compiled kernel), else on the
    CPU (the interpreter)."""
    if DEVICE == "cpu" and not interpreted(triton_decode._decode_kernel):
        pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (set it in conftest.py)")
    with torch.device(DEVICE):
        yield


def _randn(*shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, device="cpu").to(DEVICE, dtype)


def _qkv(n, h, m, s, d=16, seed=0, dtype=torch.float32):
    return tuple(_randn(n, h, rows, d, seed=seed + i, dtype=dtype) for i, rows in enumerate((m, s, s)))


def _row_bias(bias, group):
    """[N, M, S] float64 bias of each stacked query, m = (w * G + g) * C + c reading bias[n, w, c],
    built by loops (independently of the kernel's index arithmetic); -1e30 and below -> -inf."""
    n, wd, cols, s = bias.shape
    rows = [bias[:, w, c] for w in range(wd) for _ in range(group) for c in range(cols)]
    out = torch.stack(rows, 1).double()
    return out.masked_fill(out <= -1.0e30, HIDE)


def _scores(q, k, bias, scale, group):
    return torch.einsum("nhmd,nhjd->nhmj", q.double(), k.double()) * scale + _row_bias(bias, group)[:, None]


def reference(q, k, v, bias, scale, group):
    """Softmax attention over every key of the part, float64: [N, H, M, D]."""
    return torch.softmax(_scores(q, k, bias, scale, group), -1) @ v.double()


def reference_splits(q, k, v, bias, scale, group, split):
    """Per-split (o [N, H, X, M, D], lse [N, H, X, M]) in float64; o = 0 where every key is hidden."""
    s = _scores(q, k, bias, scale, group)
    os_, lses = [], []
    for lo in range(0, k.shape[2], split):
        part = s[..., lo : lo + split]
        lse = torch.logsumexp(part, -1)
        o = torch.softmax(part, -1) @ v[:, :, lo : lo + split].double()
        os_.append(torch.where(torch.isinf(lse)[..., None], 0.0, o))
        lses.append(lse)
    return torch.stack(os_, 2), torch.stack(lses, 2)


def _check(q, k, v, bias, scale, group, columns, atol=1e-5, rtol=1e-5, split=0):
    """Kernel partials equal the per-split reference and their merge the softmax over the whole part;
    returns the merge. split 0: the kernel's own choice (split_size of N * H and S)."""
    o, lse = decode_partials(q, k, v, bias, scale, group, columns, split)
    ref_o, ref_lse = reference_splits(q, k, v, bias, scale, group, split or split_size(q.shape[0] * q.shape[1], k.shape[2]))
    assert o.dtype == lse.dtype == torch.float32
    assert not o.isnan().any() and not lse.isnan().any()
    torch.testing.assert_close(lse.double(), ref_lse, atol=atol, rtol=rtol)
    torch.testing.assert_close(o.double(), ref_o, atol=atol, rtol=rtol)
    out = merge_partials(o, lse)
    torch.testing.assert_close(out.double(), reference(q, k, v, bias, scale, group), atol=atol, rtol=rtol)
    return out


def _lengths_bias(lengths, s, hidden=HIDE):
    """[len(lengths), S] bias: row r sees keys < lengths[r]."""
    keys = torch.arange(s)
    return torch.where(keys[None] < torch.tensor(lengths)[:, None], 0.0, hidden)


def test_per_row_keys_with_length_bias():
    """q [B, H, G, D] over the row's own keys, hidden tails (one row's last two splits entirely): bias
    [B, S] -> [B, 1, 1, S]; 3 splits, the last one partial and ending inside a key tile."""
    s, group = 2 * SPAN + 77, 2
    q, k, v = _qkv(3, 2, group, s)
    bias = _lengths_bias([s, 2 * SPAN + 5, 300], s)
    out = _check(q, k, v, bias[:, None, None, :], 0.25, group, 1)
    assert out.shape == (3, 2, group, 16)


def test_split_size_fills_the_gpu_within_its_bounds():
    """The largest split in MIN_SPLIT..SPLIT giving >= TARGET_PROGRAMS programs, else MIN_SPLIT."""
    assert split_size(TARGET_PROGRAMS, 10 * SPLIT) == SPLIT  # enough (n, h) for one split each
    assert split_size(16, 32768) == SPLIT == 2048  # 16 x 16 programs
    assert split_size(32, 8192) == SPLIT  # 4 shared prompts of 8K: 32 x 4
    assert split_size(16, 8192) == 1024  # 2 of 8K: 16 x 8, not 16 x 4
    assert split_size(16, 4096) == 512  # a KSA prompt's summaries: 16 x 8
    assert split_size(16, 2048) == 256  # 16 x 8, not 16 x 4
    assert split_size(16, 1024) == MIN_SPLIT  # a KSA window: 16 x 8 (as few as that allows), not 16 x 2
    assert split_size(1, 5) == MIN_SPLIT


@pytest.mark.parametrize("split", [SPLIT, MIN_SPLIT, 64])
def test_named_split_sizes_give_the_same_attention(split):
    """A split named by the caller (the largest, SPLIT, and smaller ones, as the benchmark names them): partials per
    its splits, the merge equal."""
    s, group = 2 * SPAN + 77, 2
    q, k, v = _qkv(2, 2, group, s, seed=21)
    bias = _lengths_bias([s, SPAN + 3], s)[:, None, None, :]
    o, lse = decode_partials(q, k, v, bias, 0.25, group, 1, split)
    assert lse.shape[2] == -(-s // split)
    _check(q, k, v, bias, 0.25, group, 1, split=split)


def test_exact_multiple_short_and_empty_key_parts():
    q, k, v = _qkv(1, 1, 3, 2 * SPAN)
    bias = torch.zeros(1, 1, 1, 2 * SPAN)
    assert decode_partials(q, k, v, bias, 0.3, 3, 1)[1].shape == (1, 1, 2 * SPAN // MIN_SPLIT, 3)
    _check(q, k, v, bias, 0.3, 3, 1)
    _check(q, k[:, :, :5], v[:, :, :5], bias[..., :5], 0.3, 3, 1)  # fewer keys than one tile
    o, lse = decode_partials(q, k[:, :, :0], v[:, :, :0], bias[..., :0], 0.3, 3, 1)
    assert o.shape == (1, 1, 0, 3, 16) and lse.shape == (1, 1, 0, 3)


def test_shared_prompt_layout_equals_rows_one_by_one():
    """A group's shared prompt: q stacked [blocks, H, width * G, D] over k [blocks, H, P, D], bias
    [blocks, P] expanded (stride 0) to [blocks, width, 1, P]; equals each row (w) on its own."""
    blocks, width, group, p = 2, 3, 2, SPAN + 40
    q, k, v = _qkv(blocks, 2, width * group, p, d=32, seed=3)
    bias2d = _lengths_bias([p, SPAN - 7], p)
    bias = bias2d[:, None, None, :].expand(blocks, width, 1, p)
    assert bias.stride(1) == 0
    out = _check(q, k, v, bias, 0.2, group, 1)
    for w in range(width):
        rows = slice(w * group, (w + 1) * group)
        alone = merge_partials(*decode_partials(q[:, :, rows], k, v, bias2d[:, None, None, :], 0.2, group, 1))
        torch.testing.assert_close(out[:, :, rows], alone, atol=1e-6, rtol=1e-6)


def _ksa_bias(rows, s, lengths):
    """Per-row KSA bias [rows, C=2, S]: column 0 (text) sees keys < length (hidden by -1e30), column 1
    (a summary) only the last 5 keys (hidden by -inf)."""
    bias = torch.zeros(rows, 2, s)
    bias[:, 0] = _lengths_bias(lengths, s, hidden=-1.0e30)
    bias[:, 1, : s - 5] = HIDE
    return bias


def test_ksa_columns_own_and_shared_layouts():
    """C = 2 query columns with different bias rows, fully hidden splits for some (row, column): own
    part (q [B, H, G * C, D], bias3[:, None]) and shared part (q [blocks, H, width * G * C, D],
    bias3.view(blocks, width, C, S))."""
    group, s = 2, 2 * SPAN + 30
    bias3 = _ksa_bias(4, s, [s, 400, SPAN, 2 * SPAN + 1])
    q, k, v = _qkv(4, 1, group * 2, s, seed=5)
    _check(q, k, v, bias3[:, None], 0.25, group, 2)
    blocks, width = 2, 2
    q, k, v = _qkv(blocks, 2, width * group * 2, s, seed=7)
    _check(q, k, v, bias3.view(blocks, width, 2, s), 0.25, group, 2)


@pytest.mark.parametrize("columns", [1, 2])
def test_two_parts_concatenated_then_merged(columns):
    """A shared part (keys per block, queries stacked) + an own part (keys per row): the shared partials
    turned into rows (stacked_to_rows), both concatenated on the split axis and merged, equal softmax
    over each row's concatenated keys. columns 1: prompt bias per block, expanded over the block's
    rows; 2: KSA, bias per row and column (bias3.view(blocks, width, C, P))."""
    blocks, width, group, h, p, r = 2, 2, 2, 2, SPAN + 100, 70
    rows, m = blocks * width, group * columns
    qs = _randn(blocks, h, width * m, 16, seed=11)
    kp, vp = _randn(blocks, h, p, 16, seed=12), _randn(blocks, h, p, 16, seed=13)
    ko, vo = _randn(rows, h, r, 16, seed=14), _randn(rows, h, r, 16, seed=15)
    rep = torch.arange(blocks).repeat_interleave(width)  # block of each row
    if columns == 1:
        bias_p = _lengths_bias([p, 450], p)
        shared_bias, row_bias_p = bias_p[:, None, None, :].expand(blocks, width, 1, p), bias_p[rep][:, None]
        row_bias_o = _lengths_bias([r, 10, 0, 33], r)[:, None]  # row 2 sees none of its own keys
    else:
        row_bias_p, row_bias_o = _ksa_bias(rows, p, [p, 450, 20, SPAN]), _ksa_bias(rows, r, [r, 10, 0, 33])
        shared_bias = row_bias_p.view(blocks, width, 2, p)
    o_p, lse_p = stacked_to_rows(*decode_partials(qs, kp, vp, shared_bias, 0.25, group, columns), width)
    q_rows = torch.stack([qs[b, :, w * m : (w + 1) * m] for b in range(blocks) for w in range(width)])
    o_o, lse_o = decode_partials(q_rows, ko, vo, row_bias_o[:, None], 0.25, group, columns)
    assert o_p.shape[:2] == o_o.shape[:2] and o_p.shape[3:] == o_o.shape[3:]
    out = merge_partials(torch.cat([o_p, o_o], 2), torch.cat([lse_p, lse_o], 2))
    k, v = torch.cat([kp[rep], ko], 2), torch.cat([vp[rep], vo], 2)
    bias = torch.cat([row_bias_p, row_bias_o], -1)[:, None]
    ref = reference(q_rows, k, v, bias, 0.25, group)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_half_precision_inputs():
    """float16 q, k, v (p rounded to float16 before the second product): float32 partials within
    half-precision error. (bfloat16: GPU only, the interpreter's tl.dot multiplies its bit patterns.)"""
    group, s = 2, SPAN + 200
    q, k, v = _qkv(2, 2, group * 2, s, d=32, seed=51, dtype=torch.float16)
    _check(q, k, v, _ksa_bias(2, s, [s, 300])[:, None], 0.2, group, 2, atol=2e-3, rtol=1e-2)


@pytest.mark.gpu
def test_bfloat16_cache_slices_at_model_size():
    """bfloat16 at a model's size (D = 128, 24 stacked queries, 8 kv heads, several thousand keys) read
    from slices of a cache, KSA columns."""
    n, h, group, s = 3, 8, 6, 4 * SPAN + 333
    kc, vc = (_randn(n + 1, h, 6000, 128, seed=seed, dtype=torch.bfloat16) for seed in (61, 62))
    q = _randn(n, h, group * 2 * 2, 128, seed=63, dtype=torch.bfloat16)
    bias3 = _ksa_bias(n * 2, s, [s, 1000, 3 * SPAN, 17, 2 * SPAN, s - 1])
    k, v = kc[:n, :, :s], vc[:n, :, :s]
    _check(q, k, v, bias3.view(n, 2, 2, s), 128**-0.5, group, 2, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
def test_bfloat16_two_key_parts_in_one_launch_at_model_size():
    """bfloat16, D = 128, 8 kv heads: a KSA layer's window text (a ring cache's slice, 1,024 keys) and its
    summaries (a summary cache's slice, 4,096 keys) in one launch: the partials of one call per part at
    the same split size, and the merged attention within bf16 error of the reference."""
    n, h, group, cols = 2, 8, 8, 2
    q = _randn(n, h, group * cols, 128, seed=81, dtype=torch.bfloat16)
    ring_k, ring_v = (_randn(n + 1, h, 1100, 128, seed=seed, dtype=torch.bfloat16) for seed in (82, 83))
    sum_k, sum_v = (_randn(n + 1, h, 5000, 128, seed=seed, dtype=torch.bfloat16) for seed in (84, 85))
    k1, v1, k2, v2 = ring_k[:n, :, :1024], ring_v[:n, :, :1024], sum_k[:n, :, :4096], sum_v[:n, :, :4096]
    b1, b2 = _ksa_bias(n, 1024, [1024, 700])[:, None], _ksa_bias(n, 4096, [4096, 2500])[:, None]
    scale = 128**-0.5
    o, lse = decode_partials(q, k1, v1, b1, scale, group, cols, 0, k2, v2, b2)
    split = split_size(n * h, 1024 + 4096)
    first = decode_partials(q, k1, v1, b1, scale, group, cols, split)
    second = decode_partials(q, k2, v2, b2, scale, group, cols, split)
    torch.testing.assert_close(o, torch.cat([first[0], second[0]], 2), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(lse, torch.cat([first[1], second[1]], 2), atol=1e-5, rtol=1e-5)
    ref = reference(q, torch.cat([k1, k2], 2), torch.cat([v1, v2], 2), torch.cat([b1, b2], -1), scale, group)
    torch.testing.assert_close(merge_partials(o, lse).double(), ref, atol=2e-2, rtol=2e-2)


def test_fully_hidden_queries_merge_to_zero():
    q, k, v = _qkv(1, 1, 2, 100)
    o, lse = decode_partials(q, k, v, torch.full((1, 1, 1, 100), HIDE), 0.25, 2, 1)
    assert torch.isneginf(lse).all() and (o == 0).all()
    assert (merge_partials(o, lse) == 0).all()


def test_strided_cache_slices_read_in_place_and_never_past_s(monkeypatch):
    """k, v, bias as slices of larger caches (rows [:N], keys [:S]) whose unused parts hold NaN: the
    right answer, and the kernel is handed the caches' own memory (no copy)."""
    n, h, s, d = 2, 2, SPAN + 300, 16
    kc, vc = _randn(n + 1, h, 2000, d, seed=21), _randn(n + 1, h, 2000, d, seed=22)
    bc = torch.zeros(n + 1, 1, 1, 2000)
    kc[:, :, s:], vc[:, :, s:], bc[..., s:] = float("nan"), float("nan"), float("nan")
    kc[n], vc[n], bc[n] = float("nan"), float("nan"), float("nan")
    k, v, bias = kc[:n, :, :s], vc[:n, :, :s], bc[:n, ..., :s]
    bias[1, ..., 700:] = HIDE
    seen = []  # the tensors the kernel is launched with (a pre-run hook sees its arguments)
    kernel = triton_decode._decode_kernel
    monkeypatch.setattr(kernel, "pre_run_hooks", [lambda *args, **kwargs: seen.append(args[1:4])])
    q = _randn(n, h, 2, d, seed=23)
    _check(q, k.clone(), v.clone(), bias.clone(), 0.25, 2, 1)  # the reference on clean copies
    seen.clear()
    o, lse = decode_partials(q, k, v, bias, 0.25, 2, 1)
    ((k_arg, v_arg, b_arg),) = seen
    for arg, view in ((k_arg, k), (v_arg, v), (b_arg, bias)):
        assert arg.data_ptr() == view.data_ptr() and arg.stride() == view.stride()
    ref_o, ref_lse = reference_splits(q, k.clone(), v.clone(), bias.clone(), 0.25, 2, split_size(n * h, s))
    assert not o.isnan().any()
    torch.testing.assert_close(lse.double(), ref_lse, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(o.double(), ref_o, atol=1e-5, rtol=1e-5)


def test_checks_reject_bad_shapes():
    q, k, v = _qkv(1, 1, 4, 10)
    with pytest.raises(AssertionError, match="Wd \\* G \\* C"):
        decode_partials(q, k, v, torch.zeros(1, 1, 1, 10), 0.25, 3, 1)
    q, k, v = _qkv(1, 1, 2, 10, d=24)
    with pytest.raises(AssertionError, match="power of two"):
        decode_partials(q, k, v, torch.zeros(1, 1, 1, 10), 0.25, 2, 1)


def test_comparison_is_sensitive():
    """Mutations the checks must catch: a wrong scale, and the column of a query's bias row swapped."""
    group, s = 2, 600
    q, k, v = _qkv(2, 1, group * 2, s, seed=31)
    bias3 = _ksa_bias(2, s, [s, 100])
    o, lse = decode_partials(q, k, v, bias3[:, None], 0.3, group, 2)
    out = merge_partials(o, lse).double()
    torch.testing.assert_close(out, reference(q, k, v, bias3[:, None], 0.3, group), atol=1e-5, rtol=1e-5)
    for wrong in (
        reference(q, k, v, bias3[:, None], 0.25, group),
        reference(q, k, v, bias3.flip(1)[:, None], 0.3, group),
    ):
        assert not torch.allclose(out, wrong, atol=1e-3)


def test_fake_impl_shapes():
    from torch._subclasses.fake_tensor import FakeTensorMode

    with FakeTensorMode():
        q, k, v = torch.empty(3, 2, 6, 32), torch.empty(3, 2, 1100, 32), torch.empty(3, 2, 1100, 32)
        o, lse = decode_partials(q, k, v, torch.empty(3, 3, 1, 1100), 0.1, 2, 1)
    x = -(-1100 // split_size(6, 1100))
    assert o.shape == (3, 2, x, 6, 32) and lse.shape == (3, 2, x, 6) and o.dtype == lse.dtype == torch.float32


def test_opcheck():
    q, k, v = _qkv(2, 1, 4, SPAN + 10)
    torch.library.opcheck(
        decode_partials, (q, k, v, _ksa_bias(2, SPAN + 10, [SPAN + 10, 9])[:, None], 0.25, 2, 2)
    )


@needs_compiler
def test_compiled_equals_eager():
    """The op inside torch.compile(fullgraph=True) with the merge, k, v, bias sliced from caches in the
    graph: the first length compiles with static shapes, the second recompiles with the key count a
    SymInt (the fake implementation specialises on it: its split size depends on S)."""
    n, h = 2, 2
    q, kc, vc = _qkv(n, h, 2, 700, seed=41)
    bias = _lengths_bias([700, 80], 700)[:, None, None, :]

    def attend(q, kc, vc, bias, length):
        sl = slice(0, length)
        return merge_partials(*decode_partials(q, kc[:, :, sl], vc[:, :, sl], bias[..., sl], 0.25, 2, 1))

    compiled = torch.compile(attend, fullgraph=True)
    for s in (SPAN + 60, 300):
        torch.testing.assert_close(
            compiled(q, kc, vc, bias, s), attend(q, kc, vc, bias, s), atol=1e-6, rtol=1e-6
        )


def _count_launches(monkeypatch) -> list:
    """A list that gets one entry per launch of the decode kernel (a pre-run hook) for the test's span."""
    launches = []
    monkeypatch.setattr(triton_decode._decode_kernel, "pre_run_hooks", [lambda *args, **kwargs: launches.append(1)])
    return launches


@pytest.mark.parametrize("lengths", [(SPAN + 40, 300), (0, 200), (150, 0)])
def test_two_key_parts_in_one_launch_equal_two_launches(lengths, monkeypatch):
    """k2 / v2 / bias2: a second key part in the same launch gives the two parts' partials side by side
    on the split axis, equal to one call per part with the same split size (so merge_key_parts of the
    two calls equals merge_partials of the one); a part may be empty. The second part is a strided
    slice with a bias of KSA columns, the first a contiguous one."""
    s1, s2 = lengths
    n, h, group, cols = 2, 2, 2, 2
    q = _randn(n, h, group * cols, 16, seed=61)
    k1, v1 = _randn(n, h, s1, 16, seed=62), _randn(n, h, s1, 16, seed=63)
    kc, vc = _randn(n + 1, h, s2 + 9, 16, seed=64), _randn(n + 1, h, s2 + 9, 16, seed=65)
    k2, v2 = kc[:n, :, :s2], vc[:n, :, :s2]
    b1 = _ksa_bias(n, s1, [s1, s1 // 2])[:, None]
    b2 = _ksa_bias(n, s2, [s2 // 3, s2])[:, None]
    split = split_size(n * h, s1 + s2)
    launches = _count_launches(monkeypatch)
    o, lse = decode_partials(q, k1, v1, b1, 0.25, group, cols, 0, k2, v2, b2)
    assert len(launches) == 1
    first = decode_partials(q, k1, v1, b1, 0.25, group, cols, split)
    second = decode_partials(q, k2, v2, b2, 0.25, group, cols, split)
    assert lse.shape[2] == first[1].shape[2] + second[1].shape[2]
    torch.testing.assert_close(o, torch.cat([first[0], second[0]], 2), atol=0, rtol=0)
    torch.testing.assert_close(lse, torch.cat([first[1], second[1]], 2), atol=0, rtol=0)
    ref = reference(q, torch.cat([k1, k2], 2), torch.cat([v1, v2], 2), torch.cat([b1, b2], -1), 0.25, group)
    torch.testing.assert_close(merge_partials(o, lse).double(), ref, atol=1e-5, rtol=1e-5)


def test_two_key_parts_with_different_key_strides_launch_apart(monkeypatch):
    """Parts whose key strides differ (here the second is a [N, S, H, D] buffer seen as [N, H, S, D]):
    the kernel takes one set of key strides, so they run as two launches, with the same partials as
    one call per part at the shared split size."""
    n, h, group = 2, 2, 2
    q = _randn(n, h, group, 16, seed=71)
    k1, v1 = _randn(n, h, 300, 16, seed=72), _randn(n, h, 300, 16, seed=73)
    k2, v2 = (_randn(n, 140, h, 16, seed=seed).transpose(1, 2) for seed in (74, 75))
    assert k2.stride(2) != k1.stride(2)
    b1, b2 = _lengths_bias([300, 200], 300)[:, None, None, :], _lengths_bias([140, 3], 140)[:, None, None, :]
    launches = _count_launches(monkeypatch)
    o, lse = decode_partials(q, k1, v1, b1, 0.25, group, 1, 0, k2, v2, b2)
    assert len(launches) == 2
    split = split_size(n * h, 440)
    first = decode_partials(q, k1, v1, b1, 0.25, group, 1, split)
    second = decode_partials(q, k2, v2, b2, 0.25, group, 1, split)
    torch.testing.assert_close(o, torch.cat([first[0], second[0]], 2), atol=0, rtol=0)
    torch.testing.assert_close(lse, torch.cat([first[1], second[1]], 2), atol=0, rtol=0)
