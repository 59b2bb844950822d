"""Rows in the GoLongRL schema: pull out the fields the rewards need, and score a row."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rewards.errors import MalformedGroundTruthError, RewardInputError
from rewards.routing import compute_score, reward_type


def row_fields(row: Mapping[str, Any]) -> tuple[str, Any, Mapping[str, Any] | None]:
    """(data_source, reward_model.ground_truth, extra_info) of a dataset row."""
    if not isinstance(row, Mapping):
        raise RewardInputError(f"a row must be a JSON object, got {type(row).__name__}")
    if "data_source" not in row:
        raise RewardInputError("row has no 'data_source' field")
    reward_model = row.get("reward_model")
    if not isinstance(reward_model, Mapping) or "ground_truth" not in reward_model:
        raise MalformedGroundTruthError("row has no 'reward_model.ground_truth' field")
    extra_info = row.get("extra_info")
    if extra_info is not None and not isinstance(extra_info, Mapping):
        raise RewardInputError(f"'extra_info' must be an object, got {type(extra_info).__name__}")
    return row["data_source"], reward_model["ground_truth"], extra_info


def row_reward_type(row: Mapping[str, Any]) -> str:
    """The reward type (one of REWARD_TYPES) that scores a row, from its data_source / extra_info.reward_mode.

    The one row -> reward type mapping: the trainer keys its mixture, advantages (TMN pools by it) and
    metrics by it, tasks resolve rows through it, evaluation records it.
    """
    data_source, _, extra_info = row_fields(row)
    return reward_type(data_source, extra_info)


def score_row(row: Mapping[str, Any], response: str, **variant: Any) -> float:
    """`compute_score` for a row in the GoLongRL schema."""
    data_source, ground_truth, extra_info = row_fields(row)
    return compute_score(data_source, response, ground_truth, extra_info, **variant)
