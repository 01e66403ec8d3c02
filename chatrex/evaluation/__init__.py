"""Evaluation: the paper's protocols (detection P/R + mAP, referring Acc@0.5, region understanding,
grounded captions, counting, POPE, proposal recall) as pure metric functions plus runners.

Metric modules (numpy, no torch): ``boxes``, ``text``, ``detection``, ``coco``, ``proposals``,
``referring``, ``region``, ``grounded_caption``, ``counting``, ``pope``. Runners (``runners/``)
query a predictor in batches; :func:`chatrex.evaluation.evaluate.evaluate` ties data, runner and
report together; ``report`` writes JSON + markdown and merges summaries.
"""
