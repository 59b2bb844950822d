"""KSA causal LMs: a Qwen3 / Qwen2 / Llama model whose attention follows the KSA layout and mask.

The decoder stack is the base model's own (same parameter names, so base checkpoints load); added:
  summary_embed            nn.Embedding(S, hidden): the input of every summary slot
  self_attn.summary_{q,k,v}_proj  (summary_qkv=True) projections used on summary slots instead
                           (blended with the shared ones by mix_coeff, after the q/k head norms)
  summary_input_layernorm  (summary_norm=True) the input layernorm of summary slots in each layer

forward(input_ids [B, T] text, attention_mask [B, T]) runs, per row, the expanded layout
t0..t{C-1} s0 | tC .. (ksa/layout.py): padding is squeezed out first (real tokens of each row moved
to the front, so left- and right-padded batches give the same numbers), text embeddings and summary
embeddings are interleaved, RoPE takes expand_positions, every layer attends with its own window
through ksa.attention.ksa_attention, summary slots are dropped before the LM head, and logits come
back in the caller's [B, T, V] order. With a KSACache the same forward prefills it, and later calls
decode one text token per row (plus the chunk's summary slots where a chunk completes).

The attention modules dispatch through transformers' AttentionInterface under the name "ksa"; the
KSA forward passes a `ksa_ctx` keyword down the layers to say what to do (layout, window, cache).
"""

from __future__ import annotations

import copy
import dataclasses
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    LlamaConfig,
    LlamaForCausalLM,
    Qwen2Config,
    Qwen2ForCausalLM,
    Qwen3Config,
    Qwen3ForCausalLM,
)
from transformers.modeling_outputs import CausalLMOutputWithPast
from transformers.modeling_utils import AttentionInterface

from ksa.attention import ksa_attention, ksa_mask
from ksa.cache import KSACache
from ksa.config import KSAConfig, KSAConfigError, resolve_windows
from ksa.decode import completes_chunk, mix_summary, step_inputs
from ksa.layout import expand_positions, text_index
from ksa.shared import SharedLayout, shared_ksa_attention, shared_layout, shared_mask

# transformers renamed the cache keyword (past_key_values -> cache) between 5.17 and 5.24
CACHE_KEY = "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


@dataclass
class KSAContext:
    """What the attention of every layer needs for one forward (passed down as `ksa_ctx`)."""

    mode: str  # "ksa": expanded layout; "shared": a shared-prompt row; "causal": plain causal on text; "decode": one cached step
    windows: list[int]
    chunk: int
    summaries: int
    impl: str = "reference"
    visible: bool = True
    text_len: int = 0  # text tokens per (right-padded) row in "ksa" mode
    cache: KSACache | None = None
    lengths: torch.Tensor | None = None  # [B] real tokens per row (prefill)
    pos: torch.Tensor | None = None  # [B] text position of the decoded token
    needs_sum: torch.Tensor | None = None  # [B] the token completes a chunk
    summary_slots: torch.Tensor | None = None  # [B, L] bool, for summary q/k/v projections
    layout: SharedLayout | None = None  # "shared" mode: the row's slots (ksa/shared.py)
    attention_call: Callable | None = None  # "shared" mode: how its FlexAttention is called (shared_ksa_attention)
    masks: dict = field(default_factory=dict)  # window -> what its layers' kernel reads, built before the layers run
    window: int = 0  # the current layer's window and mask ("ksa" / "shared" modes, set by `at_layer`)
    mask: object = None
    extras: dict = field(default_factory=dict)

    def at_layer(self, i: int) -> KSAContext:
        """This context for layer i with its window and mask as plain fields: the attention of a compiled
        layer reads no layer index, so layers of one window share one graph."""
        if self.mode not in ("ksa", "shared"):
            return self
        window = self.windows[i]
        return dataclasses.replace(self, window=window, mask=self.masks.get(window))


