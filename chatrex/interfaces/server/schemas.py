"""Request bodies of the server's endpoints (pydantic), and the checks that go beyond types.

* :class:`ChatCompletionRequest` — the OpenAI chat-completions request, with the fields ChatRex can
  honour; ChatRex's own options (``boxes``, ``granularity``, ``min_score``, ``nms``, ``max_boxes``) are
  extension fields (the OpenAI client sends them with ``extra_body``). Fields that would change the
  answer in ways ChatRex cannot (tools, ``n`` > 1, ``stop``, logprobs, response formats) are refused
  with 400 rather than ignored; other unknown fields are ignored, as OpenAI clients add their own.
* :class:`GroundRequest` (``POST /v1/ground``) and :class:`ProposeRequest` (``POST /v1/propose``): the
  native endpoints; unknown fields are refused (a typo should not silently fall back to a default).
"""

from __future__ import annotations

from typing import Any, Literal, Optional, Union

from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "ImageURL",
    "ContentPart",
    "ChatMessage",
    "ChatCompletionRequest",
    "ProposalOptions",
    "GroundRequest",
    "ProposeRequest",
    "chat_image_and_question",
    "unsupported_fields",
    "UNSUPPORTED_CHAT_FIELDS",
]


class ImageURL(BaseModel):
    url: str
    detail: Optional[str] = None


class ContentPart(BaseModel):
    """One part of a message's content: ``{"type": "text", "text": ...}`` or
    ``{"type": "image_url", "image_url": {"url": ...}}``."""

    model_config = ConfigDict(extra="allow")
    type: str
    text: Optional[str] = None
    image_url: Optional[Union[ImageURL, str]] = None


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")
    role: str
    content: Optional[Union[str, list[ContentPart]]] = None


class ProposalOptions(BaseModel):
    """Where the boxes come from: the request's own ``boxes`` ([x0, y0, x1, y1] in pixels, at most 100),
    or its ``regions`` (boxes and masks mixed: a mask as COCO RLE ``{"size": [H, W], "counts": ...}`` or
    COCO polygons ``[[x0, y0, x1, y1, x2, y2, ...], ...]``; :mod:`chatrex.mllm.regions`), else the UPN's
    proposals with this granularity and filter (default: the model directory's)."""

    boxes: Optional[list[list[float]]] = None
    regions: Optional[list[Union[list[float], list[list[float]], dict[str, Any]]]] = None
    granularity: Literal["fine", "coarse"] = "fine"
    min_score: Optional[float] = Field(None, ge=0.0, le=1.0)
    nms: Optional[float] = Field(None, le=1.0)
    max_boxes: int = Field(100, ge=1, le=100)


class ChatCompletionRequest(ProposalOptions):
    model_config = ConfigDict(extra="allow")
    model: Optional[str] = None
    messages: list[ChatMessage]
    max_tokens: Optional[int] = Field(None, ge=1)
    max_completion_tokens: Optional[int] = Field(None, ge=1)
    temperature: Optional[float] = Field(None, ge=0.0, le=2.0)
    top_p: Optional[float] = Field(None, gt=0.0, le=1.0)
    stream: bool = False
    stream_options: Optional[dict[str, Any]] = None
    n: Optional[int] = None
    seed: Optional[int] = None


#: Chat fields ChatRex cannot honour, with why; a request that sets one (to anything but its neutral
#: value) gets 400.
UNSUPPORTED_CHAT_FIELDS = {
    "tools": "ChatRex does not call tools",
    "functions": "ChatRex does not call functions",
    "tool_choice": "ChatRex does not call tools",
    "function_call": "ChatRex does not call functions",
    "response_format": "ChatRex answers in its own grounded format (see the 'chatrex' field of the answer)",
    "logprobs": "log-probabilities are not returned",
    "top_logprobs": "log-probabilities are not returned",
    "stop": "stop sequences are not supported",
    "audio": "ChatRex reads images and text only",
    "modalities": "ChatRex answers with text only",
    "prediction": "predicted outputs are not supported",
}


