"""Evaluation: labelers (action text -> categories) and population metrics."""

from mfjax.evaluation import metrics
from mfjax.evaluation.labelers import Labeler, RuleLabeler, category_ids
from mfjax.evaluation.llm_labeler import LabelerError, OpenAICompatLabeler

__all__ = ["metrics", "Labeler", "RuleLabeler", "category_ids", "LabelerError", "OpenAICompatLabeler"]
