"""Picklable descriptions of the engine's steps, built into live objects inside each worker.

Heavy models must load once per worker process (or Ray actor), never in the parent and never once per
image. So the engine ships a :class:`StepsSpec` - the import path of a factory plus JSON-able keyword
arguments - to every worker, which calls :meth:`StepsSpec.build` once.

Two shapes:

* one factory that returns a whole :class:`~chatrex.data.engine.steps.EngineSteps`::

      StepsSpec("my_project.engine:build_steps", {"device": "cuda"})

* one factory per stage (:func:`compose_steps`); stages left out get the defaults (spaCy extractor,
  rule-based caption filter)::

      StepsSpec.compose(captioner={"factory": "my_project.hf:HFCaptioner", "kwargs": {"model": "..."}},
                        grounder={...}, region_captioner={...})

On the command line ``--steps`` takes ``module:callable`` or a JSON file holding either shape
(``{"factory": ..., "kwargs": ...}`` or ``{"captioner": {...}, "grounder": {...}, ...}``).
"""

from __future__ import annotations

import importlib
import json
import os
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Optional

from .steps import EngineSteps

STAGES = ("captioner", "extractor", "grounder", "region_captioner", "caption_filter")


class StepsSpecError(ValueError):
    """A steps spec is malformed, names something that cannot be imported, or builds the wrong thing."""


def resolve(target: str) -> Callable[..., Any]:
    """Import ``"package.module:attr"`` (``attr`` may be dotted) and return the attribute."""
    if not isinstance(target, str) or ":" not in target:
        raise StepsSpecError(f"a factory must be written 'package.module:callable', got {target!r}")
    module_name, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise StepsSpecError(f"cannot import module '{module_name}' of factory '{target}': {exc}") from exc
    for part in attr.split("."):
        if not hasattr(obj, part):
            raise StepsSpecError(f"module '{module_name}' has no attribute '{attr}' (factory '{target}')")
        obj = getattr(obj, part)
    if not callable(obj):
        raise StepsSpecError(f"factory '{target}' is not callable")
    return obj


def _check_json(kwargs: Any, where: str) -> dict[str, Any]:
    if not isinstance(kwargs, Mapping):
        raise StepsSpecError(f"{where}: 'kwargs' must be an object, got {type(kwargs).__name__}")
    try:
        json.dumps(kwargs)
    except (TypeError, ValueError) as exc:
        raise StepsSpecError(f"{where}: kwargs must be JSON-serialisable so workers can receive them ({exc})") from exc
    return dict(kwargs)


@dataclass(frozen=True)
class StepsSpec:
    """``factory`` (``"module:callable"``) called with ``kwargs`` returns :class:`EngineSteps`."""

    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not isinstance(self.factory, str) or ":" not in self.factory:
            raise StepsSpecError(f"a factory must be written 'package.module:callable', got {self.factory!r}")
        _check_json(self.kwargs, f"steps spec {self.factory!r}")

    @classmethod
    def compose(cls, **stages: Mapping[str, Any]) -> "StepsSpec":
        """A spec with one ``{"factory": ..., "kwargs": ...}`` per stage (see :func:`compose_steps`)."""
        return cls("chatrex.data.engine.spec:compose_steps", {k: dict(v) for k, v in stages.items()})

    def check(self) -> None:
        """Import the factory (without calling it) so a typo fails before any worker starts."""
        resolve(self.factory)
        if self.factory == "chatrex.data.engine.spec:compose_steps":
            _check_stage_specs(self.kwargs)
            _check_required_stages(self.kwargs)

    def build(self) -> EngineSteps:
        """Call the factory; raises :class:`StepsSpecError` unless it returns :class:`EngineSteps`."""
        steps = resolve(self.factory)(**self.kwargs)
        if not isinstance(steps, EngineSteps):
            raise StepsSpecError(
                f"factory '{self.factory}' returned {type(steps).__name__}; it must return "
                "chatrex.data.engine.EngineSteps"
            )
        if not steps.description:
            steps.description = self.to_dict()
        return steps

    def to_dict(self) -> dict[str, Any]:
        return {"factory": self.factory, "kwargs": dict(self.kwargs)}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> "StepsSpec":
        if not isinstance(data, Mapping):
            raise StepsSpecError(f"a steps spec must be an object, got {type(data).__name__}")
        if "factory" in data:
            unknown = set(data) - {"factory", "kwargs"}
            if unknown:
                raise StepsSpecError(f"unknown key(s) {sorted(unknown)} in steps spec; expected 'factory' and 'kwargs'")
            return cls(str(data["factory"]), _check_json(data.get("kwargs") or {}, "steps spec"))
        unknown = set(data) - set(STAGES)
        if unknown or not data:
            raise StepsSpecError(
                f"a steps spec needs 'factory' (+ 'kwargs') or per-stage entries among {list(STAGES)}; "
                f"got keys {sorted(data)}"
            )
        _check_stage_specs(data)
        return cls.compose(**data)


