"""``chatrex serve --ray``: the same app (:func:`~chatrex.interfaces.server.app.build_app`) as a Ray Serve
deployment, for more than one GPU or more than one machine.

Each replica loads the model once and runs the app as it runs under uvicorn: its own scheduler,
batching, limits and metrics. Ray's HTTP proxy spreads requests over the replicas (each replica takes
up to ``max_batch_size + max_queue`` requests; beyond ``max_queue`` more per replica, Ray's proxy
answers 503). With ``--device cuda`` each replica asks Ray for one GPU, so ``--replicas N`` uses N
GPUs; with ``--max-replicas M`` Ray autoscales between N and M replicas, aiming at ``max_batch_size``
requests in flight per replica.

Example (a local Ray; or ``address="auto"`` / ``ray://...`` for a cluster)::

    serve_with_ray("chatrex/assets/chatrex-small", ServerConfig(model_name="chatrex-small"),
                   device="cuda", replicas=4)

Ray's usage statistics stay off (``RAY_USAGE_STATS_ENABLED=0``) unless the environment turns them on.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Optional, Union

from chatrex.interfaces.server.config import ServerConfig

__all__ = ["RayNotAvailable", "build_deployment", "deployment_options", "serve_with_ray", "APP_NAME"]

APP_NAME = "chatrex"


class RayNotAvailable(RuntimeError):
    """Ray Serve is not installed."""


def _import_serve() -> Any:
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    try:
        from ray import serve
    except ImportError as exc:
        raise RayNotAvailable(f"--ray needs Ray Serve, which is not installed ({exc.name}): pip install "
                              "'ray[serve]' (part of the 'serve' extra)") from None
    return serve


def deployment_options(config: ServerConfig, device: str = "cpu", replicas: int = 1,
                       max_replicas: Optional[int] = None, num_cpus: float = 1.0) -> dict[str, Any]:
    """Ray Serve options for the ChatRex deployment (see the module docstring)."""
    if replicas < 1 or (max_replicas is not None and max_replicas < replicas):
        raise ValueError(f"replicas must be >= 1 and max_replicas >= replicas (got {replicas}, {max_replicas})")
    actor: dict[str, Any] = {"num_cpus": num_cpus}
    if str(device).startswith("cuda"):
        actor["num_gpus"] = 1
    options: dict[str, Any] = {
        "ray_actor_options": actor,
        "max_ongoing_requests": config.max_batch_size + config.max_queue,
        "max_queued_requests": config.max_queue,
        "health_check_period_s": 10,
        "graceful_shutdown_timeout_s": min(60.0, config.request_timeout_s),
    }
    if max_replicas is None or max_replicas == replicas:
        options["num_replicas"] = replicas
    else:
        options["autoscaling_config"] = {"min_replicas": replicas, "max_replicas": max_replicas,
                                         "target_ongoing_requests": config.max_batch_size}
    return options


def build_deployment(model_dir: Union[str, os.PathLike], config: ServerConfig, device: str = "cpu",
                     dtype: Optional[str] = None, replicas: int = 1, max_replicas: Optional[int] = None,
                     num_cpus: float = 1.0, upn: Union[None, str, os.PathLike] = None) -> Any:
    """A bound Ray Serve application: ``serve.run(build_deployment(...))`` serves it."""
    serve = _import_serve()
    options = deployment_options(config, device, replicas, max_replicas, num_cpus)

    @serve.deployment(name="ChatRex")
    @serve.ingress()
    class ChatRexDeployment:
        """One replica: the model, loaded once, and the app around it."""

        def __init__(self, model_dir: str, config: ServerConfig, device: str, dtype: Optional[str],
                     upn: Optional[str]) -> None:
            from chatrex.interfaces.pipeline import ChatRexPipeline

            self.pipe = ChatRexPipeline.from_pretrained(model_dir, device=device, dtype=dtype, upn=upn)
            self.config = config
            self.served: Any = None

        def __serve_build_asgi_app__(self) -> Any:
            from chatrex.interfaces.server.app import build_app

            self.served = build_app(self.pipe, self.config)  # (`app` is Ray's own attribute)
            return self.served

        def check_health(self) -> None:
            scheduler = getattr(getattr(self.served, "state", None), "scheduler", None)
            if scheduler is not None and not scheduler.alive:
                raise RuntimeError("the replica's scheduler stopped")

    return ChatRexDeployment.options(**options).bind(str(Path(model_dir)), config, device, dtype,
                                                     None if upn is None else str(upn))


def serve_with_ray(model_dir: Union[str, os.PathLike], config: ServerConfig, device: str = "cpu",
                   dtype: Optional[str] = None, host: str = "127.0.0.1", port: int = 8000, replicas: int = 1,
                   max_replicas: Optional[int] = None, address: Optional[str] = None,
                   upn: Union[None, str, os.PathLike] = None) -> None:
    """Start (or join, with ``address``) Ray, deploy the app on ``host:port`` and block until interrupted."""
    serve = _import_serve()
    import ray

    if address is None:
        ray.init(include_dashboard=False)
    else:
        ray.init(address=address)
    serve.start(http_options={"host": host, "port": port})
    app = build_deployment(model_dir, config, device, dtype, replicas, max_replicas, upn=upn)
    try:
        serve.run(app, name=APP_NAME, route_prefix="/", blocking=True)
    finally:
        serve.shutdown()
