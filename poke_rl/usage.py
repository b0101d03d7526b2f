"""How the command line reports bad usage: one ``error: …`` line on stderr and exit 2 (README.md).

typer prints a usage error as a boxed rich panel of several lines; ``OneLineUsageGroup`` prints
the same message as one line instead, naming the command's ``--help`` (which stays as typer
draws it). It also refuses a value after a boolean flag: ``--force true`` would otherwise take
``true`` as the next positional argument (a path), since a flag reads no value.
"""

from __future__ import annotations

import sys
from typing import Any

import typer
from typer._click import Context
from typer._click.core import Command
from typer._click.exceptions import ClickException, NoArgsIsHelpError, UsageError
from typer.core import TyperGroup

BOOLEAN_WORDS = frozenset({"true", "false", "yes", "no", "on", "off"})


def usage_line(exc: ClickException) -> str:
    """A click error as one line: its message, then where to find the command's help."""
    message = " ".join(exc.format_message().split()).rstrip(".")
    if len(message) > 1 and message[0].isupper() and message[1].islower():
        message = message[0].lower() + message[1:]
    ctx: Context | None = getattr(exc, "ctx", None)
    if ctx is not None and isinstance(exc, UsageError):
        message += f" (see `{ctx.command_path} --help`)"
    return message


def _fail(exc: ClickException) -> typer.Exit:
    print(f"error: {usage_line(exc)}", file=sys.stderr, flush=True)
    return typer.Exit(exc.exit_code)


def refuse_flag_values(command: Command, args: list[str], command_path: str) -> None:
    """Raise ``UsageError`` when a boolean flag of ``command`` is followed by true/false/yes/no."""
    flags: dict[str, Any] = {}
    for param in command.params:
        if getattr(param, "is_bool_flag", False):
            for name in [*param.opts, *param.secondary_opts]:
                flags[name] = param
    for token, following in zip(args, args[1:], strict=False):
        if token == "--":
            return
        if token in flags and following.lower() in BOOLEAN_WORDS:
            param = flags[token]
            pair = " or ".join(f"`{name}`" for name in [*param.opts, *param.secondary_opts])
            raise UsageError(
                f"{token} is a flag and takes no value: write {pair}, not `{token} {following}` "
                f"(see `{command_path} --help`)"
            )


class OneLineUsageGroup(TyperGroup):
    """The ``poke-rl`` group: usage errors as one line, values after boolean flags refused."""

    def parse_args(self, ctx: Context, args: list[str]) -> list[str]:
        try:
            return super().parse_args(ctx, args)
        except NoArgsIsHelpError:  # ``poke-rl`` alone prints the help, as typer does
            raise
        except UsageError as exc:
            raise _fail(exc) from None

    def resolve_command(
        self, ctx: Context, args: list[str]
    ) -> tuple[str | None, Command | None, list[str]]:
        if args and args[0].lower() in BOOLEAN_WORDS and ctx.params.get("debug"):
            raise UsageError(f"--debug is a flag and takes no value: write `--debug`, not "
                             f"`--debug {args[0]}`")  # fmt: skip
        name, command, rest = super().resolve_command(ctx, args)
        if command is not None:
            refuse_flag_values(command, rest, f"{ctx.command_path} {name}")
        return name, command, rest

    def invoke(self, ctx: Context) -> Any:
        try:
            return super().invoke(ctx)
        except NoArgsIsHelpError:
            raise
        except ClickException as exc:
            raise _fail(exc) from None
