"""Shared prompts on the KSA layout (ksa/shared.py): a group's responses behind one copy of the prompt
give the log-probs and gradients of packing each (prompt, response) alone through the KSA model's own
forward (golong.packing's per-sequence path), and the test fails when the layout or rule is wrong."""

from __future__ import annotations

from functools import partial

import pytest
import torch

import ksa.shared as shared
from golong.packing import pack, pack_shared, packed_logprobs, supports_prompt_sharing
from ksa.layout import expand_positions
from tests.test_ksa_model import ksa_tiny

# (prompt length, response lengths) per unit, chunk 4. Prompts of 10 and 13 end in a partial chunk
# (the boundary chunk holds 2 and 1 prompt tokens); responses of 1 do not complete it, of 2 just do;
# 12 and 8 are whole chunks. Windows of 1 chunk (4 tokens) are shorter than every prompt but 3.
UNITS = [
    [(10, [1])],  # G = 1
    [(10, [7, 2]), (8, [5, 1, 9])],  # G = 2 and 3
    [(13, [3, 1, 11, 6]), (12, [4, 9])],  # G = 4
    [(3, [14, 2, 0])],  # a prompt inside one chunk; an empty response
]


def _groups(units, vocab, seed=0):
    g = torch.Generator().manual_seed(seed)
    rand = lambda n: torch.randint(5, vocab, (n,), generator=g).tolist()  # noqa: E731
    return [(rand(p), [rand(r) for r in rs]) for p, rs in units]


def _flat(groups):
    return [(p, r) for p, rs in groups for r in rs]


@pytest.fixture(scope="module")
def models(tiny_tokenizer):
    """KSA models (chunk 4) with windows of 1 to 3 chunks and a full layer; S = 1 and 2; with summary
    q/k/v projections blended and a summary layernorm; a Llama."""
    return {
        "s1": ksa_tiny(tiny_tokenizer, windows=(3, 1, 1000), chunk=4)[1],
        "s2": ksa_tiny(tiny_tokenizer, windows=(1, 2), chunk=4, summaries=2, seed=1)[1],
        "qkv": ksa_tiny(tiny_tokenizer, windows=(1, 2), chunk=4, seed=2, summary_qkv=True, mix_coeff=0.5, summary_norm=True)[1],
        "llama": ksa_tiny(tiny_tokenizer, arch="llama", windows=(2, 1), chunk=4, seed=3)[1],
    }


def _logprob_error(model, groups, temperature=1.0) -> float:
    """Max |log-prob difference| between the shared row and each pair packed alone."""
    flat = _flat(groups)
    with torch.no_grad():
        got, _ = packed_logprobs(model, pack_shared(groups), chunk=5, temperature=temperature)
        want, _ = packed_logprobs(model, pack([p for p, _ in flat], [r for _, r in flat]), chunk=5, temperature=temperature)
    assert [g.numel() for g in got] == [len(r) for _, r in flat]
    return max((a - b).abs().max().item() for a, b in zip(got, want, strict=True) if a.numel())


