"""Errors a caller can cause: a row the rewards cannot route or whose ground truth is malformed.

Scoring a response never raises (a bad response scores 0); only the row itself can be wrong.
"""

from __future__ import annotations


class RewardInputError(ValueError):
    """A dataset row (not a response) that the rewards cannot score."""


class UnknownRouteError(RewardInputError):
    """`data_source` or `extra_info["reward_mode"]` names no known reward."""


class MalformedGroundTruthError(RewardInputError):
    """`reward_model.ground_truth` lacks a field the reward needs, or has the wrong type."""
