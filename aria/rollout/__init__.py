"""Shadow deployment and gradual rollout: proposals judged by the owner, promotion gates, demotions."""

from aria.rollout.service import Notice, Rollout, judge_actions, parse_judge, parse_promote
from aria.rollout.stats import Evidence, wilson_lower_bound

__all__ = ["Evidence", "Notice", "Rollout", "judge_actions", "parse_judge", "parse_promote", "wilson_lower_bound"]
