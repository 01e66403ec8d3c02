"""Model cards: what a model directory holds, what it was trained on, what it is for.

A model directory (``chatrex/assets/chatrex-small``, or any ``ChatRexPipeline.save_pretrained`` output)
may carry two files::

    model-dir/
      model_card.json   {"name", "summary", "trained_on", "intended_use", "limitations": [...]}
      README.md         the same for people (free text)

``summary`` is the one line that every interface shows at run time whenever the model is in use
(``chatrex predict``, the server's ``/v1/models`` and ``/health``, the demo page), so that a user whose
photo gets wrong boxes learns why. Without ``model_card.json`` the first paragraph of ``README.md`` (after
an optional YAML front matter and its headings) is the summary; without either there is no card.

Example::

    card = load_model_card("chatrex/assets/chatrex-small")
    card.summary      # "chatrex-small knows only the procedural world ..."
    model_card_line(pipe)   # the same line for a loaded pipeline, or None
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Optional, Union

__all__ = ["ModelCard", "MODEL_CARD_JSON", "MODEL_CARD_README", "load_model_card", "model_card_line"]

MODEL_CARD_JSON = "model_card.json"
MODEL_CARD_README = "README.md"
#: Keys ``model_card.json`` may hold.
CARD_KEYS = ("name", "summary", "trained_on", "intended_use", "limitations", "license")


@dataclass(frozen=True)
class ModelCard:
    """A model directory's card.

    Attributes:
        name: the model's name (default: the directory's name).
        summary: one line shown at run time wherever the model is in use.
        trained_on / intended_use: short free text ("" where the card does not say).
        limitations: known limits, one sentence each.
        license: the weights' license, if the card names one.
        source: the file the card was read from.
    """

    name: str
    summary: str
    trained_on: str = ""
    intended_use: str = ""
    limitations: tuple[str, ...] = field(default_factory=tuple)
    license: str = ""
    source: Optional[str] = None

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "summary": self.summary, "trained_on": self.trained_on,
                "intended_use": self.intended_use, "limitations": list(self.limitations), "license": self.license}


def _readme_summary(text: str) -> str:
    """The first paragraph of a markdown file, skipping YAML front matter, headings, images and HTML."""
    lines = text.splitlines()
    if lines and lines[0].strip() == "---":  # front matter (Hugging Face model cards)
        end = next((k for k in range(1, len(lines)) if lines[k].strip() == "---"), None)
        lines = lines[end + 1:] if end is not None else lines
    paragraph: list[str] = []
    for line in lines:
        stripped = line.strip()
        if not stripped:
            if paragraph:
                break
            continue
        if stripped.startswith(("#", "![", "<", "|", "```")):
            if paragraph:
                break
            continue
        paragraph.append(stripped)
    return " ".join(paragraph)


def load_model_card(path: Union[str, os.PathLike]) -> Optional[ModelCard]:
    """Read the card of the model directory ``path``; ``None`` when it has neither file.

    Raises:
        ValueError: ``model_card.json`` is not valid JSON, not an object, has unknown keys, or lacks a
            non-empty ``summary`` (the message names the file).
    """
    root = Path(path)
    card_json, readme = root / MODEL_CARD_JSON, root / MODEL_CARD_README
    if card_json.is_file():
        try:
            data = json.loads(card_json.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"'{card_json}' is not valid JSON: {exc}") from exc
        if not isinstance(data, dict):
            raise ValueError(f"'{card_json}' must hold a JSON object, got {type(data).__name__}")
        unknown = set(data) - set(CARD_KEYS)
        if unknown:
            raise ValueError(f"'{card_json}' has unknown keys {sorted(unknown)}; expected {list(CARD_KEYS)}")
        summary = data.get("summary")
        if not isinstance(summary, str) or not summary.strip():
            raise ValueError(f"'{card_json}' needs a non-empty 'summary' string (the line shown at run time)")
        limitations = data.get("limitations", [])
        if isinstance(limitations, str):
            limitations = [limitations]
        if not isinstance(limitations, list) or not all(isinstance(x, str) for x in limitations):
            raise ValueError(f"'{card_json}': 'limitations' must be a list of strings")
        for key in ("name", "trained_on", "intended_use", "license"):
            if not isinstance(data.get(key, ""), str):
                raise ValueError(f"'{card_json}': '{key}' must be a string")
        return ModelCard(
            name=data.get("name") or root.resolve().name,
            summary=" ".join(summary.split()),
            trained_on=data.get("trained_on", ""),
            intended_use=data.get("intended_use", ""),
            limitations=tuple(limitations),
            license=data.get("license", ""),
            source=str(card_json),
        )
    if readme.is_file():
        try:
            summary = _readme_summary(readme.read_text(encoding="utf-8"))
        except UnicodeDecodeError as exc:
            raise ValueError(f"'{readme}' is not UTF-8 text: {exc}") from exc
        if summary:
            return ModelCard(name=root.resolve().name, summary=summary, source=str(readme))
    return None


def model_card_line(pipe: Any) -> Optional[str]:
    """The line to show wherever ``pipe`` (a :class:`~chatrex.interfaces.pipeline.ChatRexPipeline`, or
    anything with a ``model_card`` attribute) answers: its card's summary, or ``None`` when the model has
    no card (e.g. a pipeline built from parts rather than loaded from a directory)."""
    card = getattr(pipe, "model_card", None)
    return card.summary if isinstance(card, ModelCard) else None
