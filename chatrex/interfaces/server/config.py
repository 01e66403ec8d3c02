"""The server's settings: limits, batching, queue, timeouts, keys. One plain dataclass, checked once."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Optional

__all__ = ["ServerConfig", "API_KEY_ENV"]

#: Environment variable with the API key(s) the server accepts (comma-separated), when ``--api-key`` is not given.
API_KEY_ENV = "CHATREX_API_KEY"


@dataclass(frozen=True)
class ServerConfig:
    """What ``chatrex serve`` accepts and how it schedules work.

    Attributes:
        model_name: the model's id in ``/v1/models`` and in answers (clients may send any ``model``).
        max_batch_size: requests per batch, and per ``generate`` call (1 turns batching off).
        upn_batch_size: images per UPN pass within a batch (the UPN's activations dominate the
            server's memory: about 0.6 GB per image on CPU with the shipped model).
        batch_wait_ms: after the first request of a batch arrives, how long the scheduler waits for more
            before it starts (only while fewer than ``max_batch_size`` are queued).
        max_queue: requests waiting beyond the running batch; one more is answered 429.
        request_timeout_s: a request not finished by then is stopped and answered 504.
        max_image_bytes: largest encoded image (after base64 decoding).
        max_image_pixels: largest image, width x height, checked from the header before decoding.
        max_prompt_tokens: longest question, in tokens of the model's tokenizer.
        max_tokens: largest ``max_tokens`` a request may ask for (also the default).
        max_boxes: most boxes a request may give (ChatRex reads at most 100).
        api_keys: accepted keys (``Authorization: Bearer KEY`` or ``X-API-Key``); empty: no key needed.
        allow_local_files: folders whose files ``file://`` image URLs may name; empty: no file URLs.
    """

    model_name: str = "chatrex"
    max_batch_size: int = 8
    upn_batch_size: int = 4
    batch_wait_ms: float = 10.0
    max_queue: int = 64
    request_timeout_s: float = 300.0
    max_image_bytes: int = 20 * 1024 * 1024
    max_image_pixels: int = 4096 * 4096
    max_prompt_tokens: int = 2048
    max_tokens: int = 512
    max_boxes: int = 100
    api_keys: tuple[str, ...] = field(default_factory=tuple)
    allow_local_files: tuple[Path, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        checks = {
            "max_batch_size": self.max_batch_size >= 1,
            "upn_batch_size": self.upn_batch_size >= 1,
            "batch_wait_ms": self.batch_wait_ms >= 0,
            "max_queue": self.max_queue >= 1,
            "request_timeout_s": self.request_timeout_s > 0,
            "max_image_bytes": self.max_image_bytes >= 1,
            "max_image_pixels": self.max_image_pixels >= 4,
            "max_prompt_tokens": self.max_prompt_tokens >= 1,
            "max_tokens": self.max_tokens >= 1,
            "max_boxes": 1 <= self.max_boxes <= 100,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"invalid server settings: {', '.join(f'{k}={getattr(self, k)!r}' for k in bad)}")
        if any(not isinstance(k, str) or not k for k in self.api_keys):
            raise ValueError("api_keys must be non-empty strings")
        roots = tuple(Path(p).expanduser().resolve() for p in self.allow_local_files)
        missing = [str(p) for p in roots if not p.is_dir()]
        if missing:
            raise ValueError(f"allow_local_files: not a folder: {', '.join(missing)}")
        object.__setattr__(self, "allow_local_files", roots)
        object.__setattr__(self, "api_keys", tuple(self.api_keys))

    @property
    def max_request_bytes(self) -> int:
        """Largest request body: one base64 image plus room for the text and boxes."""
        return self.max_image_bytes * 4 // 3 + 4 + 8 * self.max_prompt_tokens + 1024 * 1024

    def with_env_keys(self, environ: Optional[dict] = None) -> "ServerConfig":
        """This config, with the keys of ``$CHATREX_API_KEY`` (comma-separated) when it names none itself."""
        env = os.environ if environ is None else environ
        if self.api_keys or not env.get(API_KEY_ENV, "").strip():
            return self
        return replace(self, api_keys=tuple(k.strip() for k in env[API_KEY_ENV].split(",") if k.strip()))
