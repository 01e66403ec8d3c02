"""``chatrex serve``: load a model and serve the HTTP API (:mod:`chatrex.interfaces.server`), with
uvicorn on this machine or as a Ray Serve deployment (``--ray``)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from chatrex.interfaces.commands.common import fail as _fail
from chatrex.interfaces.commands.common import model_load_errors


def serve(
    model: Optional[Path] = typer.Option(
        None, "--model", "-m", help="Model directory with upn/ and chatrex/ (default: the shipped chatrex/assets/chatrex-small)."
    ),
    upn: Optional[Path] = typer.Option(
        None, "--upn", help="UPN checkpoint for the proposals: an official .pth or a saved UPN folder (default: the model "
        "directory's upn/). An MLLM folder alone without --upn serves only requests that bring their own boxes."
    ),
    device: str = typer.Option("cpu", "--device", help="cpu, cuda, cuda:1, ... (with --ray: cpu or cuda, one GPU per replica)."),
    dtype: Optional[str] = typer.Option(None, "--dtype", help="MLLM dtype: float32, bfloat16, float16 (default: as saved)."),
    host: str = typer.Option("127.0.0.1", "--host", help="Address to bind (0.0.0.0: every interface; set an API key then)."),
    port: int = typer.Option(8000, "--port", min=1, max=65535, help="Port."),
    api_key: Optional[list[str]] = typer.Option(
        None, "--api-key", help="Accepted API key (repeat for several). Default: $CHATREX_API_KEY (comma-separated); none: no key needed."
    ),
    allow_local_files: Optional[list[Path]] = typer.Option(
        None, "--allow-local-files", help="Folder whose files file:// image URLs may name (repeat for several). Default: none."
    ),
    model_name: Optional[str] = typer.Option(None, "--model-name", help="The model's id in /v1/models (default: the card's name, else the folder's)."),
    max_batch_size: int = typer.Option(8, "--max-batch-size", min=1, help="Requests per UPN pass and per generate call."),
    upn_batch_size: int = typer.Option(4, "--upn-batch-size", min=1, help="Images per UPN pass (its activations dominate memory)."),
    no_batching: bool = typer.Option(False, "--no-batching", help="One request at a time (same as --max-batch-size 1)."),
    batch_wait_ms: float = typer.Option(10.0, "--batch-wait-ms", min=0.0, help="How long a batch waits for more requests."),
    max_queue: int = typer.Option(64, "--max-queue", min=1, help="Requests that may wait; more are answered 429."),
    timeout: float = typer.Option(300.0, "--timeout", min=0.001, help="Seconds a request may take before it is stopped (504)."),
    max_image_bytes: int = typer.Option(20 * 1024 * 1024, "--max-image-bytes", min=1, help="Largest encoded image."),
    max_image_pixels: int = typer.Option(4096 * 4096, "--max-image-pixels", min=4, help="Largest image, width x height."),
    max_prompt_tokens: int = typer.Option(2048, "--max-prompt-tokens", min=1, help="Longest question, in tokens."),
    max_tokens: int = typer.Option(512, "--max-tokens", min=1, help="Most tokens a request may generate (and the default)."),
    use_ray: bool = typer.Option(False, "--ray", help="Serve with Ray Serve: --replicas copies of the app behind Ray's proxy."),
    replicas: int = typer.Option(1, "--replicas", min=1, help="With --ray: replicas (one GPU each with --device cuda)."),
    max_replicas: Optional[int] = typer.Option(
        None, "--max-replicas", min=1, help="With --ray: autoscale between --replicas and this many replicas."
    ),
    ray_address: Optional[str] = typer.Option(None, "--ray-address", help="With --ray: a running cluster (default: start a local Ray)."),
    log_level: str = typer.Option("info", "--log-level", help="uvicorn log level."),
) -> None:
    """Serve ChatRex over HTTP: OpenAI-compatible /v1/chat/completions, /v1/ground, /v1/propose, /health, /metrics."""
    from chatrex.interfaces.pipeline import DEFAULT_MODEL_DIR

    model_dir = model if model is not None else DEFAULT_MODEL_DIR
    if not model_dir.is_dir():
        hint = " (the shipped default model is not installed; pass --model DIR)" if model is None else ""
        _fail(f"model directory '{model_dir}' does not exist{hint}")
    if upn is not None and not upn.exists():
        _fail(f"UPN checkpoint '{upn}' does not exist")
    try:
        import fastapi  # noqa: F401
        import uvicorn
    except ImportError as exc:
        _fail(f"chatrex serve needs the 'serve' extra ({exc.name} is missing): pip install -e '.[serve]'")
    from rich.console import Console
    from rich.markup import escape

    from chatrex.interfaces.model_card import load_model_card
    from chatrex.interfaces.server.config import ServerConfig

    console = Console(stderr=True)
    try:
        card = load_model_card(model_dir)
    except ValueError as exc:
        _fail(str(exc))
    name = model_name or (card.name if card is not None else model_dir.resolve().name)
    try:
        config = ServerConfig(
            model_name=name, max_batch_size=1 if no_batching else max_batch_size,
            upn_batch_size=1 if no_batching else upn_batch_size, batch_wait_ms=batch_wait_ms,
            max_queue=max_queue, request_timeout_s=timeout, max_image_bytes=max_image_bytes,
            max_image_pixels=max_image_pixels, max_prompt_tokens=max_prompt_tokens, max_tokens=max_tokens,
            api_keys=tuple(api_key or ()), allow_local_files=tuple(allow_local_files or ()),
        ).with_env_keys(os.environ)
    except ValueError as exc:
        _fail(str(exc))
    if card is not None:
        console.print(f"[yellow]model:[/yellow] {escape(card.summary)}", highlight=False)
    if upn is None and (model_dir / "config.json").is_file():
        console.print(f"[yellow]warning:[/yellow] '{escape(str(model_dir))}' is an MLLM folder without a UPN (--upn): "
                      "only requests with their own boxes can be answered", highlight=False)
    if host not in ("127.0.0.1", "localhost", "::1") and not config.api_keys:
        console.print(f"[yellow]warning:[/yellow] serving on {escape(host)} without an API key: anyone who can reach "
                      "this address can use the model (--api-key or $CHATREX_API_KEY)", highlight=False)

    if use_ray:
        from chatrex.interfaces.server.ray_app import RayNotAvailable, serve_with_ray

        if max_replicas is not None and max_replicas < replicas:
            _fail(f"--max-replicas {max_replicas} is below --replicas {replicas}")
        try:
            serve_with_ray(model_dir, config, device=device, dtype=dtype, host=host, port=port, replicas=replicas,
                           max_replicas=max_replicas, address=ray_address, upn=upn)
        except RayNotAvailable as exc:
            _fail(str(exc))
        return

    from chatrex.interfaces.pipeline import ChatRexPipeline
    from chatrex.interfaces.server.app import build_app

    with console.status(f"loading the model from {model_dir}"):
        try:
            pipe = ChatRexPipeline.from_pretrained(model_dir, device=device, dtype=dtype, upn=upn)
        except model_load_errors() as exc:  # a bad directory / device / dtype; anything else is a bug: traced
            _fail(f"could not load the model from '{model_dir}': {type(exc).__name__}: {exc}", exc)
    app = build_app(pipe, config)
    console.print(f"serving {escape(name)} on http://{escape(host)}:{port} (batches of up to {config.max_batch_size}, "
                  f"queue {config.max_queue}{', API key required' if config.api_keys else ''})", highlight=False)
    uvicorn.run(app, host=host, port=port, log_level=log_level)


def register(app: typer.Typer) -> None:
    app.command("serve")(serve)
