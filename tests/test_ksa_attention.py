"""ksa_attention: the three kernels against each other and against hand-derived visibility.

CPU: "triton" runs in Triton's interpreter (ksa/triton_attention.py sets TRITON_INTERPRET=1 when there
is no CUDA), "flex" forward only (FlexAttention has no CPU backward). GPU tests: `pytest -m gpu`.
"""

from __future__ import annotations

import inspect
import os

import torch

if not torch.cuda.is_available():  # before anything imports triton (flex on CPU may)
    os.environ.setdefault("TRITON_INTERPRET", "1")

import pytest  # noqa: E402

from ksa.attention import KSAAttentionError, ksa_attention, prefix_order  # noqa: E402
from ksa.flex_attention import TILE, prefix_block_mask, prefix_rule, slot_tables  # noqa: E402
from ksa.layout import expand_positions, expanded_length  # noqa: E402
from ksa.mask import dense_mask  # noqa: E402

# (chunk, summaries, window, text_len, Hq, Hkv): partial trailing chunks, S=2, W=0/1, windows longer
# than the sequence, GQA, and lengths that cross the interpreter's 16-row tiles on both regions.
CASES = [
    (8, 1, 2, 50, 2, 1),
    (4, 2, 1, 37, 2, 2),
    (8, 1, 100, 64, 1, 1),
    (4, 1, 0, 30, 4, 2),
    (2, 1, 10, 150, 2, 1),
    (4, 2, 5, 203, 2, 1),
    (3, 1, 1, 7, 1, 1),
]
SLOW_CASES = [(8, 1, 3, 300, 2, 1), (2, 2, 0, 90, 2, 2), (4, 1, 1, 129, 1, 1), (3, 1, 7, 100, 3, 1), (8, 4, 2, 260, 2, 2)]


def _inputs(text_len, chunk, summaries, hq, hkv, d=32, batch=2, seed=0, dtype=torch.float32, device="cpu"):
    g = torch.Generator(device="cpu").manual_seed(seed)
    length = expanded_length(text_len, chunk, summaries)
    shapes = [(batch, hq, length, d), (batch, hkv, length, d), (batch, hkv, length, d)]
    return [torch.randn(s, generator=g).to(device=device, dtype=dtype).requires_grad_() for s in shapes]


def _grads(out, inputs, seed=1):
    g = torch.randn(out.shape, generator=torch.Generator().manual_seed(seed)).to(out)
    return torch.autograd.grad(out, inputs, g)


def _naive(q, k, v, mask, scale):
    """Explicit softmax(q k^T) v in float64 with a boolean mask (GQA by repeating heads)."""
    rep = q.shape[1] // k.shape[1]
    k, v = k.repeat_interleave(rep, 1).double(), v.repeat_interleave(rep, 1).double()
    s = (q.double() @ k.transpose(-1, -2)) * scale
    s = s.masked_fill(~mask, float("-inf"))
    return torch.softmax(s, -1) @ v


def test_every_slot_sees_itself():
    for chunk, summaries, window, text_len, *_ in CASES:
        m = dense_mask(text_len, chunk, summaries, window)
        assert m.diagonal().all()


def test_reference_visible_sets_by_hand():
    # C=2, S=1, W=0, T=5: layout t0 t1 s0 t2 t3 s1 t4. With q = 0 attention is uniform over the
    # visible keys, so the output is the mean of their values.
    v = torch.arange(7, dtype=torch.float64).view(1, 1, 7, 1) * 10
    q = torch.zeros(1, 1, 7, 1, dtype=torch.float64)
    out = ksa_attention(q, q.clone(), v, chunk=2, summaries=1, window=0).flatten()
    visible = {
        0: [0], 1: [0, 1], 2: [0, 1, 2],        # s0 sees its chunk and itself
        3: [2, 3], 4: [2, 3, 4],                # t2, t3: s0 (older chunk) + own chunk text
        5: [3, 4, 5],                           # s1: its chunk t2 t3 and itself
        6: [2, 5, 6],                           # t4: s0, s1 and itself
    }  # fmt: skip
    expected = torch.tensor([10.0 * sum(ix) / len(ix) for ix in visible.values()], dtype=torch.float64)
    torch.testing.assert_close(out, expected)


