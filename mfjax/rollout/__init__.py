"""Rollouts (`lax.scan` over steps) and the baselines' population context."""

from mfjax.rollout.context import KINDS, ContextSpec, quote_context, repost_counts, step_contexts
from mfjax.rollout.simulate import METHODS, RolloutOutput, RolloutSpec, RolloutState, method_spec, simulate

__all__ = ["KINDS", "ContextSpec", "quote_context", "repost_counts", "step_contexts", "METHODS", "RolloutOutput",
           "RolloutSpec", "RolloutState", "method_spec", "simulate"]