def _check_stage_specs(stages: Mapping[str, Any]) -> None:
    for name, sub in stages.items():
        if name not in STAGES:
            raise StepsSpecError(f"unknown stage '{name}'; the stages are {list(STAGES)}")
        if not isinstance(sub, Mapping) or "factory" not in sub:
            raise StepsSpecError(f"stage '{name}' needs {{\"factory\": \"module:callable\", \"kwargs\": {{...}}}}")
        _check_json(sub.get("kwargs") or {}, f"stage '{name}'")
        resolve(str(sub["factory"]))


def _check_required_stages(stages: Mapping[str, Any]) -> None:
    missing = [s for s in ("captioner", "grounder", "region_captioner") if s not in stages]
    if missing:
        raise StepsSpecError(f"compose_steps needs a factory for the stage(s) {missing}")


def parse_steps_spec(text: str) -> StepsSpec:
    """Read ``--steps``: a JSON file path, an inline JSON object, or ``module:callable``."""
    text = text.strip()
    if text.startswith("{"):
        try:
            return StepsSpec.from_dict(json.loads(text))
        except json.JSONDecodeError as exc:
            raise StepsSpecError(f"the inline steps spec is not valid JSON ({exc})") from exc
    if text.endswith(".json") or os.path.isfile(text):
        if not os.path.isfile(text):
            raise StepsSpecError(f"the steps spec file '{text}' does not exist")
        with open(text, "r", encoding="utf-8") as handle:
            try:
                data = json.load(handle)
            except json.JSONDecodeError as exc:
                raise StepsSpecError(f"the steps spec file '{text}' is not valid JSON ({exc})") from exc
        return StepsSpec.from_dict(data)
    return StepsSpec(text)


def _build_stage(name: str, sub: Optional[Mapping[str, Any]], default: Callable[[], Any]) -> Any:
    if sub is None:
        return default()
    return resolve(str(sub["factory"]))(**dict(sub.get("kwargs") or {}))


def compose_steps(**stages: Mapping[str, Any]) -> EngineSteps:
    """Build :class:`EngineSteps` from one ``{"factory", "kwargs"}`` per stage.

    ``extractor`` defaults to :class:`~chatrex.data.engine.phrases.SpacyPhraseExtractor` and
    ``caption_filter`` to :class:`~chatrex.data.engine.rewrite.RuleBasedCaptionFilter`; the captioner,
    grounder and region captioner must be given.
    """
    from .phrases import SpacyPhraseExtractor
    from .rewrite import RuleBasedCaptionFilter

    _check_stage_specs(stages)
    _check_required_stages(stages)
    return EngineSteps(
        captioner=_build_stage("captioner", stages.get("captioner"), lambda: None),
        extractor=_build_stage("extractor", stages.get("extractor"), SpacyPhraseExtractor),
        grounder=_build_stage("grounder", stages.get("grounder"), lambda: None),
        region_captioner=_build_stage("region_captioner", stages.get("region_captioner"), lambda: None),
        caption_filter=_build_stage("caption_filter", stages.get("caption_filter"), RuleBasedCaptionFilter),
        description={"factory": "chatrex.data.engine.spec:compose_steps", "kwargs": {k: dict(v) for k, v in stages.items()}},
    )
