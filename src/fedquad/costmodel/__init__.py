"""Cost model: profile loading/validation and per-plan memory, step time and round time.

Pure Python over plain data (DESIGN section 10: the cost model never imports torch).
"""

from fedquad.costmodel.model import (CostModel, RoundTimeBreakdown, cost_model, memory_bytes, round_time_breakdown,
                                     round_time_s, saved_bytes, step_time_s)
from fedquad.costmodel.profile import (SCHEMA_VERSION, BlockProfile, HeadProfile, Profile, list_profiles, load_profile,
                                       profile_from_dict, profile_to_dict)

__all__ = ["SCHEMA_VERSION", "BlockProfile", "CostModel", "HeadProfile", "Profile", "RoundTimeBreakdown",
           "cost_model", "list_profiles", "load_profile", "memory_bytes", "profile_from_dict", "profile_to_dict",
           "round_time_breakdown", "round_time_s", "saved_bytes", "step_time_s"]
