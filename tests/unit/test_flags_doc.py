"""docs/flags.md is generated from the processes' argument parsers and must equal the generator's output."""

from __future__ import annotations

import difflib
from pathlib import Path

from service_common import flags_doc

PAGE = Path(__file__).resolve().parents[2] / "docs" / "flags.md"


def test_docs_flags_page_matches_the_parsers():
    expected = flags_doc.render()
    actual = PAGE.read_text() if PAGE.exists() else ""
    if actual != expected:
        diff = difflib.unified_diff(actual.splitlines(), expected.splitlines(), "docs/flags.md", "parsers", lineterm="")
        shown = "\n".join(list(diff)[:40])
        raise AssertionError(f"docs/flags.md is out of date; regenerate it with: {flags_doc.REGENERATE}\n{shown}")


def test_every_flag_of_every_parser_has_a_row():
    page = flags_doc.render()
    for _command, module, factory, takes_environ in flags_doc.PROCESSES:
        parser = flags_doc.load_parser(module, factory, takes_environ)
        for action in parser._actions:
            for name in action.option_strings:
                if name not in ("-h", "--help"):
                    assert f"`{name}`" in page, f"{module}: {name} has no row"


def test_the_page_ignores_the_environment(monkeypatch):
    """Variables set in the shell that runs the generator change no default on the page."""
    before = flags_doc.render()
    monkeypatch.setenv("CODEDSERVE_FRONTEND_FILL_TIMEOUT_MS", "9")
    monkeypatch.setenv("CODEDSERVE_ENCODER_LOG_LEVEL", "DEBUG")
    assert flags_doc.render() == before


def _cells(flag: str) -> list[list[str]]:
    """The first three cells (flag, variable, default) of every row of ``flag``, one row per process."""
    rows = [line for line in flags_doc.render().splitlines() if line.startswith(f"| `{flag}`")]
    return [[c.strip() for c in row.split(" | ")[:3]] for row in rows]


def test_a_row_names_the_flag_its_variable_and_its_built_in_default():
    fill = ["| `--fill-timeout-ms` `FILL_TIMEOUT_MS`", "`CODEDSERVE_FRONTEND_FILL_TIMEOUT_MS`", "`5.0`"]
    assert _cells("--fill-timeout-ms") == [fill]
    switch = ["| `--adaptive-fill`, `--no-adaptive-fill`", "`CODEDSERVE_FRONTEND_ADAPTIVE_FILL`", "off"]
    assert _cells("--adaptive-fill") == [switch]
    assert [c[1] for c in _cells("--scheme-module")] == ["`CODEDSERVE_SCHEME_MODULES`"] * 3
    assert _cells("--model-repository") == [["| `--model-repository` `MODEL_REPOSITORY`", "none", "required"]]
