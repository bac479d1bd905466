"""The commands the documentation shows are ones the CLIs accept (nothing is run).

Every ``eofm-*`` / ``python -m eofm...`` command in README.md's and launch/README.md's fenced
shell blocks and in the header comments of ``launch/configs/*.yaml`` is parsed with that CLI's own argparse parser
(flags, choices, required options), its ``key=value`` overrides are loaded against the config
it names (unknown keys are refused), and the repository paths it names exist. Commands
written inline in the prose (often a command and one flag) use only flags their CLI (and
subcommand) defines. The benchmark
lines of README.md use only flags their script defines, and the README's Python block
imports what it uses.
"""

from __future__ import annotations

import ast
import builtins
import contextlib
import io
import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
README = ROOT / "README.md"
CLIS = ("eofm-shard", "eofm-pretrain", "eofm-export", "eofm-probe", "eofm-finetune")
MODULES = {"eofm.pretrain": "eofm-pretrain", "eofm.finetune.finetune": "eofm-finetune",
           "eofm.data_shards.cli": "eofm-shard", "eofm.finetune.export": "eofm-export",
           "eofm.finetune.probe_cli": "eofm-probe"}
REPO_DIRS = ("launch/", "data_shards/", "scripts/", "benchmarks/")


def _fenced(text: str, lang: str | None) -> list[str]:
    """Bodies of the fenced blocks of ``text`` in language ``lang`` (None: any but python)."""
    blocks = re.findall(r"^```(\w*)\n(.*?)^```", text, re.S | re.M)
    return [body for tag, body in blocks if (tag == lang if lang is not None else tag != "python")]


def _joined(lines: list[str]) -> list[str]:
    """Lines with backslash continuations joined."""
    out, cur = [], ""
    for line in lines:
        if line.rstrip().endswith("\\"):
            cur += line.rstrip()[:-1] + " "
            continue
        out.append((cur + line).strip())
        cur = ""
    return out + ([cur.strip()] if cur.strip() else [])


def _header(path: Path) -> list[str]:
    """The leading comment lines of a file, without their '#'."""
    lines = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        lines.append(line[1:])
    return lines


def _command(line: str) -> tuple[str, list[str]] | None:
    """``(cli, argv)`` of the eofm command in ``line`` (labels such as 'Run:' and environment
    assignments before it are dropped, a trailing '# comment' too), else None."""
    m = re.search(r"(?:^|\s)((?:eofm-\w+|torchrun|python)\b.*)$", line)
    if not m:
        return None
    text = re.sub(r"\s+#.*$", "", m.group(1))
    text = re.sub(r"\[(--[\w-]+)\]", r"\1", text)  # an optional flag shown as [--flag]
    try:
        tokens = shlex.split(text)
    except ValueError:  # prose with an apostrophe, not a command
        return None
    if tokens[0] in CLIS:
        return tokens[0], tokens[1:]
    if "-m" in tokens[:-1] and tokens[tokens.index("-m") + 1] in MODULES:
        i = tokens.index("-m")
        return MODULES[tokens[i + 1]], tokens[i + 2:]
    return None


def _inline(text: str) -> list[str]:
    """Commands written inline in the prose: backticked spans that start with an eofm CLI or
    ``python -m eofm...`` and have arguments."""
    spans = re.findall(r"`((?:eofm-\w+|python -m eofm[\w.]*) [^`]+)`", text.replace("\n", " "))
    return [re.sub(r"\s+", " ", span) for span in spans]


def _placeholder(argv: list[str]) -> bool:
    """Whether ``argv`` names a placeholder config (``launch/configs/X.yaml``, ``NAME.yaml``)."""
    return any(re.search(r"(?:^|/)(?:X|NAME|FILE)\.yaml$", a) for a in argv)


DOCS = (README, ROOT / "launch" / "README.md")


