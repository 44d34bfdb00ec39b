"""Render every process's flags, from its own argument parser, as the Markdown page docs/flags.md.

    python -m service_common.flags_doc > docs/flags.md

The page is built from the parsers themselves (with an empty environment, so the built-in defaults show), and a
test checks that docs/flags.md equals this output: a flag added, renamed or given a new default without
regenerating the page fails that test.
"""

from __future__ import annotations

import argparse
import importlib
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[1]
REGENERATE = "python -m service_common.flags_doc > docs/flags.md"

# (the command, the module holding its parser, the parser factory's name, whether it takes an environment)
PROCESSES = (
    ("python -m frontend", "frontend.__main__", "parser", True),
    ("python -m encoder_service", "encoder_service.__main__", "parser", True),
    ("python -m decoder_service", "decoder_service.__main__", "parser", True),
    ("python -m triton_local", "triton_local.__main__", "_parser", False),
)

# What service_common.cli.Flags appends to each flag's help: "[env VARIABLE; default: VALUE]" (and, when the
# variable is set, "; set now: ..." - never here, the parsers are built with an empty environment).
_ENV_SUFFIX = re.compile(r"^(?P<help>.*?)\s*\[env (?P<env>[A-Z0-9_]+); default: .*\]$", re.DOTALL)
_ARGPARSE_DEFAULT = re.compile(r"\s*\(default:? %\(default\)s\)")

_HEADER = f"""# Flags

Every flag of every process, generated from the processes' own argument parsers by
`{REGENERATE}` (a test fails when this page and the parsers disagree).

Each flag of the frontend, the encoder and the decoder is also an environment variable: `--x-y` of service S
reads `CODEDSERVE_<S>_X_Y`, a repeatable flag's variable ends in `S` and takes a comma- or `;`-separated list,
and `--scheme-module`, which the three services must agree on, is `CODEDSERVE_SCHEME_MODULES` for all three.
A flag on the command line wins over its variable; an empty variable counts as unset. A switch `--x` has
`--no-x` to turn it off, and its variable takes `1`/`true`/`yes`/`on` or `0`/`false`/`no`/`off`.
`python -m triton_local` reads flags only. `python -m PROCESS --help` prints the same, with any value a
variable sets now.
"""


def load_parser(module: str, factory: str, takes_environ: bool) -> argparse.ArgumentParser:
    """The process's parser, built as if no ``CODEDSERVE_*`` variable were set."""
    make: Callable[..., argparse.ArgumentParser] = getattr(importlib.import_module(module), factory)
    return make({}) if takes_environ else make()


def render() -> str:
    parts = [_HEADER]
    for command, module, factory, takes_environ in PROCESSES:
        parts.append(render_parser(command, load_parser(module, factory, takes_environ)))
    return "\n".join(parts)


def render_parser(command: str, parser: argparse.ArgumentParser) -> str:
    lines = [f"## `{command}`", ""]
    if parser.description:
        description = _one_line(parser.description).removeprefix(f"{command}: ")
        lines += [_text(description[:1].upper() + description[1:]), ""]
    for title, actions in _groups(parser):
        if title:
            lines += [f"**{_one_line(title)}**", ""]
        lines += ["| flag | variable | default | what it does |", "|---|---|---|---|"]
        lines += [_row(parser, action) for action in actions]
        lines.append("")
    return "\n".join(lines)


def _groups(parser: argparse.ArgumentParser) -> Iterator[tuple[str | None, list[argparse.Action]]]:
    """The parser's argument groups in order, without --help and without empty groups; the first unnamed."""
    first = True
    for group in parser._action_groups:  # argparse keeps no public list of its groups
        actions = [a for a in group._group_actions if a.option_strings and a.help != argparse.SUPPRESS]
        actions = [a for a in actions if not isinstance(a, argparse._HelpAction)]
        if actions:
            yield (None if first else group.title), actions
            first = False


def _row(parser: argparse.ArgumentParser, action: argparse.Action) -> str:
    text = _ARGPARSE_DEFAULT.sub("", action.help or "")
    text = text % {**vars(action), "prog": parser.prog}
    match = _ENV_SUFFIX.match(text)
    text, env = (match["help"], f"`{match['env']}`") if match else (text, "none")
    default = _default(action)
    shown = default if default in ("unset", "required", "on", "off") else f"`{default}`"
    return "| " + " | ".join(_cell(c) for c in (_flag(action), env, shown, _text(text))) + " |"


def _flag(action: argparse.Action) -> str:
    names = ", ".join(f"`{n}`" for n in action.option_strings)
    if action.nargs == 0:
        return names
    if action.choices is not None:
        return f"{names} `{'|'.join(str(c) for c in action.choices)}`"
    return f"{names} `{action.metavar or action.dest.upper()}`"


def _default(action: argparse.Action) -> str:
    if action.required:
        return "required"
    value: Any = action.default
    if value in (None, "", [], ()):
        return "unset"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, list | tuple):
        return "; ".join(str(v) for v in value)
    if isinstance(value, Path) and value.is_absolute() and value.is_relative_to(REPO_ROOT):
        return str(value.relative_to(REPO_ROOT))
    return str(value)


def _text(text: str) -> str:
    """Prose for a table cell: ``<model>`` must not read as an HTML tag."""
    return text.replace("<", "&lt;").replace(">", "&gt;")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _cell(text: str) -> str:
    return _one_line(text).replace("|", "\\|")


def main() -> None:
    print(render(), end="")


if __name__ == "__main__":
    main()
