"""Who judges the pairs: the contract, the registry of kinds, and the built-in model judges.

People (``bpo.human``) and a task's own exact judge (``bpo.tasks``) register here like any kind.
"""

from bpo.annotators.base import (
    Annotator,
    AnnotatorError,
    Deferred,
    Judgement,
    PairsOnly,
    Sampled,
    ScoreAnnotator,
    build_annotator,
    check_annotator,
    check_finite,
    judge_accuracy,
    judge_notes,
    register_annotator,
)
from bpo.annotators.llm_judge import LLMJudgeAnnotator, http_judge
from bpo.annotators.reward_model import RewardModelAnnotator, build_gold
from bpo.annotators.scorers import PairwiseAnnotator, load_callable

__all__ = [
    "Annotator",
    "AnnotatorError",
    "Deferred",
    "Sampled",
    "Judgement",
    "LLMJudgeAnnotator",
    "PairsOnly",
    "PairwiseAnnotator",
    "RewardModelAnnotator",
    "ScoreAnnotator",
    "build_annotator",
    "build_gold",
    "check_annotator",
    "check_finite",
    "http_judge",
    "judge_accuracy",
    "judge_notes",
    "load_callable",
    "register_annotator",
]