def documented_commands() -> list[tuple[str, str, list[str]]]:
    """``(where, cli, argv)`` for every eofm command in the fenced blocks of :data:`DOCS` and
    the config headers; a command elided with '...' (the flags of
    the line above) or naming a placeholder config is left out."""
    found = []
    for doc in DOCS:
        text = doc.read_text()
        for line in [line for body in _fenced(text, None) for line in _joined(body.splitlines())]:
            cmd = _command(line)
            if cmd and "..." not in cmd[1] and not _placeholder(cmd[1]):
                found.append((str(doc.relative_to(ROOT)), *cmd))
    for path in sorted((ROOT / "launch" / "configs").rglob("*.yaml")):
        for line in _joined(_header(path)):
            cmd = _command(line)
            if cmd and "..." not in cmd[1] and not any("$" in a for a in cmd[1]):
                found.append((str(path.relative_to(ROOT)), *cmd))
    return found


COMMANDS = documented_commands()


def _parse(cli: str, argv: list[str]) -> object:
    """Parse ``argv`` with ``cli``'s own parser; a refusal fails with argparse's message."""
    from eofm.data_shards.cli import build_parser as shard_parser
    from eofm.finetune.export import build_parser as export_parser
    from eofm.finetune.finetune import build_parser as finetune_parser
    from eofm.finetune.probe_cli import parse_args as probe_parse
    from eofm.pretrain.cli import build_parser as pretrain_parser

    parse = {"eofm-shard": lambda a: shard_parser().parse_args(a),
             "eofm-pretrain": lambda a: pretrain_parser().parse_args(a),
             "eofm-export": lambda a: export_parser().parse_args(a),
             "eofm-finetune": lambda a: finetune_parser().parse_args(a),
             "eofm-probe": probe_parse}[cli]
    err = io.StringIO()
    try:
        with contextlib.redirect_stderr(err):
            return parse(argv)
    except SystemExit:
        pytest.fail(f"{cli} refuses {argv}: {err.getvalue().strip()}")


def test_the_documentation_shows_commands_of_every_cli() -> None:
    readme = {cli for where, cli, _ in COMMANDS if where == "README.md"}
    assert readme == set(CLIS), f"README commands found for {sorted(readme)} only"
    assert len(COMMANDS) >= 60, f"only {len(COMMANDS)} documented commands found"


@pytest.mark.parametrize(("where", "cli", "argv"), COMMANDS,
                         ids=[f"{w}:{c}:{i}" for i, (w, c, _) in enumerate(COMMANDS)])
def test_documented_command_parses_and_names_real_keys_and_paths(where: str, cli: str,
                                                                 argv: list[str]) -> None:
    args = _parse(cli, argv)
    if cli == "eofm-pretrain":
        from eofm.pretrain.config import load_config

        load_config(ROOT / args.config, args.overrides, check=False)  # unknown keys refused
    elif cli == "eofm-finetune" and args.config:
        from eofm.finetune.finetune_config import load_config as load_finetune

        load_finetune(ROOT / args.config, args.overrides,
                      flags={"encoder.path": "x", "runtime.out_dir": "y"})
    for token in argv:
        shared = token.startswith("../shared/data/") and SHARED.is_dir()  # else: skipped
        if token.startswith(REPO_DIRS) or shared:
            assert (ROOT / token).exists(), f"{where}: {cli} names {token}, which is missing"


def _cli_flags(cli: str, argv: list[str]) -> set[str]:
    """The option strings ``cli`` (with ``eofm-shard``: the subcommand first in ``argv``)
    accepts."""
    import argparse

    from eofm.data_shards.cli import build_parser as shard_parser
    from eofm.finetune.export import build_parser as export_parser
    from eofm.finetune.finetune import build_parser as finetune_parser
    from eofm.finetune.probe_cli import build_parser as probe_parser
    from eofm.pretrain.cli import build_parser as pretrain_parser

    parser = {"eofm-shard": shard_parser, "eofm-pretrain": pretrain_parser,
              "eofm-export": export_parser, "eofm-finetune": finetune_parser,
              "eofm-probe": probe_parser}[cli]()
    if cli == "eofm-shard" and argv and not argv[0].startswith("-"):
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        parser = sub.choices[argv[0]]
    return set(parser._option_string_actions)


