"""Grading one answer to one constructed item: LongBench's per-sample score, guarded against memory.

An answer that names an entity the item's prompt never contains (one substituted away from the public
LongBench record) was recalled, not read: it scores 0.0 whatever its overlap with the reference.
"""

from evaluation.metrics import score_prediction
from evaluation.perturb import mentioned_entities
from evaluation.tasks import EvalItem


def grade(item: EvalItem, prediction: str) -> float:
    if mentioned_entities(prediction, item.replaced_entities):
        return 0.0
    return score_prediction(item.task, prediction, item.answers, item.all_classes)