@pytest.mark.parametrize("case", CASES)
def test_reference_equals_explicit_softmax(case):
    chunk, summaries, window, text_len, hq, hkv = case
    q, k, v = _inputs(text_len, chunk, summaries, hq, hkv)
    out = ksa_attention(q, k, v, chunk=chunk, summaries=summaries, window=window, scale=0.3)
    ref = _naive(q, k, v, dense_mask(text_len, chunk, summaries, window), 0.3)
    torch.testing.assert_close(out.double(), ref, atol=1e-5, rtol=1e-5)


def test_prefix_rule_is_the_mask_rule_permuted():
    for chunk, summaries, window, text_len, *_ in CASES:
        for visible in (True, False):
            perm = prefix_order((text_len,), chunk, summaries, "cpu")
            tables = slot_tables((text_len,), chunk, summaries, "cpu")
            rule = prefix_rule(
                tuple(t[:, None] for t in tables), tuple(t[None, :] for t in tables), window, visible
            )
            mask = dense_mask(text_len, chunk, summaries, window, visible)
            assert torch.equal(rule, mask[perm][:, perm])


def test_prefix_order_puts_summaries_first():
    perm = prefix_order((10, 5), 4, 1, "cpu")
    # sequence 1: t0..t3 s0 t4..t7 s1 t8 t9 (12 slots); sequence 2 starts at 12: t0..t3 s0 t4
    assert perm.tolist() == [4, 9, 0, 1, 2, 3, 5, 6, 7, 8, 10, 11, 16, 12, 13, 14, 15, 17]


@pytest.mark.parametrize("case", [(8, 1, 2, 700, 1, 1), (4, 2, 3, 900, 1, 1), (8, 1, 200, 600, 1, 1)])
def test_flex_block_mask_covers_the_rule_and_skips_tiles(case):
    chunk, summaries, window, text_len, *_ = case
    bm = prefix_block_mask((text_len,), chunk, summaries, window, True, "cpu")
    tables = slot_tables((text_len,), chunk, summaries, "cpu")
    length = tables[0].numel()
    rule = prefix_rule(tuple(t[:, None] for t in tables), tuple(t[None, :] for t in tables), window, True)
    n = -(-length // TILE)

    def tiles(num, idx):
        out = torch.zeros(n, n, dtype=torch.bool)
        for r in range(n):
            out[r, idx[0, 0, r, : num[0, 0, r]].long()] = True
        return out.repeat_interleave(TILE, 0).repeat_interleave(TILE, 1)[:length, :length]

    partial, full = tiles(bm.kv_num_blocks, bm.kv_indices), tiles(bm.full_kv_num_blocks, bm.full_kv_indices)
    assert not (partial & full).any()
    assert not (rule & ~(partial | full)).any()  # every visible pair lies in a visited tile
    assert rule[full].all()  # "full" tiles need no mask
    if window < text_len // chunk:
        assert (partial | full).float().mean() < 0.9  # some tiles are skipped


@pytest.mark.parametrize("case", CASES)
def test_flex_forward_matches_reference(case):
    chunk, summaries, window, text_len, hq, hkv = case
    q, k, v = _inputs(text_len, chunk, summaries, hq, hkv)
    kw = dict(chunk=chunk, summaries=summaries, window=window)
    with torch.no_grad():
        ref = ksa_attention(q, k, v, **kw)
        out = ksa_attention(q, k, v, impl="flex", **kw)
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-4)


def _needs_triton():
    if not torch.cuda.is_available():
        from ksa.triton_attention import _q_side_kernel, interpreted

        if not interpreted(_q_side_kernel):
            pytest.skip("triton was imported before TRITON_INTERPRET=1 was set (set it in conftest.py)")


def _check_triton(case, visible=True, d=32):
    _needs_triton()
    chunk, summaries, window, text_len, hq, hkv = case
    q, k, v = _inputs(text_len, chunk, summaries, hq, hkv, d=d, batch=1)
    kw = dict(chunk=chunk, summaries=summaries, window=window, summaries_visible=visible)
    ref = ksa_attention(q, k, v, **kw)
    out = ksa_attention(q, k, v, impl="triton", **kw)
    torch.testing.assert_close(out, ref, atol=1e-4, rtol=1e-4)
    for a, b in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


