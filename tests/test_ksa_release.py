"""The KSA release format: a tiny checkpoint written here by hand in that format (config keys, appended
summary rows, zero-padded lm_head, *_proj_summary names) is loaded by ksa.from_pretrained and checked
against an independent forward written from the format's description with the plain Qwen3 modules."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import save_file
from transformers import GenerationConfig, Qwen3Config, Qwen3ForCausalLM
from transformers.models.qwen3.modeling_qwen3 import apply_rotary_pos_emb

import ksa
from ksa.mask import dense_mask
from ksa.release import ReleaseFormatError, release_settings
from tests.tiny import build_model

C = 4
WINDOWS = "([1]+[2]+[2000])*1"  # three window sizes: ring of 1 chunk, ring of 2 chunks, full
PAD_ROWS = 3  # embedding rows past the summary rows (the release pads its vocabulary)


def release_config(base_config, *, S, indep, mix, norm, tied, truncate=True) -> dict:
    text = base_config.vocab_size
    raw = {k: v for k, v in base_config.to_diff_dict().items() if k not in ("transformers_version",)}
    raw.update(
        architectures=["Qwen3ForCausalLM"], model_type="qwen3", vocab_size=text + S + PAD_ROWS,
        tie_word_embeddings=tied, use_summary_attention=True, summary_chunk_size=C, summary_token_num=S,
        summary_token_begin=text, summary_sliding_chunk_num=WINDOWS, summary_chunk_position_ids_type="origin",
        summary_token_position_ids_type="last_chunk_slice_right", summary_independent_parameters=indep,
        summary_independent_attention_layernorm=norm, mix_coeff=mix, summary_attention_mode="kernel",
        auto_map={"AutoModelForCausalLM": "modeling_qwen3sa.Qwen3ForCausalLM"},
    )
    if truncate:
        raw["truncate_predict_nums"] = text
    return raw


def write_release(path, tok, *, S=1, indep=True, mix=0.7, norm=True, tied=False, truncate=True, seed=0):
    """A release-format folder from a tiny random Qwen3: returns (path, raw config, release tensors)."""
    base = build_model(tok, layers=3, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    rnd = lambda *shape: torch.randn(*shape, generator=g)  # noqa: E731
    state = {}
    for name, p in base.state_dict().items():
        if name == "lm_head.weight":
            continue
        state[name] = rnd(*p.shape) * 0.15 if p.dim() >= 2 else 1 + 0.1 * rnd(*p.shape)
    text, d = base.config.vocab_size, base.config.hidden_size
    state["model.embed_tokens.weight"] = torch.cat([state["model.embed_tokens.weight"], rnd(S + PAD_ROWS, d)])
    if not tied:
        state["lm_head.weight"] = torch.cat([rnd(text, d) * 0.15, torch.zeros(S + PAD_ROWS, d)])
    for i in range(3):
        pre = f"model.layers.{i}."
        if indep:
            for x in "qkv":
                state[f"{pre}self_attn.{x}_proj_summary.weight"] = rnd(*state[f"{pre}self_attn.{x}_proj.weight"].shape) * 0.15
        if norm:
            state[f"{pre}input_layernorm_summary.weight"] = 1 + 0.3 * rnd(d)
    raw = release_config(base.config, S=S, indep=indep, mix=mix, norm=norm, tied=tied, truncate=truncate)
    path.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "model.safetensors"))
    (path / "config.json").write_text(json.dumps(raw))
    (path / "modeling_qwen3sa.py").write_text("# the checkpoint's own modeling code would live here\n")
    tok.save_pretrained(path)
    GenerationConfig(eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id).save_pretrained(path)
    return path, raw, state


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """Tiny matrices: one thread is fastest, and far faster than two on a busy 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def release(tiny_tokenizer, tmp_path_factory):
    return write_release(tmp_path_factory.mktemp("ksa-release"), tiny_tokenizer)