def ksa_attention_forward(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    """AttentionInterface entry "ksa": q [B, Hq, L, D], k/v [B, Hkv, L, D] after RoPE -> [B, L, Hq, D]."""
    ctx: KSAContext | None = kwargs.get("ksa_ctx")
    if ctx is None:  # the module used outside a KSA forward: behave like plain SDPA
        from transformers.integrations.sdpa_attention import sdpa_attention_forward

        return sdpa_attention_forward(module, query, key, value, attention_mask, scaling=scaling, dropout=dropout)
    if ctx.mode == "causal":
        out = F.scaled_dot_product_attention(query, key, value, is_causal=True, scale=scaling, enable_gqa=True)
    elif ctx.mode == "decode":
        out = ctx.cache.layers[module.layer_idx].step(query, key, value, ctx.pos, ctx.needs_sum, scaling)
    elif ctx.mode == "shared":
        out = shared_ksa_attention(query, key, value, ctx.mask, scaling, call=ctx.attention_call)
    else:
        out = ksa_attention(
            query, key, value, chunk=ctx.chunk, summaries=ctx.summaries, window=ctx.window,
            impl=ctx.impl, scale=scaling, summaries_visible=ctx.visible, mask=ctx.mask,
        )
        if ctx.cache is not None:
            ctx.cache.layers[module.layer_idx].prefill(key, value, ctx.lengths, ctx.text_len)
    return out.transpose(1, 2).contiguous(), None


AttentionInterface.register("ksa", ksa_attention_forward)

# The summary hooks (q/k/v projections, mix, layernorm) run inside a decoder layer and read the
# KSAContext that layer was called with. A layer names it on entry to its own forward, so a layer
# recomputed by gradient checkpointing in backward (after the KSA forward returned) names it again.
_CURRENT = threading.local()
_CURRENT.ctx = None  # present from the start (in this thread): a compiled layer's guard on it then holds
_LAYER_CLASSES: dict[type, type] = {}


def _current_ctx() -> KSAContext | None:
    return getattr(_CURRENT, "ctx", None)


def _context_layer_class(cls: type) -> type:
    """`cls` (a decoder layer class) whose forward first records its `ksa_ctx` for the summary hooks.
    Same name as `cls`, so name-based wrapping policies (FSDP, device maps) still match it."""
    if cls in _LAYER_CLASSES.values():
        return cls
    if cls not in _LAYER_CLASSES:

        def forward(self, *args, **kwargs):
            outer, _CURRENT.ctx = _current_ctx(), kwargs.get("ksa_ctx")
            try:
                return super(sub, self).forward(*args, **kwargs)
            finally:
                _CURRENT.ctx = outer  # hold no reference (cache, slots) past the layer

        sub = type(cls.__name__, (cls,), {"forward": forward, "__module__": cls.__module__, "__qualname__": cls.__qualname__})
        _LAYER_CLASSES[cls] = sub
    return _LAYER_CLASSES[cls]


# --- the summary hooks: module-level functions that read what they need off the hooked module
# (plain attributes set by `_refer`), so a deep copy of the model hooks its own summary modules.


def _refer(module: nn.Module, **refs) -> None:
    """Unregistered references on `module` (not submodules: no state-dict entries); deepcopy maps them."""
    for name, value in refs.items():
        object.__setattr__(module, name, value)


def _mix(module: nn.Module) -> float:
    return float(getattr(module._ksa_config, "ksa_mix_coeff", 1.0))


def _summary_proj_hook(mod, args, out):
    """Shared q/k/v projection -> on summary slots: m * extra(x) + (1 - m) * shared(x), m = mix_coeff.

    Where a per-head norm follows (mod._ksa_key), the blend happens after it (norm(extra) with
    norm(shared)), as in the released format: the shared output is stashed for the norm's hook.
    """
    ctx = _current_ctx()
    m = _mix(mod)
    if ctx is None or ctx.summary_slots is None or m == 0.0:
        return out
    summ = mod._ksa_extra(args[0])
    if m != 1.0:
        if mod._ksa_key is not None:
            ctx.extras[mod._ksa_key] = out
        else:
            summ = mix_summary(summ, out, m)
    return torch.where(ctx.summary_slots[..., None], summ, out)


def _summary_mix_after_norm_hook(mod, args, out):  # out: norm(summary proj) on summary slots, [B, L, H, D]
    ctx = _current_ctx()
    shared = None if ctx is None else ctx.extras.pop(mod._ksa_key, None)
    if shared is None:
        return out
    m = _mix(mod)
    blended = mix_summary(out, mod.forward(shared.view_as(args[0])), m)
    slots = ctx.summary_slots.reshape(*ctx.summary_slots.shape, *([1] * (out.dim() - 2)))
    return torch.where(slots, blended, out)


def _summary_norm_hook(mod, args, out):
    ctx = _current_ctx()
    if ctx is None or ctx.summary_slots is None:
        return out
    return torch.where(ctx.summary_slots[..., None], mod._ksa_extra(args[0]), out)


def ksa_settings(config) -> KSAConfig:
    """The KSAConfig stored flat (ksa_*) in a KSA model config."""
    return KSAConfig(
        chunk=config.ksa_chunk, summaries=config.ksa_summaries, windows=list(config.ksa_windows),
        impl=config.ksa_impl, summary_qkv=config.ksa_summary_qkv, summaries_visible=config.ksa_summaries_visible,
        mix_coeff=getattr(config, "ksa_mix_coeff", 1.0), summary_norm=getattr(config, "ksa_summary_norm", False),
    )


class KSAMixin:
    """The KSA forward, generation hooks and summary parameters, mixed into a *ForCausalLM class."""

    def __init__(self, config):
        super().__init__(config)
        for name in ("ksa_chunk", "ksa_summaries", "ksa_windows"):
            if getattr(config, name, None) is None:
                raise KSAConfigError(f"KSA config lacks {name}; build it with ksa.ksa_config_from(base_config, KSAConfig(...))")
        config.ksa_windows = resolve_windows(config.ksa_windows, config.num_hidden_layers)
        std = getattr(config, "initializer_range", 0.02)
        self.summary_embed = nn.Embedding(config.ksa_summaries, config.hidden_size)
        nn.init.normal_(self.summary_embed.weight, std=std)
        if getattr(config, "ksa_summary_qkv", False):
            for layer in self.model.layers:
                attn = layer.self_attn
                for name in ("q_proj", "k_proj", "v_proj"):
                    base = getattr(attn, name)
                    extra = nn.Linear(base.in_features, base.out_features, bias=base.bias is not None)
                    extra.weight.data.normal_(std=std)
                    if extra.bias is not None:
                        extra.bias.data.zero_()
                    setattr(attn, f"summary_{name}", extra)
                    head_norm = getattr(attn, f"{name[0]}_norm", None)  # Qwen3: q_norm / k_norm
                    # the norm's hook picks up what the projection's stashed in the same layer: a key per
                    # projection, not per layer (no layer index in a compiled layer's guards)
                    key = name if head_norm is not None else None
                    _refer(base, _ksa_extra=extra, _ksa_key=key, _ksa_config=config)
                    base.register_forward_hook(_summary_proj_hook)
                    if key is not None:
                        _refer(head_norm, _ksa_key=key, _ksa_config=config)
                        head_norm.register_forward_hook(_summary_mix_after_norm_hook)
        if getattr(config, "ksa_summary_norm", False):
            for layer in self.model.layers:
                norm = layer.input_layernorm
                layer.summary_input_layernorm = copy.deepcopy(norm)
                _refer(norm, _ksa_extra=layer.summary_input_layernorm)
                norm.register_forward_hook(_summary_norm_hook)
        if self._uses_summary_slots():  # the summary hooks find the layer's context through it
            for layer in self.model.layers:
                layer.__class__ = _context_layer_class(type(layer))

    def _uses_summary_slots(self) -> bool:
        c = self.config
        return bool(getattr(c, "ksa_summary_qkv", False) or getattr(c, "ksa_summary_norm", False))

    def _use_ksa_attention(self) -> None:
        # from_pretrained may reset the implementation after __init__; the modules read it per call
        if self.model.layers[0].self_attn.config._attn_implementation == "ksa":
            return
        for mod in self.model.modules():
            cfg = getattr(mod, "config", None)
            if cfg is not None and getattr(cfg, "_attn_implementation", None) != "ksa":
                cfg._attn_implementation = "ksa"

    def _context(self, mode: str, **kw) -> KSAContext:
        c = self.config
        return KSAContext(
            mode=mode, windows=list(c.ksa_windows), chunk=c.ksa_chunk, summaries=c.ksa_summaries,
            impl=c.ksa_impl, visible=c.ksa_summaries_visible, **kw,
        )

    def _run_layers(self, hidden: torch.Tensor, position_ids: torch.Tensor, ctx: KSAContext) -> torch.Tensor:
        self._use_ksa_attention()
        cos_sin = self.model.rotary_emb(hidden, position_ids)
        for i, layer in enumerate(self.model.layers[: self.config.num_hidden_layers]):
            out = layer(hidden, attention_mask=None, position_ids=position_ids, position_embeddings=cos_sin, ksa_ctx=ctx.at_layer(i))
            hidden = out[0] if isinstance(out, tuple) else out
        return self.model.norm(hidden)

    # --- full-sequence forward (training, prefill, teacher) --------------------------------------
    def _forward_sequence(self, input_ids, attention_mask, cache, ksa: bool) -> torch.Tensor:
        """Hidden states of the text tokens [B, T, D] in the caller's order."""
        B, T = input_ids.shape
        C, S = self.config.ksa_chunk, self.config.ksa_summaries
        order = None
        if attention_mask is not None and not bool(attention_mask.all()):
            # real tokens of each row first (stable), padding after: every row starts at text position 0
            order = torch.argsort((attention_mask == 0).to(torch.int8), dim=1, stable=True)
            input_ids = input_ids.gather(1, order)
        lengths = attention_mask.sum(1) if attention_mask is not None else torch.full((B,), T, device=input_ids.device)
        text_emb = self.model.embed_tokens(input_ids)
        if ksa:
            positions, is_sum = expand_positions(T, C, S)
            positions, is_sum = positions.to(input_ids.device), is_sum.to(input_ids.device)
            L = positions.numel()
            hidden = text_emb.new_zeros(B, L, text_emb.shape[-1])
            ti = text_index(T, C, S).to(input_ids.device)
            hidden[:, ti] = text_emb
            n_sum = int(is_sum.sum())
            if n_sum:
                hidden[:, is_sum] = self.summary_embed.weight.repeat(n_sum // S, 1).to(hidden.dtype)
            ctx = self._context("ksa", text_len=T, cache=cache, lengths=lengths)
            ctx.masks = {w: ksa_mask((T,), C, S, w, ctx.impl, ctx.visible, hidden.device) for w in set(ctx.windows)}
            if self._uses_summary_slots():
                ctx.summary_slots = is_sum[None].expand(B, L)
            hidden = self._run_layers(hidden, positions[None].expand(B, L), ctx)
            hidden = hidden[:, ti]
        else:
            positions = torch.arange(T, device=input_ids.device)[None].expand(B, T)
            hidden = self._run_layers(text_emb, positions, self._context("causal"))
        if order is not None:
            hidden = torch.empty_like(hidden).scatter_(1, order[..., None].expand_as(hidden), hidden)
        if cache is not None:
            cache.text_len = lengths.clone()
            cache.columns_seen = T
        return hidden

    def shared_prompt_hidden(self, input_ids: torch.Tensor, units, pad: int = 0, attention_call=None) -> torch.Tensor:
        """Final hidden states [N, D] of a shared-prompt row (ksa/shared.py), no LM head.

        input_ids [N]: unit after unit, each its prompt's tokens then its responses' tokens;
        units: (prompt length, [response lengths]) per unit. Each response's states equal those of
        its (prompt, response) run alone through `forward`. `pad` padding slots (zero inputs, a unit
        of their own, outputs dropped) lengthen the layout to a length the caller chooses: a compiled
        attention kernel then meets a few lengths (buckets) instead of one per row. `attention_call`: see
        `shared_ksa_attention`."""
        C, S = self.config.ksa_chunk, self.config.ksa_summaries
        layout = shared_layout(units, C, S, device=input_ids.device, pad=pad)
        text_emb = self.model.embed_tokens(input_ids)
        hidden = text_emb.new_zeros(1, layout.length, text_emb.shape[-1])
        hidden[0, layout.text_slots] = text_emb
        is_sum = layout.is_summary.bool()
        hidden[0, is_sum] = self.summary_embed.weight[layout.pos[is_sum].long()].to(hidden.dtype)
        ctx = self._context("shared", layout=layout, attention_call=attention_call)
        ctx.masks = {w: shared_mask(layout, w, ctx.impl, ctx.visible) for w in set(ctx.windows)}
        if self._uses_summary_slots():
            ctx.summary_slots = is_sum[None]
        hidden = self._run_layers(hidden, layout.positions[None], ctx)
        return hidden[0, layout.text_slots]

    # --- one decode step through the cache ------------------------------------------------------
    def _decode_step(self, ids: torch.Tensor, cache: KSACache) -> torch.Tensor:
        """ids [B] -> hidden of the new text tokens [B, D]; feeds the chunk's summaries where it completes."""
        pos = cache.text_len
        cache.begin_step(pos)
        needs_sum = completes_chunk(pos, self.config.ksa_chunk)
        emb, positions = step_inputs(self, ids, pos, bool(needs_sum.any()))  # [B, 1 or 1 + S, D]
        ctx = self._context("decode", cache=cache, pos=pos, needs_sum=needs_sum)
        if self._uses_summary_slots():
            slots = torch.zeros(positions.shape, dtype=torch.bool, device=ids.device)
            slots[:, 1:] = True
            ctx.summary_slots = slots
        hidden = self._run_layers(emb, positions, ctx)
        cache.text_len = pos + 1
        cache.columns_seen += 1
        return hidden[:, 0]

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int = 0,
        ksa: bool = True,
        inputs_embeds=None,
        **kwargs,
    ) -> CausalLMOutputWithPast:
        """input_ids [B, T] text tokens -> logits [B, T, V] (loss if labels, shifted like a causal LM).

        ksa=False runs the same weights as a plain causal LM on the text (the distillation teacher).
        """
        if inputs_embeds is not None:
            raise KSAConfigError("KSA models take input_ids (summary slots are inserted between text tokens)")
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if cache is not None and not isinstance(cache, KSACache):
            if cache.get_seq_length() > 0:
                raise KSAConfigError("KSA models need a KSACache; pass ksa.KSACache(model.config)")
            cache = None
        if cache is None and use_cache and not self.training and ksa:
            cache = KSACache(self.config)
        if cache is not None and cache.is_prefilled:
            hidden = torch.stack([self._decode_step(input_ids[:, i], cache) for i in range(input_ids.shape[1])], 1)
        else:
            hidden = self._forward_sequence(input_ids, attention_mask, cache, ksa)
        if logits_to_keep:
            hidden = hidden[:, -logits_to_keep:]
        logits = self.lm_head(hidden)
        loss = None
        if labels is not None:
            loss = F.cross_entropy(
                logits[:, :-1].flatten(0, 1).float(), labels[:, 1:].flatten().to(logits.device), ignore_index=-100
            )
        return CausalLMOutputWithPast(loss=loss, logits=logits, **{CACHE_KEY: cache})

    # --- generate() glue ------------------------------------------------------------------------
    def _prepare_cache_for_generation(self, generation_config, model_kwargs, *args, **kwargs):
        if model_kwargs.get(CACHE_KEY) is not None or generation_config.use_cache is False:
            return super()._prepare_cache_for_generation(generation_config, model_kwargs, *args, **kwargs)
        # generate() passes its cache length (prompt + new tokens); layers whose window covers it are full
        max_len = kwargs.get("max_cache_length", args[2] if len(args) > 2 and isinstance(args[2], int) else None)
        model_kwargs[CACHE_KEY] = KSACache(self.config, max_length=max_len + 1 if max_len else None)

    def prepare_inputs_for_generation(self, input_ids, attention_mask=None, **kwargs):
        cache = kwargs.get("cache", kwargs.get("past_key_values"))
        if isinstance(cache, KSACache) and cache.is_prefilled:
            input_ids = input_ids[:, cache.columns_seen :]
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "use_cache": kwargs.get("use_cache", True)}
        if cache is not None:
            inputs[CACHE_KEY] = cache
        if kwargs.get("logits_to_keep"):
            inputs["logits_to_keep"] = kwargs["logits_to_keep"]
        return inputs