@pytest.mark.parametrize("case", CASES)
def test_triton_forward_and_grads_match_reference(case):
    _check_triton(case)


def test_triton_one_masked_loop_per_region(monkeypatch):
    from ksa import triton_attention

    monkeypatch.setattr(triton_attention, "SPLIT_FULL_TILES", False)
    _check_triton((2, 1, 10, 150, 2, 1))


def test_triton_sliding_chunk_and_odd_head_dim():
    _check_triton((4, 1, 2, 90, 2, 1), visible=False)
    _check_triton((4, 1, 1, 45, 1, 1), d=48)  # head dim padded to a power of two inside the kernel


@pytest.mark.slow
@pytest.mark.parametrize("case", SLOW_CASES)
def test_triton_more_cases(case):
    _check_triton(case)


@pytest.mark.parametrize("impl", ["reference", "flex", "triton"])
def test_packed_sequences_are_independent(impl):
    if impl == "triton":
        _needs_triton()
    chunk, summaries, window, lens = 4, 1, 1, [13, 8, 21, 3]
    length = sum(expanded_length(t, chunk, summaries) for t in lens)
    g = torch.Generator().manual_seed(3)
    q, k, v = (torch.randn(1, 2, length, 32, generator=g) for _ in range(3))
    kw = dict(chunk=chunk, summaries=summaries, window=window)
    out = ksa_attention(q, k, v, impl=impl, seq_lens=lens, **kw)
    start = 0
    for t in lens:
        sl = slice(start, start + expanded_length(t, chunk, summaries))
        alone = ksa_attention(q[:, :, sl], k[:, :, sl], v[:, :, sl], **kw)
        torch.testing.assert_close(out[:, :, sl], alone, atol=1e-5, rtol=1e-4)
        start = sl.stop


# Packings whose lengths, summary counts, offsets, windows and tile counts differ in being 1 or a
# multiple of 16 (Triton's pattern for integer arguments): chunk 4, S 1, window 2, 16-row tiles.
SPECIALIZING_PACKS = [[32], [33], [16, 9], [7, 40, 4]]


def _launches(monkeypatch, packs, device="cpu", d=32):
    """Forward + backward of the Triton kernel for each packing of text lengths; every kernel launch
    as (kernel, its arguments by name), recorded by wrapping the module's kernels."""
    from ksa import triton_attention

    seen = []

    class Recorded:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **kwargs):
                names = list(inspect.signature(self.kernel.fn).parameters)
                seen.append((self.kernel, dict(zip(names, args, strict=False)) | kwargs))
                return self.kernel[grid](*args, **kwargs)

            return launch

    for name in ("_q_side_kernel", "_dkdv_kernel", "_delta_kernel"):
        monkeypatch.setattr(triton_attention, name, Recorded(getattr(triton_attention, name)))
    check = triton_attention.require_backend  # the backend check, on the kernel inside the wrapper
    monkeypatch.setattr(triton_attention, "require_backend", lambda q, kernel, what: check(q, kernel.kernel, what))
    for lens in packs:
        length = sum(expanded_length(t, 4, 1) for t in lens)
        q, k, v = (torch.randn(1, 2, length, d, device=device, requires_grad=True) for _ in range(3))
        out = ksa_attention(q, k, v, impl="triton", seq_lens=lens, chunk=4, summaries=1, window=2)
        out.sum().backward()
    return seen


