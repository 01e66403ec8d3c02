"""Evaluation runners: turn data into prompts, query a predictor in batches, score the answers.

Each ``run_*`` function takes a predictor with the pipeline's call signature
(``predictor(images, questions, boxes=None, granularity=, min_score=, max_boxes=)`` → results with
``.answer``, ``.raw_text``, ``.boxes``, ``.scores``) or, for proposals, an object with the
``UPNWrapper.inference`` signature, and returns ``{"task", "metrics", "config", "predictions"}``.
"""

from chatrex.evaluation.runners.common import Answer, Query, run_queries
from chatrex.evaluation.runners.counting import run_counting
from chatrex.evaluation.runners.detection import run_detection
from chatrex.evaluation.runners.grounded_caption import run_grounded_caption
from chatrex.evaluation.runners.object_tokens import run_object_tokens
from chatrex.evaluation.runners.retrieval import run_retrieval
from chatrex.evaluation.runners.pope import run_pope
from chatrex.evaluation.runners.proposals import run_proposals
from chatrex.evaluation.runners.referring import run_referring
from chatrex.evaluation.runners.region import run_region

__all__ = ["Answer", "Query", "run_queries", "run_counting", "run_detection", "run_grounded_caption", "run_object_tokens", "run_retrieval",
           "run_pope", "run_proposals", "run_referring", "run_region"]