def test_layout_gives_each_response_its_alone_slots():
    """Prompt slots plus response m's slots are, as (summary?, rope position) pairs, the layout of the
    pair alone; the prompt's trailing partial chunk has no summary of its own in the shared copy."""
    units = [(10, [7, 2, 1]), (8, [5]), (3, [14])]
    lay = shared.shared_layout(units, chunk=4, summaries=2)
    for d, (p, rs) in enumerate(units):
        in_unit = lay.doc == d
        prompt_sums = (in_unit & (lay.member < 0) & lay.is_summary.bool()).sum().item()
        assert prompt_sums == (p // 4) * 2
        for m, r in enumerate(rs):
            mine = in_unit & ((lay.member < 0) | (lay.member == m))
            got = sorted(zip(lay.is_summary[mine].tolist(), lay.positions[mine].tolist(), strict=True))
            pos, is_sum = expand_positions(p + r, 4, 2)
            assert got == sorted(zip(is_sum.int().tolist(), pos.tolist(), strict=True))
    text = lay.text_slots
    assert text.numel() == sum(p + sum(rs) for p, rs in units) and not lay.is_summary[text].any()
    assert (text.diff() > 0).all()  # text keeps the caller's order


@pytest.mark.parametrize("name", ["s1", "s2", "qkv", "llama"])
@pytest.mark.parametrize("units", UNITS, ids=["G1", "G2-3", "G4", "short-prompt"])
def test_shared_logprobs_equal_alone(models, name, units):
    model = models[name]
    assert supports_prompt_sharing(model)
    assert _logprob_error(model, _groups(units, model.config.vocab_size), temperature=0.7) < 2e-5


@pytest.mark.parametrize("name", ["s1", "qkv"])
def test_shared_gradients_equal_alone(models, name):
    """The prompt's backward runs once and collects every response's gradient: parameter gradients
    (summary embedding and summary projections included) equal those of packing each pair alone."""
    model = models[name]
    groups = _groups([(10, [7, 2, 5]), (13, [3, 6])], model.config.vocab_size, seed=4)
    flat = _flat(groups)
    grads, values = [], []
    for row in (pack_shared(groups), pack([p for p, _ in flat], [r for _, r in flat])):
        model.zero_grad()
        lps, _ = packed_logprobs(model, row, chunk=4)
        lp = torch.cat(lps)
        (lp * torch.linspace(-1, 1, lp.numel())).sum().backward()
        values.append(lp.detach())
        grads.append({n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None})
    model.zero_grad()
    torch.testing.assert_close(values[0], values[1], atol=2e-5, rtol=0)
    assert grads[0].keys() == grads[1].keys() and "summary_embed.weight" in grads[0]
    for n in grads[0]:
        torch.testing.assert_close(grads[0][n], grads[1][n], atol=2e-5, rtol=1e-4, msg=n)


def _boundary_summary_from_prompt(first: int, end: int, chunk: int) -> torch.Tensor:
    """Mutation: the prompt's trailing partial chunk gets the summary, shared by every response."""
    return torch.arange(-(-first // chunk), -(-end // chunk) if first == 0 else end // chunk)


def _responses_see_each_other(q_info, k_info, window, summaries_visible=True):
    return shared.prefix_rule(q_info[:4], k_info[:4], window, summaries_visible)


def _boundary_summary_skips_prompt_text(q_info, k_info, window, summaries_visible=True):
    """Mutation: a response's summary reads only the response's text (of the boundary chunk: part of it)."""
    ok = shared.prefix_rule(q_info[:4], k_info[:4], window, summaries_visible)
    q_sum = q_info[1].bool()
    return ok & (k_info[4] == q_info[4]) | ok & (k_info[4] < 0) & ~(q_sum & (q_info[4] >= 0))


@pytest.mark.parametrize(
    "target, mutant",
    [
        ("_summary_chunks", _boundary_summary_from_prompt),
        ("shared_rule", _responses_see_each_other),
        ("shared_rule", _boundary_summary_skips_prompt_text),
    ],
    ids=["boundary-summary-from-prompt", "responses-see-each-other", "boundary-summary-skips-prompt"],
)
def test_equality_check_catches_a_wrong_layout_or_rule(models, monkeypatch, target, mutant):
    """The equality above is not vacuous: each of these mistakes moves log-probs far past its tolerance."""
    # responses long enough that queries past the window read the boundary summary in a layer after the
    # first (a summary's first-layer K/V come from its embedding alone, whatever it attends to)
    model = models["s1"]
    groups = _groups([(10, [12, 9, 2]), (13, [11, 6])], model.config.vocab_size)
    assert _logprob_error(model, groups) < 2e-5
    monkeypatch.setattr(shared, target, mutant)
    assert _logprob_error(model, groups) > 1e-3


def test_flex_forward_equals_reference(models, monkeypatch):
    """The FlexAttention path (a BlockMask of the same rule; what a GPU runs) in forward on the CPU
    (where the dense mask is the default: FlexAttention has no CPU backward)."""
    import ksa.modeling

    model = models["s2"]
    groups = _groups([(13, [3, 1, 11, 6]), (8, [5, 9])], model.config.vocab_size, seed=7)
    ids = torch.tensor([t for p, rs in groups for t in p + [x for r in rs for x in r]])
    units = [(len(p), [len(r) for r in rs]) for p, rs in groups]
    out = {}
    with torch.no_grad():
        for impl in ("reference", "flex"):
            model.config.ksa_impl = impl
            monkeypatch.setattr(ksa.modeling, "shared_mask", partial(shared.shared_mask, block=impl == "flex"))
            out[impl] = model.shared_prompt_hidden(ids, units)
    model.config.ksa_impl = "reference"
    torch.testing.assert_close(out["flex"], out["reference"], atol=1e-5, rtol=1e-5)


def test_block_mask_equals_dense_mask():
    """Tile by tile, the BlockMask (full tiles, partial tiles + mask_mod) is the dense rule, over a row
    longer than one 128-slot tile."""
    lay = shared.shared_layout([(150, [40, 7, 33]), (20, [90])], chunk=8, summaries=1)
    for window in (1, 4, 100):
        dense = shared.shared_dense_mask(lay, window)
        block = shared.shared_block_mask(lay, window)
        torch.testing.assert_close(block.to_dense()[0, 0].bool(), _tiles(dense, 128))
        idx = torch.arange(lay.length)
        torch.testing.assert_close(block.mask_mod(0, 0, idx[:, None], idx[None, :]), dense)


def _tiles(dense: torch.Tensor, tile: int) -> torch.Tensor:
    n = -(-dense.shape[0] // tile)
    padded = torch.zeros(n * tile, n * tile, dtype=torch.bool)
    padded[: dense.shape[0], : dense.shape[1]] = dense
    return padded.view(n, tile, n, tile).any(3).any(1)


@pytest.mark.parametrize("checkpointing", [False, True])
def test_learner_shares_prompts_of_a_ksa_policy(tiny_model_dir, checkpointing):
    """Learner._rows packs a KSA policy's groups behind one copy of each prompt and makes the same update
    as packing every (prompt, response) alone (also with checkpointed layers recomputing in backward)."""
    from golong.config import AlgoConfig, ModelConfig, OptimConfig
    from golong.learner import Learner, Sample

    g = torch.Generator().manual_seed(0)
    prompts = [torch.randint(5, 200, (n,), generator=g).tolist() for n in (30, 13)]
    samples = [
        Sample(prompt_ids=prompts[k], response_ids=torch.randint(5, 200, (r,), generator=g).tolist(), advantage=a,
               group_id=k)
        for k, r, a in [(0, 6, 1.0), (0, 11, -1.0), (0, 3, 0.5), (1, 7, 1.0), (1, 5, -0.5)]
    ]
    runs = []
    for share in (True, False):
        model = ModelConfig(path=str(tiny_model_dir), ksa={"chunk": 4, "windows": [1, 3]}, gradient_checkpointing=checkpointing)
        learner = Learner(model, OptimConfig(lr=1e-3, share_prompts=share, micro_batch_tokens=64), AlgoConfig(),
                          device="cpu")
        rows = learner._rows(samples)
        assert all((row.members is not None) == share for _, row in rows)
        metrics = learner.train_step(samples)
        runs.append((metrics, torch.cat([p.detach().flatten() for p in learner.model.parameters()])))
    (shared_m, w_shared), (plain_m, w_plain) = runs
    assert shared_m["packed_tokens"] == 30 + 6 + 11 + 3 + 13 + 7 + 5
    for key in ("loss", "grad_norm", "entropy"):
        assert shared_m[key] == pytest.approx(plain_m[key], rel=1e-4, abs=1e-6), key
    torch.testing.assert_close(w_shared, w_plain, rtol=1e-4, atol=2e-5)


def _random_layout(rng, pad: bool):
    chunk = rng.choice([1, 3, 4, 8])
    summaries = rng.randint(1, min(chunk, 2))
    units = [(rng.randint(1, 60), [rng.randint(0, 50) for _ in range(rng.randint(0, 4))]) for _ in range(rng.randint(1, 3))]
    return shared.shared_layout(units, chunk, summaries, pad=rng.randint(1, 40) if pad else 0)


def _dense_from_intervals(iv: torch.Tensor, length: int) -> torch.Tensor:
    keys = torch.arange(length)[None]
    out = torch.zeros(length, length, dtype=torch.bool)
    for a in range(0, iv.shape[1], 2):
        out |= (keys >= iv[:, a : a + 1]) & (keys <= iv[:, a + 1 : a + 2])
    return out


@pytest.mark.parametrize("seed", range(4))
def test_attended_intervals_are_the_rule(seed):
    """The key intervals the BlockMask is counted from say, query by query, exactly what the rule says,
    over random units (partial boundary chunks, empty responses, S = 1 and 2), padding, windows from 0
    to beyond the row, and Sliding Chunk Attention; the intervals of the next window do not."""
    import random

    from ksa.config import FULL_WINDOW

    rng = random.Random(seed)
    sharp = 0
    for trial in range(25):
        lay = _random_layout(rng, pad=trial % 2 == 1)
        assert lay.length == shared.shared_length(lay.units, lay.chunk, lay.summaries) + lay.pad
        for window in (0, 1, 3, FULL_WINDOW):
            for visible in (True, False):
                rule = shared.shared_dense_mask(lay, window, visible)
                got = _dense_from_intervals(shared._attended_intervals(lay, window, visible), lay.length)
                assert torch.equal(got, rule), (lay.units, lay.chunk, lay.summaries, lay.pad, window, visible)
            wider = _dense_from_intervals(shared._attended_intervals(lay, window + 1), lay.length)
            sharp += not torch.equal(wider, shared.shared_dense_mask(lay, window))
    assert sharp > 10


@pytest.mark.parametrize("seed", range(3))
def test_block_mask_equals_create_block_mask(seed):
    """The BlockMask counted from intervals has create_block_mask's partial and full tiles (it evaluates
    the rule pair by pair), on rows of several tiles, bucketed (a multiple of the tile) or not."""
    import random

    from torch.nn.attention.flex_attention import create_block_mask

    from tests.test_packing_buckets import _tile_sets

    rng = random.Random(100 + seed)
    units = [(rng.randint(100, 300), [rng.randint(0, 150) for _ in range(rng.randint(1, 4))]) for _ in range(2)]
    n = shared.shared_length(units, 8, 1)
    lay = shared.shared_layout(units, 8, 1, pad=(-n % 128) + 128 * seed if seed else 0)
    for window in (1, 4, 1 << 20):
        got = shared.shared_block_mask(lay, window)
        ref = create_block_mask(got.mask_mod, 1, 1, lay.length, lay.length, device="cpu", BLOCK_SIZE=128)
        assert torch.equal(got.kv_num_blocks, ref.kv_num_blocks)
        assert torch.equal(got.full_kv_num_blocks, ref.full_kv_num_blocks)
        assert _tile_sets(got.kv_num_blocks, got.kv_indices) == _tile_sets(ref.kv_num_blocks, ref.kv_indices)
        assert _tile_sets(got.full_kv_num_blocks, got.full_kv_indices) == _tile_sets(ref.full_kv_num_blocks, ref.full_kv_indices)


def test_padding_slots_are_a_unit_of_their_own():
    lay = shared.shared_layout([(10, [7, 2])], chunk=4, pad=9)
    plain = shared.shared_layout([(10, [7, 2])], chunk=4)
    n = plain.length
    assert lay.length == n + 9 and torch.equal(lay.text_slots, plain.text_slots)
    dense = shared.shared_dense_mask(lay, 1)
    assert torch.equal(dense[:n, :n], shared.shared_dense_mask(plain, 1))
    assert not dense[:n, n:].any() and not dense[n:, :n].any()
    assert dense[n:, n:].diagonal().all() and not lay.is_summary[n:].any()  # every padding row sees itself


@pytest.mark.parametrize("name", ["s2", "qkv"])
def test_padded_layout_gives_the_same_states_and_gradients(models, name):
    """Padding slots (a bucketed row length) change no text slot's hidden state nor any gradient."""
    model = models[name]
    groups = _groups([(13, [3, 11, 6]), (8, [5, 9])], model.config.vocab_size, seed=5)
    ids = torch.tensor([t for p, rs in groups for t in p + [x for r in rs for x in r]])
    units = [(len(p), [len(r) for r in rs]) for p, rs in groups]
    results = []
    for pad in (0, 37):
        model.zero_grad()
        hidden = model.shared_prompt_hidden(ids, units, pad=pad)
        (hidden * torch.linspace(-1, 1, hidden.numel()).view_as(hidden)).sum().backward()
        results.append((hidden.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}))
    model.zero_grad()
    (h0, g0), (h1, g1) = results
    torch.testing.assert_close(h1, h0, atol=1e-5, rtol=1e-5)
    assert g0.keys() == g1.keys()
    for n in g0:
        assert torch.isfinite(g1[n]).all(), n
        torch.testing.assert_close(g1[n], g0[n], atol=1e-4, rtol=1e-4, msg=n)  # gradients of size 10-70


def _attend_plan_and_dense(layout, plan, window, heads=(4, 2), dim=8, seed=0):
    """(pieces output and q/k/v grads, dense-rule output and grads), float64, for random q, k, v."""
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(1, h, layout.length, dim, generator=g, dtype=torch.float64) for h in (heads[0], heads[1], heads[1])]
    weight = torch.randn(1, heads[0], layout.length, dim, generator=g, dtype=torch.float64)
    results = []
    for mask in (plan, shared.shared_dense_mask(layout, window)):
        q, k, v = (t.clone().requires_grad_(True) for t in base)
        out = shared.shared_ksa_attention(q, k, v, mask)
        (out * weight).sum().backward()
        results.append([out.detach(), *(t.grad for t in (q, k, v))])
    return results


@pytest.mark.parametrize("summaries", [1, 2])
@pytest.mark.parametrize("pad", [0, 7])
@pytest.mark.parametrize("units", UNITS, ids=str)
def test_window_pieces_equal_the_dense_rule(units, pad, summaries):
    """A window covering the row (the hybrid's full layers): text through ksa.pieces, each summary over its
    chunk, equal to the dense shared rule in float64 (outputs and q / k / v gradients), grouped heads,
    partial boundary chunks, empty responses, padding, S = 1 and 2. A window one chunk short gets no plan."""
    layout = shared.shared_layout(units, chunk=4, summaries=summaries, pad=pad)
    longest = max([p + max(rs, default=0) for p, rs in units] + [pad])
    window = (longest - 1) // 4
    plan = shared.shared_mask(layout, window, "triton")
    assert isinstance(plan, shared.WindowPieces) and plan.sum_slots.numel() == int(layout.is_summary.sum())
    assert shared.window_pieces(layout, window - 1) is None if window else True
    got, want = _attend_plan_and_dense(layout, plan, window)
    for a, b in zip(got, want, strict=True):
        torch.testing.assert_close(a, b, atol=1e-10, rtol=1e-10)


@pytest.mark.parametrize("mutant", ["boundary text", "later summaries", "text order"])
def test_window_pieces_check_catches_a_wrong_plan(mutant):
    """The comparison can fail: a summary reading its own span for the boundary chunk's prompt text, a
    summary seeing its chunk's later summaries, responses laid out in the wrong order."""
    import dataclasses

    layout = shared.shared_layout(UNITS[2], chunk=4, summaries=2)
    plan = shared.window_pieces(layout, 1000)
    if mutant == "boundary text":  # text keys before the summary's own span (the prompt's) moved into it
        spans, span_of = shared._span_starts(layout)
        own_first = spans[span_of[plan.sum_slots].long(), 0].long()[:, None]
        text = plan.sum_keys[:, :4]
        text = torch.where(text < own_first, own_first + torch.arange(4), text)
        bad = dataclasses.replace(plan, sum_keys=torch.cat([text, plan.sum_keys[:, 4:]], 1))
        assert not torch.equal(bad.sum_keys, plan.sum_keys)
    elif mutant == "later summaries":
        bad = dataclasses.replace(plan, sum_mask=torch.ones_like(plan.sum_mask))
    else:
        (prompt, responses), *rest = plan.units
        bad = dataclasses.replace(plan, units=((prompt, tuple(reversed(responses))), *rest))
    with pytest.raises((AssertionError, ValueError)):
        got, want = _attend_plan_and_dense(layout, bad, 1000)
        for a, b in zip(got, want, strict=True):
            torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-6)


@pytest.mark.parametrize("name", ["s1"])
def test_full_layer_pieces_give_the_reference_logprobs_and_gradients(models, name, tiny_tokenizer):
    """A hybrid with a full layer whose kernel is not the reference: its shared rows' full layer runs the
    window pieces (the windowed layers the dense rule, on the CPU), with the log-probs and parameter
    gradients of the reference kernel everywhere."""
    groups = _groups([(10, [7, 2, 5]), (13, [3, 6])], models[name].config.vocab_size, seed=6)
    model = ksa_tiny(tiny_tokenizer, windows=(3, 1, 1000), chunk=4, impl="triton")[1]
    reference = models[name]
    calls = []
    original = shared.window_pieces_attention
    results = []
    for m in (model, reference):
        m.zero_grad()
        with pytest.MonkeyPatch.context() as patch:
            patch.setattr(shared, "window_pieces_attention", lambda *a, **k: calls.append(1) or original(*a, **k))
            lps, _ = packed_logprobs(m, pack_shared(groups), chunk=4)
        lp = torch.cat(lps)
        (lp * torch.linspace(-1, 1, lp.numel())).sum().backward()
        results.append((lp.detach(), {n: p.grad.clone() for n, p in m.named_parameters() if p.grad is not None}))
    assert calls  # the full layer took the pieces (the reference model never does)
    (lp_a, g_a), (lp_b, g_b) = results
    torch.testing.assert_close(lp_a, lp_b, atol=1e-5, rtol=0)
    assert g_a.keys() == g_b.keys()
    for n in g_a:
        torch.testing.assert_close(g_a[n], g_b[n], atol=1e-5, rtol=1e-4, msg=n)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_window_pieces_equal_flex():
    """On CUDA in bf16 (cuDNN's pieces; raggedsdpa runs it with TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1), 16 query /
    8 key heads of 128, a covering window: outputs and
    q / k / v gradients against the dense rule in float32, within bf16's error (compared with the shared
    FlexAttention's own bf16 error under the same window)."""
    units = [(300, [129, 0, 77]), (64, [200])]
    pad = -shared.shared_length(units, chunk=8) % 128 or 128  # a bucketed row: a multiple of FlexAttention's tile
    layout = shared.shared_layout(units, chunk=8, pad=pad, device="cuda")
    window = 1000
    g = torch.Generator().manual_seed(0)
    base = [torch.randn(1, layout.length, h, 128, generator=g) for h in (16, 8, 8)]
    weight = torch.randn(1, 16, layout.length, 128, generator=g).cuda()
    results = {}
    for kind, dtype, mask in (("reference", torch.float32, shared.shared_dense_mask(layout, window)),
                              ("flex", torch.bfloat16, shared.shared_block_mask(layout, window)),
                              ("pieces", torch.bfloat16, shared.window_pieces(layout, window))):
        q, k, v = (t.to("cuda", dtype).transpose(1, 2).detach().requires_grad_(True) for t in base)
        out = shared.shared_ksa_attention(q, k, v, mask)
        (out.float() * weight).sum().backward()
        results[kind] = [out.float(), *(t.grad.float() for t in (q, k, v))]
    for name, ref, flex, pieces in zip("out dq dk dv".split(), results["reference"], results["flex"], results["pieces"], strict=True):
        bf16_error = (flex - ref).norm() / ref.norm()
        assert (pieces - ref).norm() / ref.norm() <= 2 * bf16_error + 1e-3, name


def test_window_pieces_where_they_pay_off(monkeypatch):
    """shared_mask gives a covering window its WindowPieces on the CPU, and on CUDA only with cuDNN's
    length-bucketed plans (TORCH_CUDNN_SDPA_AVOID_RECOMPILE=1): otherwise every new length would cost a plan."""
    from ksa.pieces import pays_off

    layout = shared.shared_layout(UNITS[1], chunk=4)
    assert isinstance(shared.shared_mask(layout, 1000, "triton"), shared.WindowPieces)
    assert isinstance(shared.shared_mask(layout, 1000, "reference"), torch.Tensor)
    assert not isinstance(shared.shared_mask(layout, 1, "triton"), shared.WindowPieces)  # not covering: the rule
    cuda = torch.device("cuda")
    monkeypatch.delenv("TORCH_CUDNN_SDPA_AVOID_RECOMPILE", raising=False)
    assert pays_off(torch.device("cpu")) and not pays_off(cuda)
    monkeypatch.setenv("TORCH_CUDNN_SDPA_AVOID_RECOMPILE", "1")
    assert pays_off(cuda) == torch.backends.cuda.cudnn_sdp_enabled()
