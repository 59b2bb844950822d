"""The nine GoLongRL rewards, scored exactly as the released GoLongRL scorer scores them.

    compute_score(data_source, response, ground_truth, extra_info)   # the scorer's entry point
    score_row(row, response)                                        # a row in the GoLongRL schema
    reward_type(data_source, extra_info)                            # one of REWARD_TYPES
    trl_reward_func                                                 # for TRL's GRPOTrainer
    oracle_response(row)                                            # a top-scoring response

Quirks of the released scorer are kept by default; opt-in fixes are keyword options
(see `Variant`). Nothing here imports torch.
"""

from rewards.errors import MalformedGroundTruthError, RewardInputError, UnknownRouteError
from rewards.oracle import oracle_response
from rewards.routing import (
    DATA_SOURCES,
    LONGBENCH_PRO_METRICS,
    LONGBENCH_PRO_TASKS,
    REWARD_TYPES,
    Variant,
    compute_score,
    reward_type,
)
from rewards.rows import row_fields, row_reward_type, score_row
from rewards.trl_adapter import completion_text, make_trl_reward_func, trl_reward_func

__all__ = [
    "DATA_SOURCES",
    "LONGBENCH_PRO_METRICS",
    "LONGBENCH_PRO_TASKS",
    "REWARD_TYPES",
    "MalformedGroundTruthError",
    "RewardInputError",
    "UnknownRouteError",
    "Variant",
    "completion_text",
    "compute_score",
    "make_trl_reward_func",
    "oracle_response",
    "reward_type",
    "row_fields",
    "row_reward_type",
    "score_row",
    "trl_reward_func",
]
