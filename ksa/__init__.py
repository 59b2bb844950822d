"""Kwai Summary Attention: layout -> mask -> attention -> cache -> modeling -> convert.

`ksa.is_ksa(config)` tells a KSA model config from any other; ksa.decode builds one cached decode
step's inputs (text token + summary slots) for the model and for engines that run the layers themselves.

ksa.shared lays out a prompt with several responses behind one copy of it (GRPO groups).

`ksa.from_pretrained` / `ksa.save_pretrained` read and write the released KSA checkpoint format
(ksa/release.py). `import ksa` registers the KSA model types (ksa_qwen3, ksa_qwen2, ksa_llama) with transformers'
Auto classes, so `AutoModelForCausalLM.from_pretrained(dir)` loads a saved KSA model.
Needs only torch and transformers (triton optional).
"""

from ksa import convert  # ksa.convert.self_distill is reachable after `import ksa`
from ksa.cache import KSACache, KSACacheError
from ksa.config import (
    KSAConfig,
    KSAConfigError,
    hybrid_windows,
    is_ksa,
    parse_window_pattern,
    resolve_windows,
)
from ksa.decode import completes_chunk, mix_summary, step_inputs, summary_positions
from ksa.layout import drop_summaries, expand_ids, expand_positions, expanded_length, text_index
from ksa.mask import dense_mask, ksa_valid, mask_mod
from ksa.modeling import (
    KSALlamaForCausalLM,
    KSAQwen2ForCausalLM,
    KSAQwen3ForCausalLM,
    convert_model,
    ksa_config_from,
)
from ksa.release import ReleaseFormatError, from_pretrained, is_release_config, save_pretrained
from ksa.shared import SharedLayout, shared_layout

__all__ = [
    "KSACache",
    "KSACacheError",
    "KSAConfig",
    "KSAConfigError",
    "KSALlamaForCausalLM",
    "KSAQwen2ForCausalLM",
    "KSAQwen3ForCausalLM",
    "ReleaseFormatError",
    "SharedLayout",
    "completes_chunk",
    "convert",
    "convert_model",
    "dense_mask",
    "drop_summaries",
    "expand_ids",
    "expand_positions",
    "expanded_length",
    "from_pretrained",
    "hybrid_windows",
    "is_ksa",
    "is_release_config",
    "ksa_config_from",
    "ksa_valid",
    "mask_mod",
    "mix_summary",
    "parse_window_pattern",
    "resolve_windows",
    "save_pretrained",
    "shared_layout",
    "step_inputs",
    "summary_positions",
    "text_index",
]
