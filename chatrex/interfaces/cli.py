"""The ``chatrex`` command line: one Typer app; each area adds its commands from
``chatrex.interfaces.commands.<area>`` through a ``register(app)`` function."""

from __future__ import annotations

import importlib
import importlib.util

import typer

#: Areas whose commands the CLI offers, in help order.
COMMAND_MODULES = ("predict", "propose", "serve", "world", "engine", "train", "eval", "demo", "convert")


def build_app() -> typer.Typer:
    app = typer.Typer(
        name="chatrex",
        help="ChatRex: detect, refer, caption and converse about images, with every object grounded to a box.",
        no_args_is_help=True,
        add_completion=False,
        pretty_exceptions_show_locals=False,
    )


    @app.callback()
    def _root(
        debug: bool = typer.Option(
            False, "--debug", help="Show the full traceback of errors that are otherwise reported in one line."
        ),
    ) -> None:
        """ChatRex: detect, refer, caption and converse about images, with every object grounded to a box."""

    for name in COMMAND_MODULES:
        module_name = f"chatrex.interfaces.commands.{name}"
        if importlib.util.find_spec(module_name) is None:
            continue
        importlib.import_module(module_name).register(app)
    return app


def main() -> None:
    build_app()()


if __name__ == "__main__":
    main()