def _neutral(name: str, value: Any) -> bool:
    """Whether an unsupported field is sent with a value that asks for nothing (as some clients do)."""
    if value is None or value is False or value == [] or value == {}:
        return True
    if name == "tool_choice" and value == "none":
        return True
    if name == "response_format" and isinstance(value, dict) and value.get("type") == "text":
        return True
    return name == "modalities" and value == ["text"]


class GroundRequest(ProposalOptions):
    """``POST /v1/ground``: ``image`` is a data URL, bare base64, or a ``file://`` URL (when the server
    allows local files)."""

    model_config = ConfigDict(extra="forbid")
    image: str
    question: str
    max_tokens: Optional[int] = Field(None, ge=1)
    temperature: float = Field(0.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    stream: bool = False


class ProposeRequest(BaseModel):
    """``POST /v1/propose``: the UPN's proposals for one image."""

    model_config = ConfigDict(extra="forbid")
    image: str
    granularity: Literal["fine", "coarse"] = "fine"
    min_score: Optional[float] = Field(None, ge=0.0, le=1.0)
    nms: Optional[float] = Field(None, le=1.0)
    max_boxes: int = Field(100, ge=1, le=100)


def unsupported_fields(req: ChatCompletionRequest) -> list[str]:
    """Messages for each field of ``req`` that ChatRex cannot honour."""
    problems = []
    extra = req.model_extra or {}
    for name, why in UNSUPPORTED_CHAT_FIELDS.items():
        if not _neutral(name, extra.get(name)):
            problems.append(f"'{name}' is not supported: {why}")
    if req.n not in (None, 1):
        problems.append(f"'n' must be 1 (got {req.n}): one answer per request")
    if req.seed is not None and (req.temperature or 0) > 0:
        problems.append("'seed' is not supported with sampling (requests sampled in one batch share a generator); "
                        "greedy decoding (temperature 0) is deterministic")
    return problems


def chat_image_and_question(messages: list[ChatMessage]) -> tuple[str, str]:
    """The image URL and the question of a chat request.

    ChatRex answers one question about one image: the request must hold exactly one message, from the
    user, whose content has one ``image_url`` part and some text.

    Raises:
        ValueError: anything else, with a message that says what to send.
    """
    if not messages:
        raise ValueError("'messages' is empty: send one user message with an image_url part and the question")
    roles = [m.role for m in messages]
    if roles != ["user"]:
        raise ValueError(
            f"got messages with roles {roles}; ChatRex answers one question about one image: send exactly one "
            "message, role 'user', whose content has one image_url part and the question as text "
            "(no system prompt, no earlier turns)")
    content = messages[0].content
    if content is None or isinstance(content, str):
        raise ValueError("the message has no image: its content must be a list with an image_url part "
                         "({'type': 'image_url', 'image_url': {'url': 'data:image/jpeg;base64,...'}}) and a text part")
    images, texts = [], []
    for k, part in enumerate(content):
        if part.type == "image_url":
            url = part.image_url.url if isinstance(part.image_url, ImageURL) else part.image_url
            if not url:
                raise ValueError(f"content part {k} is an image_url without a url")
            images.append(url)
        elif part.type == "text":
            texts.append(part.text or "")
        else:
            raise ValueError(f"content part {k} has type '{part.type}'; ChatRex reads 'text' and 'image_url' parts")
    if not images:
        raise ValueError("the message has no image: add an image_url part (a data URL, data:image/jpeg;base64,...)")
    if len(images) > 1:
        raise ValueError(f"the message has {len(images)} images; ChatRex reads one image per request")
    question = "\n".join(t for t in texts if t.strip()).strip()
    if not question:
        raise ValueError("the message has no text: add a text part with the question")
    return images[0], question