# --- an independent forward, written from the format's description ----------------------------
def expand(ids: list[int], S: int, begin: int):
    """Expanded ids, RoPE positions ("origin" text, "last_chunk_slice_right" summaries), summary flags."""
    out, pos, flag = [], [], []
    for t, tid in enumerate(ids):
        out += [tid]
        pos += [t]
        flag += [False]
        if (t + 1) % C == 0:
            c = t // C
            out += [begin + j for j in range(S)]
            pos += [max(c * C + ((j + 1) * C) // S - 1, c * C) for j in range(S)]
            flag += [True] * S
    return torch.tensor(out), torch.tensor(pos), torch.tensor(flag)


def rms(x, w, eps):
    return w * (x.float() * torch.rsqrt(x.float().pow(2).mean(-1, keepdim=True) + eps))


def reference_logits(raw: dict, state: dict, ids: list[int]) -> torch.Tensor:
    """Text-position logits of the release model, computed layer by layer with explicit masks."""
    skip = ("auto_map", "mix_coeff", "truncate_predict_nums", "use_summary_attention", "model_type", "architectures")
    cfg = Qwen3Config(**{k: v for k, v in raw.items() if not k.startswith("summary_") and k not in skip})
    plain = Qwen3ForCausalLM(cfg).eval()
    plain.load_state_dict({k: v for k, v in state.items() if "summary" not in k}, strict=False)
    if cfg.tie_word_embeddings:
        plain.lm_head.weight = plain.model.embed_tokens.weight
    S, begin, m = raw["summary_token_num"], raw["summary_token_begin"], raw["mix_coeff"]
    windows = ksa.parse_window_pattern(raw["summary_sliding_chunk_num"])
    x_ids, pos, is_sum = expand(ids, S, begin)
    h = plain.model.embed_tokens(x_ids)[None]  # summary ids embed to the appended rows
    cos, sin = plain.model.rotary_emb(h, pos[None])
    T, L, eps = len(ids), len(x_ids), cfg.rms_norm_eps
    for i, layer in enumerate(plain.model.layers):
        at, pre = layer.self_attn, f"model.layers.{i}."
        hn = layer.input_layernorm(h)
        if raw["summary_independent_attention_layernorm"]:
            hn = torch.where(is_sum[None, :, None], rms(h, state[pre + "input_layernorm_summary.weight"], eps), hn)
        heads = lambda y, hd=at.head_dim: y.view(1, L, -1, hd)  # noqa: E731
        q, k, v = at.q_norm(heads(at.q_proj(hn))), at.k_norm(heads(at.k_proj(hn))), heads(at.v_proj(hn))
        if raw["summary_independent_parameters"]:
            qs = at.q_norm(heads(hn @ state[pre + "self_attn.q_proj_summary.weight"].T))
            ks = at.k_norm(heads(hn @ state[pre + "self_attn.k_proj_summary.weight"].T))
            vs = heads(hn @ state[pre + "self_attn.v_proj_summary.weight"].T)
            sel = is_sum[None, :, None, None]
            q, k, v = (torch.where(sel, m * a + (1 - m) * b, b) for a, b in ((qs, q), (ks, k), (vs, v)))
        q, k = apply_rotary_pos_emb(q.transpose(1, 2), k.transpose(1, 2), cos, sin)
        v = v.transpose(1, 2)
        rep = q.shape[1] // k.shape[1]
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        scores = (q @ k.transpose(-1, -2)) * at.scaling
        scores = scores.masked_fill(~dense_mask(T, C, S, windows[i]), float("-inf"))
        a = (scores.softmax(-1) @ v).transpose(1, 2).reshape(1, L, -1)
        h = h + at.o_proj(a)
        h = h + layer.mlp(layer.post_attention_layernorm(h))
    h = plain.model.norm(h)[0, ~is_sum]
    logits = plain.lm_head(h)
    n = raw.get("truncate_predict_nums", 151936)
    return logits[..., :n] if n > 0 else logits


# --- tests ---------------------------------------------------------------------------------
def test_logits_equal_independent_forward(release, tiny_tokenizer):
    path, raw, state = release
    model = ksa.from_pretrained(path, dtype=torch.float32)
    assert model.config.ksa_windows == [1, 2, 2000] and model.config.vocab_size == len(tiny_tokenizer)
    g = torch.Generator().manual_seed(7)
    ids = torch.randint(5, len(tiny_tokenizer), (2, 37), generator=g)
    with torch.no_grad():
        got = model(ids).logits
        for b in range(2):
            want = reference_logits(raw, state, ids[b].tolist())
            assert want.shape == got[b].shape and want.abs().max() > 0.5
            torch.testing.assert_close(got[b], want, atol=1e-4, rtol=1e-4)


def test_teacher_forced_through_cache_equals_independent_forward(release, tiny_tokenizer):
    path, raw, state = release
    model = ksa.from_pretrained(path)
    ids = torch.randint(5, len(tiny_tokenizer), (1, 41), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        want = reference_logits(raw, state, ids[0].tolist())
        cache = ksa.KSACache(model.config)
        got = [model(ids[:, :6], cache=cache).logits[0]]
        got += [model(ids[:, t : t + 1], cache=cache).logits[0] for t in range(6, 41)]
    torch.testing.assert_close(torch.cat(got), want, atol=1e-4, rtol=1e-4)


def test_greedy_generation_through_cache_equals_recomputation(release, tiny_tokenizer):
    model = ksa.from_pretrained(release[0])
    ids = torch.randint(5, len(tiny_tokenizer), (2, 11), generator=torch.Generator().manual_seed(9))
    cfg = GenerationConfig(max_new_tokens=30, do_sample=False, eos_token_id=None, pad_token_id=0)
    with torch.no_grad():
        out = model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), generation_config=cfg)
        want = ids
        for _ in range(30):
            want = torch.cat([want, model(want).logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, want)
    assert len(set(out[:, 11:].flatten().tolist())) > 8


@pytest.mark.parametrize("tied,truncate,S", [(True, False, 2), (False, True, 2)])
def test_other_release_variants(tiny_tokenizer, tmp_path, tied, truncate, S):
    """Tied head without truncate_predict_nums (the reference then keeps 151936 columns = all here),
    two summaries per chunk, shared projections, no summary layernorm."""
    path, raw, state = write_release(tmp_path, tiny_tokenizer, S=S, indep=False, norm=False, tied=tied, truncate=truncate)
    model = ksa.from_pretrained(path)
    ids = torch.randint(5, len(tiny_tokenizer), (1, 29), generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        got = model(ids).logits[0]
    want = reference_logits(raw, state, ids[0].tolist())
    assert got.shape[-1] == (len(tiny_tokenizer) if truncate else raw["vocab_size"])
    torch.testing.assert_close(got, want, atol=1e-4, rtol=1e-4)


def test_export_round_trip_is_exact(release, tmp_path):
    from safetensors.torch import load_file

    path, raw, state = release
    model = ksa.from_pretrained(path)
    out = ksa.save_pretrained(model, tmp_path / "out")
    written = json.loads((out / "config.json").read_text())
    for key in ("summary_token_begin", "vocab_size", "summary_sliding_chunk_num", "mix_coeff", "auto_map",
                "summary_independent_parameters", "summary_independent_attention_layernorm", "truncate_predict_nums"):
        assert written[key] == raw[key], key
    tensors = load_file(str(out / "model.safetensors"))
    assert set(tensors) == set(state)
    text, S = raw["summary_token_begin"], raw["summary_token_num"]
    for name, t in state.items():
        if name == "model.embed_tokens.weight":  # text + summary rows kept; the unused padding rows are zeros
            assert torch.equal(tensors[name][: text + S], t[: text + S]) and not tensors[name][text + S :].any()
        else:
            assert torch.equal(tensors[name], t), name
    again = ksa.from_pretrained(out)
    a, b = model.state_dict(), again.state_dict()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_converted_qwen3_exports_and_loads_back(tiny_tokenizer, tmp_path):
    base = build_model(tiny_tokenizer, layers=3, seed=4)
    model = ksa.convert_model(base, ksa.KSAConfig(chunk=C, windows=[1, 2, 2000], summary_qkv=True, mix_coeff=0.5, summary_norm=True)).eval()
    with torch.no_grad():  # make the summary parameters differ from the shared ones they start as
        for n, p in model.named_parameters():
            if "summary_" in n:
                p.add_(0.2 * torch.randn_like(p))
    out = ksa.save_pretrained(model, tmp_path / "rel")
    raw = json.loads((out / "config.json").read_text())
    assert raw["vocab_size"] == len(tiny_tokenizer) + 1 and raw["summary_token_begin"] == len(tiny_tokenizer)
    loaded = ksa.from_pretrained(out)
    ids = torch.randint(5, len(tiny_tokenizer), (2, 33), generator=torch.Generator().manual_seed(5))
    with torch.no_grad():
        torch.testing.assert_close(loaded(ids).logits, model(ids).logits, atol=1e-5, rtol=1e-5)


def test_export_cli_copies_tokenizer_and_code(release, tmp_path):
    from typer.testing import CliRunner

    from golong.cli import app

    res = CliRunner().invoke(app, ["ksa", "export", str(release[0]), "-o", str(tmp_path / "x")])
    assert res.exit_code == 0, res.output
    for name in ("config.json", "model.safetensors", "tokenizer.json", "generation_config.json", "modeling_qwen3sa.py"):
        assert (tmp_path / "x" / name).is_file(), name
    res = CliRunner().invoke(app, ["ksa", "export", str(tmp_path / "nothing"), "-o", str(tmp_path / "y")])
    assert res.exit_code == 1 and "config.json" in res.output


def test_load_policy_detects_release_format(release):
    from golong.config import ModelConfig
    from golong.models import load_policy

    model, tok = load_policy(ModelConfig(path=str(release[0])))
    assert type(model).__name__ == "KSAQwen3ForCausalLM" and model.config.ksa_summary_qkv
    assert tok.pad_token_id is not None


@pytest.mark.parametrize(
    "change,key",
    [
        ({"summary_token_position_ids_type": "zeros"}, "summary_token_position_ids_type"),
        ({"summary_chunk_position_ids_type": "inner_chunk"}, "summary_chunk_position_ids_type"),
        ({"summary_sliding_chunk_num": "__import__('os').getcwd()"}, "summary_sliding_chunk_num"),
        ({"summary_sliding_chunk_num": "[1]*2"}, "summary_sliding_chunk_num"),
        ({"summary_new_thing": 1}, "summary_new_thing"),
        ({"summary_layer_freq": "[1, 0, 1]"}, "summary_layer_freq"),
        ({"summary_token_begin": 10**6}, "summary_token_begin"),
        ({"mix_coeff": "0.5"}, "mix_coeff"),
        ({"model_type": "llama"}, "model_type"),
    ],
)
def test_unsupported_keys_name_the_key(release, change, key):
    raw = {**release[1], **change}
    with pytest.raises(ReleaseFormatError, match=key):
        release_settings(raw)


def test_window_expression_parser_is_safe():
    assert ksa.parse_window_pattern("([128]*3+[1024]*1)*6") == ([128] * 3 + [1024]) * 6
    assert ksa.parse_window_pattern("7") == 7 and ksa.parse_window_pattern("[3, 4,5]") == [3, 4, 5]
    for bad in ("__import__('os')", "os", "len([1])", "[1]**2", "2**3", "[1]*-1", "[1.5]", "lambda: 1", "[1]*n", ""):
        with pytest.raises(ksa.KSAConfigError):
            ksa.parse_window_pattern(bad)
    raw = {"num_hidden_layers": 24, "summary_sliding_chunk_num": "([128]*3+[1024]*1)*6"}
    from ksa.release import _layer_list

    assert _layer_list(raw, "summary_sliding_chunk_num", 24) == ([128] * 3 + [1024]) * 6
    assert _layer_list({"w": [2, 3]}, "w", 2) == [2, 3] and _layer_list({"w": 5}, "w", 2) == [5, 5]
    for bad in (True, 1.5, {"a": 1}, ["1", 2], None):
        with pytest.raises(ReleaseFormatError, match="'w'"):
            _layer_list({"w": bad}, "w", 2)


def test_gradient_checkpointing_keeps_summary_parameters_exact(release, tiny_tokenizer):
    """Checkpointed layers recompute in backward, after the KSA forward returned: the summary
    projections, mix and layernorm must still apply there (same gradients as without checkpointing)."""
    ids = torch.randint(5, len(tiny_tokenizer), (2, 26), generator=torch.Generator().manual_seed(6))
    grads = []
    for ckpt in (False, True):
        model = ksa.from_pretrained(release[0]).train()
        if ckpt:
            enable = getattr(model, "activation_checkpointing_enable", None)
            if enable is not None:
                enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        model(ids, labels=ids).loss.backward()
        grads.append({n: p.grad for n, p in model.named_parameters() if "summary" in n or "layers.0.self_attn.q_proj" in n})
    for name in ("layers.0.self_attn.summary_q_proj", "layers.1.self_attn.summary_k_proj", "layers.0.summary_input_layernorm"):
        assert grads[0][f"model.{name}.weight"].abs().sum() > 0, name  # the summary parameters are in use
    for name, g in grads[0].items():
        torch.testing.assert_close(grads[1][name], g, atol=1e-5, rtol=1e-4, msg=name)


def test_ksa4b_recipe_holds_the_golongrl_settings():
    from pathlib import Path

    from golong.config import load_recipe

    r = load_recipe(Path(__file__).resolve().parents[1] / "recipes" / "ksa4b_grpo_tmn.yaml")
    assert (r.model.path, r.rollout.engine, r.model.dtype, r.model.gradient_checkpointing) == (
        "OpenOneRec/KSA-4B-base", "static", "bfloat16", True)
    assert (r.rollout.group_size, r.rollout.prompts_per_step, r.rollout.temperature) == (16, 128, 1.0)
    assert (r.data.max_prompt_tokens, r.rollout.max_new_tokens, r.data.sources[0].path) == (163840, 16384, "Kwai-Klear/GoLongRL")
    assert (r.optim.lr, r.optim.warmup_steps, r.optim.weight_decay, r.optim.grad_clip) == (2e-6, 5, 0.1, 1.0)
    a = r.algo
    assert (a.estimator, a.clip_low, a.clip_high, a.dual_clip, a.kl_coef, a.loss_agg, a.dynamic_sampling) == (
        "tmn_reweight", 0.2, 0.28, 3.0, 0.0, "token-mean", True)
