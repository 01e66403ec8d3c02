"""``chatrex serve``: an HTTP API for a loaded ChatRex pipeline (FastAPI + uvicorn, or Ray Serve).

Modules: ``config`` (:class:`ServerConfig`, the limits and batching settings), ``images`` (image URLs
→ PIL, with limits), ``schemas`` (request bodies), ``scheduler`` (dynamic batching of UPN passes and
``generate`` calls across concurrent requests), ``metrics`` (Prometheus), ``app`` (:func:`build_app`,
the endpoints), ``ray_app`` (the same app as a Ray Serve deployment). Needs the ``serve`` extra.
"""

from chatrex.interfaces.server.app import build_app
from chatrex.interfaces.server.config import API_KEY_ENV, ServerConfig

__all__ = ["build_app", "ServerConfig", "API_KEY_ENV"]
