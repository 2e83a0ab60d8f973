"""Cost model: profile loading/validation and per-plan memory, step time and round time.

Pure Python over plain data (docs/design.md: the cost model never imports torch).
"""

from fedquad.costmodel.model import (CostModel, RoundTimeBreakdown, cost_model, cost_model_at, memory_bytes,
                                     predict_step_peak_bytes, profile_for_length, round_time_breakdown, round_time_s, saved_bytes,
                                     step_time_s)
from fedquad.costmodel.profile import (ADAMW_STATE_FACTOR, PROFILE_BITS, SCHEMA_VERSION, BlockProfile, HeadProfile,
                                       LengthPoint, Profile, kept_ratio_of, list_profiles, load_profile, profile_document,
                                       profile_from_dict, profile_to_dict)

__all__ = ["ADAMW_STATE_FACTOR", "PROFILE_BITS", "SCHEMA_VERSION", "BlockProfile", "CostModel", "HeadProfile", "LengthPoint",
           "Profile", "RoundTimeBreakdown", "cost_model", "cost_model_at", "kept_ratio_of", "list_profiles", "load_profile",
           "memory_bytes", "predict_step_peak_bytes", "profile_document", "profile_for_length", "profile_from_dict", "profile_to_dict",
           "round_time_breakdown",
           "round_time_s", "saved_bytes", "step_time_s"]