# --- the registered classes -------------------------------------------------------------------
class KSAQwen3Config(Qwen3Config):
    model_type = "ksa_qwen3"


class KSAQwen2Config(Qwen2Config):
    model_type = "ksa_qwen2"


class KSALlamaConfig(LlamaConfig):
    model_type = "ksa_llama"


class KSAQwen3ForCausalLM(KSAMixin, Qwen3ForCausalLM):
    config_class = KSAQwen3Config


class KSAQwen2ForCausalLM(KSAMixin, Qwen2ForCausalLM):
    config_class = KSAQwen2Config


class KSALlamaForCausalLM(KSAMixin, LlamaForCausalLM):
    config_class = KSALlamaConfig


KSA_CLASSES = {
    "qwen3": (KSAQwen3Config, KSAQwen3ForCausalLM),
    "qwen2": (KSAQwen2Config, KSAQwen2ForCausalLM),
    "llama": (KSALlamaConfig, KSALlamaForCausalLM),
}
for _cfg, _model in KSA_CLASSES.values():
    AutoConfig.register(_cfg.model_type, _cfg, exist_ok=True)
    AutoModelForCausalLM.register(_cfg, _model, exist_ok=True)


def ksa_config_from(base_config, ksa: KSAConfig):
    """A KSA model config: the base config's fields plus ksa_* settings (windows resolved per layer)."""
    base_type = base_config.model_type.removeprefix("ksa_")
    if base_type not in KSA_CLASSES:
        raise KSAConfigError(f"KSA supports {', '.join(KSA_CLASSES)} models, not {base_config.model_type!r}")
    cfg_cls = KSA_CLASSES[base_type][0]
    fields = {k: v for k, v in base_config.to_dict().items() if k not in ("model_type", "architectures")}
    fields.update(
        ksa_chunk=ksa.chunk, ksa_summaries=ksa.summaries,
        ksa_windows=resolve_windows(ksa.windows, base_config.num_hidden_layers), ksa_impl=ksa.impl,
        ksa_summary_qkv=ksa.summary_qkv, ksa_summaries_visible=ksa.summaries_visible,
        ksa_mix_coeff=float(ksa.mix_coeff), ksa_summary_norm=ksa.summary_norm,
    )
    config = cfg_cls(**fields)
    config.architectures = [KSA_CLASSES[base_type][1].__name__]
    return config


