"""Serving engine stages with ChatRex itself and with the UPN.

The adapters talk to a plain callable, ``ask(image, question, boxes=None) -> answer``, so they do not
import the pipeline (tests pass a fake). ``answer`` may be

* a ``PipelineResult``-like object (``.answer`` = parsed answer with ``.text`` and ``.groundings``
  of ``(phrase, span, indices)``; ``.boxes`` = the boxes the indices refer to; ``.scores``),
* a parsed answer (``.text``, ``.groundings``), or
* the raw generated string (parsed with :func:`chatrex.grounding.parser.parse_grounded`).

:func:`pipeline_asker` turns a :class:`chatrex.interfaces.pipeline.ChatRexPipeline` into such a
callable; ``chatrex.interfaces.engine_steps.build_chatrex_steps`` is a ready factory (it loads the pipeline)
for ``--steps`` / :class:`StepsSpec`.

The UPN is class-agnostic, so it serves the grounding stage as the *proposal* source:
:class:`UPNProposer` wraps a ``UPNWrapper``-like object (``.inference(image, prompt_type)`` and
``.filter(result, min_score, nms_value)``); :class:`ChatRexGrounder` then lets ChatRex pick, among the
proposals, the boxes of each phrase (retrieval by index, as in the paper).
"""

from __future__ import annotations

from typing import Any, Callable, Optional, Sequence

from PIL import Image

from .process import first_sentence
from .steps import Phrase

Ask = Callable[..., Any]

#: Phrase-conditioned region caption request; ``<obj0>`` is the region's box (the only box given).
DEFAULT_REGION_QUESTION = "The region <obj0> shows {phrase}. Describe <obj0> in one sentence."


def _norm(text: str) -> str:
    text = " ".join(str(text).lower().split()).strip(" .,;:!?")
    for article in ("a ", "an ", "the "):
        if text.startswith(article):
            text = text[len(article):]
    return text


def answer_parts(result: Any) -> tuple[str, list[tuple[str, list[int]]], Optional[list], Optional[list]]:
    """``(text, [(phrase, indices)], boxes or None, scores or None)`` from any answer form (see module doc)."""
    boxes = scores = None
    answer = result
    if hasattr(result, "answer") and hasattr(result, "boxes"):
        answer = result.answer
        boxes = [list(map(float, b)) for b in (result.boxes or [])]
        scores = None if getattr(result, "scores", None) is None else [float(s) for s in result.scores]
    if isinstance(answer, str):
        from chatrex.grounding.parser import parse_grounded

        answer = parse_grounded(answer, num_boxes=len(boxes) if boxes is not None else None)
    if not hasattr(answer, "text") or not hasattr(answer, "groundings"):
        raise TypeError(
            f"ask() returned {type(result).__name__}; expected a string, a parsed answer (.text, .groundings) "
            "or a pipeline result (.answer, .boxes, .scores)"
        )
    groundings = [(str(g.phrase), [int(i) for i in g.indices]) for g in answer.groundings]
    return str(answer.text), groundings, boxes, scores


def pipeline_asker(pipeline: Any, **call_kwargs: Any) -> Ask:
    """``ask(image, question, boxes=None)`` for a ChatRexPipeline-like object (one image per call).

    ``call_kwargs`` go to every pipeline call (``granularity``, ``min_score``, ``max_new_tokens``...).
    """

    def ask(image: Image.Image, question: str, boxes: Optional[Sequence[Sequence[float]]] = None) -> Any:
        results = pipeline(image, question, boxes=None if boxes is None else [list(b) for b in boxes], **call_kwargs)
        return results[0]

    return ask