def test_triton_kernels_need_one_compile_for_every_length(monkeypatch):
    """Triton compiles a kernel again for each new specialization key of its arguments (an integer's key:
    whether it is 1, or a multiple of 16). Over packings whose lengths differ in exactly that, each
    kernel and compile-time setting launches under one key (computed by triton's own function with the
    kernel's do_not_specialize), so a new prompt length costs the engine's prefill and the learner no
    compile. On the GPU the compiled variants are counted (the gpu test below)."""
    _needs_triton()
    libtriton = pytest.importorskip("triton._C.libtriton")
    from triton.backends.compiler import BaseBackend

    def key(kernel, args):
        declared = getattr(kernel, "do_not_specialize", None)
        if declared is None:  # the interpreter keeps the decorator's arguments
            declared = kernel.kwargs.get("do_not_specialize") or []
        params = inspect.signature(kernel.fn).parameters
        out = []
        for name, value in args.items():
            if name not in params:  # num_warps, num_stages
                continue
            if "constexpr" in str(params[name].annotation):
                out.append((name, value))
            elif isinstance(value, int) and not isinstance(value, bool):
                out.append((name, libtriton.native_specialize_impl(BaseBackend, value, False, name not in declared, True)))
        return tuple(out)

    keys: dict[tuple, set] = {}
    for kernel, args in _launches(monkeypatch, SPECIALIZING_PACKS):
        k = key(kernel, args)
        settings = tuple(x for x in k if x[0] in ("MODE", "Q_SUM", "K_SUM", "VIS", "BLOCK_M", "BLOCK_N"))
        keys.setdefault((kernel.fn.__name__, settings), set()).add(k)
    assert {name for name, _ in keys} == {"_q_side_kernel", "_dkdv_kernel", "_delta_kernel"}
    assert all(len(v) == 1 for v in keys.values()), {k: len(v) for k, v in keys.items() if len(v) > 1}


# (chunk, summaries, window, text_len, Hq, Hkv) whose window covers the sequence: the last chunk exactly
# at the window, S = 2, GQA, a trailing partial chunk, a sequence shorter than one chunk, batch rows.
WITHIN_WINDOW = [(4, 1, 5, 21, 2, 1), (4, 2, 6, 27, 4, 2), (8, 1, 100, 64, 1, 1), (4, 1, 1, 3, 2, 2), (3, 1, 4, 15, 2, 1)]


@pytest.mark.parametrize("impl", ["triton", "flex"])
@pytest.mark.parametrize("case", WITHIN_WINDOW)
def test_within_window_path_equals_reference(case, impl, monkeypatch):
    """Where the window covers the sequence, the kernels hand over to causal SDPA over text plus per-chunk
    summary attention: forward and gradients equal the dense reference (and the flex impl gets a
    backward on the CPU, since no FlexAttention runs)."""
    import ksa.attention as attention

    chunk, summaries, window, text_len, hq, hkv = case
    calls, within = [], attention._within_window
    monkeypatch.setattr(attention, "_within_window", lambda *a: calls.append(1) or within(*a))
    q, k, v = _inputs(text_len, chunk, summaries, hq, hkv, d=16)
    kw = dict(chunk=chunk, summaries=summaries, window=window)
    ref = ksa_attention(q, k, v, **kw)
    out = ksa_attention(q, k, v, impl=impl, **kw)
    assert calls == [1]
    torch.testing.assert_close(out, ref, atol=1e-5, rtol=1e-5)
    for a, b in zip(_grads(out, (q, k, v)), _grads(ref, (q, k, v)), strict=True):
        torch.testing.assert_close(a, b, atol=1e-5, rtol=1e-5)
    if impl == "triton":  # the kernel itself still computes the covered case
        _needs_triton()
        from ksa.triton_attention import triton_ksa_attention

        direct = triton_ksa_attention(q, k, v, seq_lens=(text_len,), scale=16**-0.5, summaries_visible=True, **kw)
        torch.testing.assert_close(direct, ref, atol=1e-4, rtol=1e-4)


def test_within_window_path_only_where_the_window_covers(monkeypatch):
    """One chunk short of covering, or several packed sequences: the KSA kernel runs (summaries are
    visible there, or sequences must stay apart)."""
    import ksa.attention as attention

    monkeypatch.setattr(attention, "_within_window", lambda *a: pytest.fail("took the within-window path"))
    with torch.no_grad():  # (FlexAttention: no CPU backward)
        q, k, v = _inputs(21, 4, 1, 2, 1, d=16, batch=1)
        out = ksa_attention(q, k, v, chunk=4, window=4, impl="flex")
        torch.testing.assert_close(out, ksa_attention(q, k, v, chunk=4, window=4), atol=1e-5, rtol=1e-5)
        q, k, v = _inputs(40, 4, 1, 2, 1, d=16, batch=1)
        q, k, v = (x[:, :, : expanded_length(21, 4) + expanded_length(10, 4)] for x in (q, k, v))
        ksa_attention(q, k, v, chunk=4, window=100, impl="flex", seq_lens=[21, 10])


