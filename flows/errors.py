"""How every `distillery` command reports a user's mistake: one line on stderr, exit code 2."""

from __future__ import annotations

from typing import NoReturn

import typer


def fail(message: object) -> NoReturn:
    typer.echo(f"error: {message}", err=True)
    raise typer.Exit(code=2)