class UPNProposer:
    """``propose(image) -> (boxes, scores)``: filtered UPN proposals in image pixels.

    Args:
        upn: an object with ``inference(image, prompt_type)`` and ``filter(result, min_score=, nms_value=)``
            (``chatrex.upn.UPNWrapper``).
        prompt_type: ``"coarse_grained_prompt"`` (whole objects, the default for grounding phrases) or
            ``"fine_grained_prompt"``.
        min_score, nms_value: the wrapper's filtering (official defaults 0.3 / 0.8).
        max_boxes: keep the best this many (ChatRex takes at most 100).
    """

    def __init__(self, upn: Any, prompt_type: str = "coarse_grained_prompt", min_score: float = 0.3,
                 nms_value: float = 0.8, max_boxes: int = 100) -> None:
        for method in ("inference", "filter"):
            if not callable(getattr(upn, method, None)):
                raise TypeError(f"UPNProposer needs an object with .{method}(...), got {type(upn).__name__}")
        self.upn = upn
        self.prompt_type = prompt_type
        self.min_score = float(min_score)
        self.nms_value = float(nms_value)
        self.max_boxes = int(max_boxes)

    def propose(self, image: Image.Image) -> tuple[list[list[float]], list[float]]:
        raw = self.upn.inference(image, self.prompt_type)
        kept = self.upn.filter(raw, min_score=self.min_score, nms_value=self.nms_value)
        boxes_all, scores_all = kept.get("original_xyxy_boxes") or [[]], kept.get("scores") or [[]]
        boxes = [list(map(float, b)) for b in boxes_all[0]]
        scores = [float(s) for s in scores_all[0]]
        order = sorted(range(len(boxes)), key=lambda i: -scores[i])[: self.max_boxes]
        return [boxes[i] for i in order], [scores[i] for i in order]


class ChatRexCaptioner:
    """Stage 2 with ChatRex: the brief grounded caption, tags removed, first sentence."""

    def __init__(self, ask: Ask, question: Optional[str] = None) -> None:
        self.ask = ask
        self.question = question

    def _question(self) -> str:
        if self.question is None:
            from chatrex.grounding.prompts import build_prompt

            self.question = build_prompt("caption_brief")
        return self.question

    def caption(self, image: Image.Image) -> str:
        text, _, _, _ = answer_parts(self.ask(image, self._question()))
        return first_sentence(text)


class ChatRexGrounder:
    """Stage 4 with ChatRex: one detection request for all phrases (``"a; b; c"``), answered with one
    ``<ground>phrase</ground><objects>...</objects>`` block per phrase; indices become boxes.

    Args:
        ask: the ChatRex callable.
        proposer: an object with ``propose(image) -> (boxes, scores)`` (e.g. :class:`UPNProposer`); its
            boxes are given to ChatRex and index into them. Without one, ``ask`` must return the boxes it
            used (a pipeline result runs the UPN itself).
        question: template with ``{categories}``; default: our detection prompt family, template 0.
    """

    def __init__(self, ask: Ask, proposer: Any = None, question: Optional[str] = None) -> None:
        self.ask = ask
        self.proposer = proposer
        self.question = question

    def _question(self, names: list[str]) -> str:
        if self.question is not None:
            return self.question.format(categories="; ".join(names))
        from chatrex.grounding.prompts import build_prompt

        return build_prompt("detection", categories=names)

    def ground(self, image: Image.Image, phrases: Sequence[Phrase]) -> list[tuple[Phrase, list[float], float]]:
        if not phrases:
            return []
        names = [" ".join(p.text.split()) for p in phrases]
        if self.proposer is not None:
            boxes, scores = self.proposer.propose(image)
            if not boxes:
                return []
            result = self.ask(image, self._question(names), boxes)
            _, groundings, _, _ = answer_parts(result)
        else:
            result = self.ask(image, self._question(names))
            _, groundings, boxes, scores = answer_parts(result)
            if boxes is None:
                raise TypeError("ChatRexGrounder without a proposer needs ask() to return the boxes it used (.boxes)")
        by_name = {_norm(n): p for n, p in zip(names, phrases)}
        out: list[tuple[Phrase, list[float], float]] = []
        for k, (phrase_text, indices) in enumerate(groundings):
            phrase = by_name.get(_norm(phrase_text))
            if phrase is None and len(groundings) == len(phrases):
                phrase = phrases[k]  # the model paraphrased the name; blocks come in request order
            if phrase is None:
                continue
            for i in indices:
                if 0 <= i < len(boxes):
                    out.append((phrase, list(boxes[i]), float(scores[i]) if scores else 1.0))
        return out


class ChatRexRegionCaptioner:
    """Stage 5 with ChatRex: the region's box is given as ``<obj0>`` and the phrase is named in the
    question (phrase-conditioned captioning); the answer's plain text, first sentence."""

    def __init__(self, ask: Ask, question: str = DEFAULT_REGION_QUESTION) -> None:
        if "{phrase}" not in question:
            raise ValueError("the region question must contain '{phrase}'")
        self.ask = ask
        self.question = question

    def caption(self, image: Image.Image, box: Sequence[float], phrase: Phrase) -> str:
        result = self.ask(image, self.question.format(phrase=phrase.text), [list(map(float, box))])
        text, _, _, _ = answer_parts(result)
        return first_sentence(text)