def test_positions_and_prefix_layout_agree():
    # the permutation moves exactly the summary slots to the front
    pos, is_sum = expand_positions(37, 4, 2)
    perm = prefix_order((37,), 4, 2, "cpu")
    n_sum = int(is_sum.sum())
    assert is_sum[perm[:n_sum]].all() and not is_sum[perm[n_sum:]].any()
    assert torch.equal(pos[perm[n_sum:]], torch.arange(37))


def test_bad_arguments_raise_clear_errors():
    bad = torch.randn(1, 2, 9, 8)  # chunk 4: 8 text tokens expand to 10 slots, 9 is no layout
    with pytest.raises(KSAAttentionError, match="expanded length"):
        ksa_attention(bad, bad, bad, chunk=4, summaries=1, window=1)
    q9 = torch.randn(1, 2, 9, 8)
    with pytest.raises(KSAAttentionError, match="impl"):
        ksa_attention(q9, q9, q9, window=1, impl="cuda")
    with pytest.raises(KSAAttentionError, match="GQA"):
        ksa_attention(torch.randn(1, 3, 9, 8), q9, q9, window=1)
    with pytest.raises(KSAAttentionError, match="seq_lens"):
        ksa_attention(q9, q9, q9, window=1, seq_lens=[4, 4])


# ------------------------------------------------------------------------------------------- GPU


def _rel(a, b):
    return ((a.float() - b.float()).norm() / b.float().norm()).item()


@pytest.mark.gpu
@pytest.mark.parametrize("impl", ["flex", "triton"])
@pytest.mark.parametrize("text_len,hkv", [(4096, 16), (4100, 4), (16384, 16)])
def test_gpu_bf16_matches_fp32_reference(impl, text_len, hkv):
    """bf16 kernels vs the fp32 reference, no worse than the reference kernel itself run in bf16."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    chunk, summaries, window = 8, 1, 128
    q, k, v = _inputs(text_len, chunk, summaries, 16, hkv, d=128, batch=1, device="cuda")
    kw = dict(chunk=chunk, summaries=summaries, window=window)
    exact = [ksa_attention(q, k, v, **kw)]
    exact += _grads(exact[0], (q, k, v))
    got = {}
    for name in ("reference", impl):
        qb, kb, vb = (x.detach().bfloat16().requires_grad_() for x in (q, k, v))
        out = ksa_attention(qb, kb, vb, impl=name, **kw)
        got[name] = [out, *_grads(out, (qb, kb, vb))]
    for what, a, floor, b in zip(("out", "dq", "dk", "dv"), got[impl], got["reference"], exact, strict=True):
        assert torch.isfinite(a).all(), what
        assert _rel(a, b) <= 1.25 * _rel(floor, b) + 1e-3, (what, _rel(a, b), _rel(floor, b))


@pytest.mark.gpu
def test_gpu_one_compile_serves_every_length(monkeypatch):
    """The compiled variants of each kernel after forward + backward over packings whose lengths differ
    in being 1 or a multiple of 16: one per kernel and compile-time setting, as the first packing made."""
    if not torch.cuda.is_available():
        pytest.skip("needs CUDA")
    from ksa import triton_attention

    kernels = [triton_attention._q_side_kernel, triton_attention._dkdv_kernel, triton_attention._delta_kernel]

    def variants():
        return sum(len(cache[0]) for k in kernels for cache in k.device_caches.values())

    _launches(monkeypatch, SPECIALIZING_PACKS[:1], device="cuda", d=64)
    first = variants()
    monkeypatch.undo()  # the recording wrappers off again: _launches wraps the module's own kernels
    _launches(monkeypatch, SPECIALIZING_PACKS[1:], device="cuda", d=64)
    assert variants() == first
