"""The `golong` command line.

Each command is a thin wrapper: it parses arguments and calls into the module that owns the
work, importing it lazily so `golong --help` stays fast and heavy packages load only when used.
"""

from __future__ import annotations

import typer

app = typer.Typer(no_args_is_help=True, add_completion=False, help="Long-context RL post-training.")
data_app = typer.Typer(no_args_is_help=True, help="Inspect, validate and generate data in the GoLongRL schema.")
rewards_app = typer.Typer(no_args_is_help=True, help="Score responses with the GoLongRL rewards.")
tasks_app = typer.Typer(no_args_is_help=True, help="List the tasks golong knows.")
ksa_app = typer.Typer(no_args_is_help=True, help="Kwai Summary Attention: convert and export models.")
app.add_typer(data_app, name="data")
app.add_typer(rewards_app, name="rewards")
app.add_typer(tasks_app, name="tasks")
app.add_typer(ksa_app, name="ksa")


def main() -> None:
    app()


if __name__ == "__main__":
    main()
