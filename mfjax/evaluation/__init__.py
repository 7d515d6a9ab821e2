"""Evaluation: labelers (action text -> categories) and population metrics."""

from mfjax.evaluation import metrics
from mfjax.evaluation.labelers import DIMENSIONS, ORDINAL, Labeler, RuleLabeler, category_ids

__all__ = ["metrics", "DIMENSIONS", "ORDINAL", "Labeler", "RuleLabeler", "category_ids"]
