"""`--help` that teaches: every command's options in named panels, defaults visible, and an
"Example:" line whose flags are real options of that command and parse as a command line."""

from __future__ import annotations

import re
import shlex

import pytest
import typer
from typer.testing import CliRunner

from mcir_cli.cli import app

pytestmark = pytest.mark.unit  # fast units only (pytest -m unit)

runner = CliRunner()
ROOT = typer.main.get_command(app)

# command path -> the panels its --help must show (besides typer's own Options/Commands)
PANELS = {
    ("evaluate",): ["Data", "Model", "Metrics", "Speed", "Output"],
    ("retrain",): ["Data", "Model", "MCIR / SPN", "Optimisation", "Validation", "Speed", "Run control"],
    ("compare",): ["Arguments", "Inputs", "Scoring", "Speed", "Statistics", "Output"],
    ("study",): ["Data", "Model", "Arms", "Optimisation", "MCIR / SPN", "Speed", "Run control"],
    ("demo",): ["Run control", "Speed", "MCIR / SPN"],
    ("plot",): ["Arguments", "Output", "Legend"],
    ("restore",): ["Arguments", "Model", "Output", "Speed"],
    ("models",): ["Commands"],
    ("models", "inspect"): ["Arguments"],
    ("data",): ["Commands"],
    ("data", "inspect"): ["Arguments", "Data", "Output"],
}


def _is_group(cmd) -> bool:
    return hasattr(cmd, "commands")  # duck-typed: typer >= 0.2x ships its own click


def _is_option(param) -> bool:
    return param.param_type_name == "option"


def _command(path: tuple[str, ...]):
    cmd = ROOT
    for name in path:
        assert _is_group(cmd), path
        cmd = cmd.commands[name]
    return cmd


def _help(path: tuple[str, ...]) -> str:
    res = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "200", "TERMINAL_WIDTH": "200"})
    assert res.exit_code == 0, res.output
    return res.output


def _example(path: tuple[str, ...]) -> str:
    """The one 'Example: mcir ...' line of the command's help text."""
    lines = [ln.strip() for ln in (_command(path).help or "").splitlines() if ln.strip().startswith("Example:")]
    assert len(lines) == 1, f"mcir {' '.join(path)}: {len(lines)} Example: lines in its help"
    return lines[0].removeprefix("Example:").strip()


def _is_flag_token(token: str) -> bool:
    return token.startswith("-") and not re.fullmatch(r"-\d[\d.e+-]*", token)  # -1e-5 is a value


def _opts(cmd) -> dict:
    return {o: p for p in cmd.params for o in (*p.opts, *p.secondary_opts) if o.startswith("-")}


@pytest.mark.parametrize("path", list(PANELS), ids=" ".join)
def test_help_has_panels_and_an_example(path):
    out = _help(path)
    titles = re.findall(r"╭─ (.+?) ─", out)
    for panel in PANELS[path]:
        assert panel in titles, f"mcir {' '.join(path)} --help has no {panel!r} panel (panels: {titles})"
    assert len(titles) == len(set(titles)), f"a panel shown twice: {titles}"
    example = _example(path)
    # shown whole on one line at 200 columns (the help is where users read it)
    assert any(ln.strip() == f"Example: {example}" for ln in out.splitlines()), out


@pytest.mark.parametrize("path", [p for p in PANELS if not _is_group(_command(p))], ids=" ".join)
def test_every_option_is_in_a_named_panel(path):
    loose = [p.opts[0] for p in _command(path).params
             if _is_option(p) and not getattr(p, "rich_help_panel", None)]
    assert not loose, f"mcir {' '.join(path)}: options outside any panel: {loose}"


@pytest.mark.parametrize("path", list(PANELS), ids=" ".join)
def test_example_flags_are_real_options(path):
    """Every flag of the Example line is an option of that command, takes a value when it
    needs one, and the whole line parses as the command line it claims to be."""
    tokens = shlex.split(_example(path))
    assert tokens[0] == "mcir" and tuple(tokens[1:1 + len(path)]) == path, tokens
    # groups: the example may go on into a subcommand (mcir models inspect FILE)
    cmd_path, args = list(path), tokens[1 + len(path):]
    cmd = _command(path)
    while _is_group(cmd):
        assert args and args[0] in cmd.commands, f"{tokens}: no subcommand of mcir {' '.join(cmd_path)}"
        cmd_path.append(args[0])
        cmd, args = cmd.commands[args[0]], args[1:]
    opts = _opts(cmd)
    flags = [t.split("=", 1)[0] for t in args if _is_flag_token(t)]
    if set(opts) - {"--help"}:
        assert flags, f"{tokens}: an example with none of the command's options teaches little"
    for i, tok in enumerate(args):
        name = tok.split("=", 1)[0]
        if name not in flags:
            continue
        assert name in opts, f"{tokens}: {name} is not an option of mcir {' '.join(cmd_path)}"
        param = opts[name]
        if _is_option(param) and not param.is_flag and "=" not in tok:
            assert i + 1 < len(args) and not _is_flag_token(args[i + 1]), f"{tokens}: {name} needs a value"
    ctx = cmd.make_context(f"mcir {' '.join(cmd_path)}", list(args))  # raises on any bad flag or value
    assert not ctx.args, f"{tokens}: left over: {ctx.args}"


def test_example_check_catches_a_made_up_flag(monkeypatch):
    """The check above can fail: a flag the command does not have is caught."""
    cmd = _command(("demo",))
    monkeypatch.setattr(cmd, "help", "Demo.\n\nExample: mcir demo --iterations 200 -o runs/demo")
    with pytest.raises(AssertionError, match="--iterations is not an option"):
        test_example_flags_are_real_options(("demo",))


def test_top_level_listing_is_one_line_per_command():
    """`mcir --help` lists each command with its one-line summary (the docstring's first
    paragraph: no wrapped rows, no Example line)."""
    out = _help(())
    box = out.split("╭─ Commands ", 1)[1].split("╰", 1)[0]
    rows = [ln.strip("│ ").split(None, 1) for ln in box.splitlines()[1:] if ln.strip("│ ")]
    names = [row[0] for row in rows]
    assert set(names) <= set(ROOT.commands) and len(names) == len(set(names)), f"wrapped rows: {box}"
    assert {"evaluate", "retrain", "study", "compare", "demo", "models", "data"} <= set(names), out
    for name, summary in rows:
        assert "Example:" not in summary, (name, summary)
