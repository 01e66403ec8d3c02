"""The Rexverse-style data engine: a folder of real images in, grounded records out.

Stages (ChatRex paper section 6): (1) collect and filter images, (2) caption each image in one
sentence, (3) extract noun phrases (spaCy), (4) ground each phrase to boxes, (5) caption each region
conditioned on its phrase, (6) check each region caption and rewrite it as a 5-10 word referring
expression. Every model stage is pluggable (:mod:`.steps`); runs are resumable (:mod:`.store`) and run
in one process, a multiprocessing pool or on Ray Data (:mod:`.runner`). See ``docs/data_engine.md``.
"""

from .collect import ImageFilterConfig, ImageTask, collect_tasks, file_sha256, list_images, reject_reason
from .phrases import ABSTRACT_NOUNS, CONTEXT_NOUNS, SpacyPhraseExtractor
from .process import EngineConfig, ImageProcessingError, annotate_image, process_image
from .rewrite import RuleBasedCaptionFilter
from .runner import BACKENDS, EngineBackendError, EngineSummary, run_engine
from .spec import StepsSpec, StepsSpecError, compose_steps, parse_steps_spec
from .steps import (
    CaptionFilter,
    Captioner,
    EngineStepError,
    EngineSteps,
    GroundedPhrase,
    Grounder,
    Phrase,
    PhraseExtractor,
    RegionCaptioner,
)
from .store import EngineStore, EngineStoreError, repair_jsonl

__all__ = [
    "ABSTRACT_NOUNS", "BACKENDS", "CONTEXT_NOUNS", "CaptionFilter", "Captioner", "EngineBackendError",
    "EngineConfig", "EngineStepError", "EngineSteps", "EngineStore", "EngineStoreError", "EngineSummary",
    "GroundedPhrase", "Grounder", "ImageFilterConfig", "ImageProcessingError", "ImageTask", "Phrase",
    "PhraseExtractor", "RegionCaptioner", "RuleBasedCaptionFilter", "SpacyPhraseExtractor", "StepsSpec",
    "StepsSpecError", "annotate_image", "collect_tasks", "compose_steps", "file_sha256", "list_images",
    "parse_steps_spec", "process_image", "reject_reason", "repair_jsonl", "run_engine",
]
