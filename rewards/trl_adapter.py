"""The rewards as a TRL `GRPOTrainer` reward function.

TRL calls `reward_func(prompts=..., completions=..., completion_ids=..., **columns)`, where the
columns are the dataset's other fields, one value per completion: here `data_source`,
`reward_model` and `extra_info`. A completion is a string, or (conversational datasets) a list
of messages; when TRL's response parser has moved the thinking into a separate field, it is put
back in front of `</think>` so the think gate sees the text the model wrote.
Rows that cannot be routed score None (TRL then ignores this function for them) and are logged.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from rewards.errors import RewardInputError
from rewards.parsing import THINK_CLOSE
from rewards.routing import Variant
from rewards.rows import score_row

logger = logging.getLogger(__name__)
_REASONING_KEYS = ("reasoning_content", "reasoning", "thinking")


def _message_text(message: Any) -> str:
    if isinstance(message, str):
        return message
    if not isinstance(message, dict):
        return ""
    content = message.get("content") or ""
    if isinstance(content, list):  # content parts
        content = "".join(part.get("text", "") for part in content if isinstance(part, dict))
    reasoning = next((message[k] for k in _REASONING_KEYS if isinstance(message.get(k), str)), None)
    if reasoning and THINK_CLOSE not in content:
        return f"{reasoning}{THINK_CLOSE}{content}"
    return content


def completion_text(completion: Any) -> str:
    """The text of a TRL completion: a string, or the concatenated messages."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, dict):
        return _message_text(completion)
    return "".join(_message_text(m) for m in completion or [])


def make_trl_reward_func(**variant: Any) -> Callable[..., list[float | None]]:
    """A TRL reward function using the given opt-in variants (see `rewards.Variant`)."""
    Variant.from_kwargs(variant)  # fail now on a bad option, not once per row

    def golongrl_reward(prompts: list[Any], completions: list[Any], **columns: Any) -> list[float | None]:
        n = len(completions)
        data_sources = columns.get("data_source")
        reward_models = columns.get("reward_model")
        extra_infos = columns.get("extra_info") or [None] * n
        if data_sources is None or reward_models is None:
            raise RewardInputError("the dataset needs 'data_source' and 'reward_model' columns for the GoLongRL rewards")
        rewards: list[float | None] = []
        for i, completion in enumerate(completions):
            row = {"data_source": data_sources[i], "reward_model": reward_models[i], "extra_info": extra_infos[i]}
            try:
                rewards.append(score_row(row, completion_text(completion), **variant))
            except RewardInputError as err:
                logger.warning("GoLongRL reward: row not scored: %s", err)
                rewards.append(None)
        return rewards

    return golongrl_reward


trl_reward_func = make_trl_reward_func()