def test_inline_commands_use_flags_their_cli_defines() -> None:
    checked = 0
    for doc in DOCS:
        for span in _inline(doc.read_text()):
            cmd = _command(span)
            if cmd is None:
                continue
            cli, argv = cmd
            flags = {a.split("=")[0] for a in argv if a.startswith("--")}
            unknown = flags - _cli_flags(cli, argv)
            assert not unknown, f"{doc.name}: `{span}` uses {sorted(unknown)}, not a {cli} flag"
            checked += 1
    assert checked >= 10, f"only {checked} inline commands found"


def _script_flags(script: Path) -> set[str]:
    """The ``--flags`` a benchmark script's argparse parser defines (read from its source)."""
    return set(re.findall(r"add_argument\(\s*\"(--[\w-]+)\"", script.read_text()))


def test_readme_benchmark_lines_use_flags_their_script_defines() -> None:
    text = README.read_text()
    lines = re.findall(r"`python (benchmarks/\w+\.py)([^`]*)`", text)
    assert len(lines) >= 8, lines
    for script, rest in lines:
        path = ROOT / script
        assert path.is_file(), f"README runs {script}, which is missing"
        unknown = set(re.findall(r"--[\w-]+", rest)) - _script_flags(path)
        assert not unknown, f"README: {script} has no {sorted(unknown)}"


def test_readme_python_block_imports_what_it_uses() -> None:
    blocks = _fenced(README.read_text(), "python")
    assert blocks, "README.md has no python block"
    for body in blocks:
        tree = ast.parse(body)
        namespace: dict[str, object] = {}
        for node in tree.body:
            if isinstance(node, ast.Import | ast.ImportFrom):
                exec(compile(ast.Module([node], type_ignores=[]), "README.md", "exec"), namespace)
        imported = set(namespace) - {"__builtins__"}
        called = {n.func.id for n in ast.walk(tree)
                  if isinstance(n, ast.Call) and isinstance(n.func, ast.Name)}
        assigned = {t.id for n in ast.walk(tree) if isinstance(n, ast.Assign | ast.For)
                    for t in ast.walk(n.target if isinstance(n, ast.For) else n.targets[0])
                    if isinstance(t, ast.Name)}
        missing = called - imported - assigned - set(dir(builtins))
        assert not missing, f"README python block calls {sorted(missing)} without importing them"


def test_benchmark_docstring_usage_lines_use_flags_the_script_defines() -> None:
    checked = 0
    for path in sorted((ROOT / "benchmarks").glob("*.py")):
        doc = ast.get_docstring(ast.parse(path.read_text())) or ""
        for line in _joined(doc.splitlines()):
            if f"benchmarks/{path.name}" not in line:
                continue
            after = line.split(f"benchmarks/{path.name}", 1)[1]  # torchrun's flags come before
            unknown = set(re.findall(r"--[\w-]+", after)) - _script_flags(path)
            assert not unknown, f"{path.name}'s docstring uses {sorted(unknown)}, not defined"
            checked += 1
    assert checked >= 8, f"only {checked} usage lines found in the benchmarks' docstrings"


def test_readme_says_which_probe_reports_have_a_confusion_picture() -> None:
    """README said eofm-probe writes "a confusion-matrix PNG" whatever the labels; it writes
    one (probe_cli.CONFUSION_PNG) for single-label classes only, none for multi-label data."""
    from eofm.finetune.probe_cli import CONFUSION_PNG

    text = " ".join(README.read_text().split())
    assert (f"`report.json`, `report.md` and, for single-label classes, a confusion-matrix PNG "
            f"(`{CONFUSION_PNG}`:") in text
    assert "none for multi-label data" in text
