"""The rollout engine interface: prompts in, G sampled completions per prompt out.

An engine owns a copy of the policy for generation. The trainer only ever calls `generate`,
`load_weights` and (when the engine shares accelerators with the learner) `sleep` / `wake`, so the
engines (static, loop, vllm: see golong/rollout/__init__.py, which builds them) are interchangeable.

Log-probabilities returned with each completion are those of the *sampler's* distribution, i.e.
`log_softmax(logits / temperature)` after top-k / top-p filtering, evaluated at the sampled token.
The learner compares them with its own log-probs to report sampler-vs-learner drift.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Literal

FinishReason = Literal["stop", "length"]


@dataclass(frozen=True)
class SamplingParams:
    """How to sample. `temperature == 0` is greedy decoding (log-probs then use temperature 1)."""

    max_new_tokens: int = 256
    temperature: float = 1.0
    top_p: float = 1.0
    top_k: int = 0
    seed: int = 0


@dataclass
class Completion:
    """One sampled response to one prompt."""

    prompt_index: int
    prompt_ids: list[int]
    response_ids: list[int]
    text: str
    logprobs: list[float]
    finish_reason: FinishReason
    meta: dict[str, Any] = field(default_factory=dict)


class RolloutEngine(ABC):
    """Generates completions with the current policy weights."""

    @abstractmethod
    def generate(
        self, prompts: list[list[int]], n: int, params: SamplingParams
    ) -> list[list[Completion]]:
        """Sample `n` completions for each prompt (token ids, chat template already applied).

        Returns one list of `n` completions per prompt, in prompt order. The same prompts, params
        and weights give the same completions (the seed fixes the sampler's random stream).
        """

    @abstractmethod
    def load_weights(self, state_dict: dict[str, Any]) -> None:
        """Replace the policy weights (full state dict, names as in the learner's model)."""

    def sleep(self) -> None:  # noqa: B027 - optional hook, default no-op
        """Release accelerator memory while the learner trains (colocated mode)."""

    def wake(self) -> None:  # noqa: B027 - optional hook, default no-op
        """Take accelerator memory back before generating."""


def copy_weights_into(model: Any, state_dict: dict[str, Any]) -> None:
    """Copy `state_dict` into `model`'s existing tensors in place (captured CUDA graphs and shared
    references stay valid); a name the model does not have is an error."""
    import torch

    own = model.state_dict()
    unknown = [k for k in state_dict if k not in own]
    if unknown:
        raise KeyError(f"load_weights: {len(unknown)} names not in the engine's model, e.g. {unknown[0]!r}")
    with torch.no_grad():
        for name, value in state_dict.items():
            own[name].copy_(value.to(own[name].device, own[name].dtype))


def encode_chat(tokenizer: Any, messages: list[dict[str, str]]) -> list[int]:
    """`apply_chat_template(messages, add_generation_prompt=True)` as a plain list of ids."""
    ids = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if isinstance(ids, dict) or hasattr(ids, "keys"):  # transformers 5 may return a BatchEncoding
        ids = ids["input_ids"]
    if ids and isinstance(ids[0], list):
        ids = ids[0]
    return list(ids)
