"""A tiny tokenizer and causal LM built locally (no hub, no network), shared by the tests.

The tokenizer is a byte-level BPE trained in a second on generated text, with Qwen-style chat
special tokens and a chat template; the models are random 2-layer Qwen3 / Qwen2 / Llama configs with
head_dim 32 (the smallest that vLLM's CPU backend loads).
"""

from __future__ import annotations

import random
from pathlib import Path

CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<think>", "</think>"]


def training_corpus(n: int = 2000, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    words = (
        "the a of to and in is it that for on with as was by at be this from record key value "
        "answer question document table row column city name code year number find list order "
        "first last secret needle haystack passage summary think correct option"
    ).split()
    lines = []
    for _ in range(n):
        k = rng.randint(4, 16)
        parts = [rng.choice(words) for _ in range(k)]
        parts.insert(rng.randint(0, k), str(rng.randint(0, 99999)))
        lines.append(" ".join(parts) + rng.choice([".", "?", "!", ":", ",", "\n"]))
    lines.append("[Answer] \\boxed{42} <answer>{\"data\": [[1, 2]]}</answer> (A) (B) (C) (D)")
    return lines


def build_tokenizer(vocab_size: int = 512):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(training_corpus(), trainer=trainer)
    hf = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        bos_token=None,
        unk_token=None,
    )
    hf.chat_template = CHAT_TEMPLATE
    return hf


def build_model(tokenizer, arch: str = "qwen3", hidden: int = 64, layers: int = 2, seed: int = 0):
    import torch
    from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config, Qwen3Config

    cls = {"qwen3": Qwen3Config, "qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = cls(
        vocab_size=len(tokenizer),
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=max(2, hidden // 32),
        num_key_value_heads=1,
        head_dim=32,
        max_position_embeddings=4096,
        tie_word_embeddings=True,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    return model


def save_tiny(path: Path, arch: str = "qwen3", **kw) -> Path:
    """Write a tiny model + tokenizer folder that `from_pretrained(path)` loads offline."""
    tok = build_tokenizer()
    model = build_model(tok, arch=arch, **kw)
    path.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(path)
    tok.save_pretrained(path)
    return path