def convert_model(model, ksa: KSAConfig | None = None):
    """Turn a Qwen3 / Qwen2 / Llama causal LM into its KSA class, sharing its weight tensors.

    The summary embedding starts at the mean token embedding (a "typical token" the model already
    reads sensibly); summary q/k/v projections (summary_qkv) and the summary input layernorm
    (summary_norm) start as copies of the shared ones, so the converted model first computes exactly
    what shared parameters would.
    """
    ksa = ksa or KSAConfig()
    config = ksa_config_from(model.config, ksa)
    cls = KSA_CLASSES[config.model_type.removeprefix("ksa_")][1]
    with torch.device("meta"):
        new = cls(config)
    missing, unexpected = new.load_state_dict(model.state_dict(), strict=False, assign=True)
    if unexpected:
        raise KSAConfigError(f"unexpected weights when converting: {unexpected[:4]}")
    emb = new.model.embed_tokens.weight
    new.summary_embed = nn.Embedding(config.ksa_summaries, config.hidden_size, device=emb.device, dtype=emb.dtype)
    with torch.no_grad():
        new.summary_embed.weight.copy_(emb.detach().float().mean(0).to(emb.dtype).expand_as(new.summary_embed.weight))
        if config.ksa_summary_qkv:
            for layer in new.model.layers:
                for name in ("q_proj", "k_proj", "v_proj"):
                    base, extra = getattr(layer.self_attn, name), getattr(layer.self_attn, f"summary_{name}")
                    extra.to_empty(device=base.weight.device)
                    extra.to(base.weight.dtype)
                    extra.load_state_dict(base.state_dict())
        if config.ksa_summary_norm:
            for layer in new.model.layers:
                base, extra = layer.input_layernorm, layer.summary_input_layernorm
                extra.to_empty(device=base.weight.device)
                extra.to(base.weight.dtype)
                extra.load_state_dict(base.state_dict())
    new.model.rotary_emb = model.model.rotary_emb  # non-persistent buffers: share the module itself
    left = [n for n, p in new.named_parameters() if p.device.type == "meta"]
    left += [n for n, b in new.named_buffers() if b.device.type == "meta"]
    if left:
        raise KSAConfigError(f"could not convert: no value in the base model for {left[:4]}")
    if config.tie_word_embeddings:
        new.lm_head.weight = new.model.embed_tokens.weight
    new.generation_config = copy.deepcopy(model.generation_config)
    new.train(model.training)
    return new
