"""README.md, docs/ and ``--help`` agree with the code: every default they show is the
one the code uses (``FitConfig``'s for ``fit``, argparse's for the other commands),
and every ``--flag`` they mention, or a message in src/transferkit recommends, is a
real option of some ``transferkit`` command."""

from __future__ import annotations

import argparse
import ast
import re
from pathlib import Path

import pytest

from transferkit.cli import _FIT_FLAGS, _HEAD_FLAGS, _command_parser, _shown_default, build_parser

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "src" / "transferkit"
DOCS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
SOURCES = sorted(PACKAGE.rglob("*.py"))
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9_-]*")
# torchrun's own options, which messages and docs about distributed runs name
TORCHRUN = {"--standalone", "--nproc_per_node", "--nnodes", "--node_rank", "--no-python"}
TORCHRUN |= {"--rdzv_endpoint", "--rdzv_backend", "--rdzv_id"}


def _rel(path: Path) -> str:
    return str(path.relative_to(ROOT))


# Mismatches in files this test's owner does not own, by check: each is reported to
# the file's owner; remove the mark once the file is fixed (strict: the test says so).
NOT_YET: dict = {}  # (check, file) -> why a known mismatch is not fixed yet


def _params(check: str, paths):
    params = []
    for p in paths:
        reason = NOT_YET.get((check, _rel(p)))
        marks = [pytest.mark.xfail(reason=reason, strict=True)] if reason else []
        params.append(pytest.param(p, id=_rel(p), marks=marks))
    return params


# ------------------------------------------------------------------ the parsers


PARSER = build_parser()


def _commands(parser=PARSER, name=()) -> dict[tuple[str, ...], argparse.ArgumentParser]:
    """Every (sub)command's parser by its words: ("fit",), ("data", "check"), ..."""
    found = {name: parser}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for word, sub in action.choices.items():
                found.update(_commands(sub, (*name, word)))
    return found


COMMANDS = _commands()


def _visible(parser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.help != argparse.SUPPRESS]


OPTIONS: dict[str, list[tuple[tuple[str, ...], argparse.Action]]] = {}
for _words, _parser in COMMANDS.items():
    for _action in _visible(_parser):
        for _flag in _action.option_strings:
            OPTIONS.setdefault(_flag, []).append((_words, _action))


def _fit_default(dest: str):
    """FitConfig's default of a fit flag's setting (its head's for the head flags)."""
    from transferkit.config import FitConfig

    cfg = FitConfig()
    if dest in _HEAD_FLAGS:
        return getattr(cfg.head, dest)
    # None: a flag ahead of the FitConfig in use (class_weight, from the settings branch)
    return getattr(cfg, dest, None)


def _defaults_of(flag: str) -> list:
    """The defaults ``flag`` has: FitConfig's for fit's settings, argparse's else."""
    out = []
    for words, action in OPTIONS.get(flag, []):
        fit_setting = words == ("fit",) and action.dest in (*_FIT_FLAGS, *_HEAD_FLAGS)
        out.append(_fit_default(action.dest) if fit_setting else action.default)
    return out


def _help_segments(words: tuple[str, ...]) -> dict[argparse.Action, str]:
    """Each option's entry in ``transferkit WORDS --help``, whitespace collapsed."""
    parser = COMMANDS[words]
    text = " ".join(parser.format_help().split())
    text = text[text.index("options:") :]
    actions = _visible(parser)
    starts = [text.index(f" {a.option_strings[-1]}") for a in actions]
    ends = [*starts[1:], len(text)]
    return {a: text[s:e] for a, s, e in zip(actions, starts, ends, strict=True)}


def test_fit_help_shows_fitconfigs_default_for_every_setting():
    segments = _help_segments(("fit",))
    settings = [a for a in segments if a.dest in (*_FIT_FLAGS, *_HEAD_FLAGS)]
    assert len(settings) == len(_FIT_FLAGS) + len(_HEAD_FLAGS)
    for action in settings:
        default, shown = _fit_default(action.dest), segments[action]
        if action.dest == "augment":  # --no-augment: on unless the flag is given
            assert default is True and "(default: augmented)" in shown
        elif action.dest == "leak_check":  # --no-leak-check: likewise
            assert default is True and "(default: checked)" in shown
        elif default is None:  # said in words: pretrained, from the data, ...
            assert "(default: " in shown and "None" not in shown, shown
        else:
            assert f"(default {_shown_default(default)})" in shown, shown


def test_every_default_in_help_is_argparses():
    for words in COMMANDS:
        for action, shown in _help_segments(words).items():
            if words == ("fit",) and action.dest in (*_FIT_FLAGS, *_HEAD_FLAGS):
                continue  # FitConfig's, checked above
            for value in re.findall(r"\(default ([^):]+)\)", shown):
                assert value == _shown_default(action.default), (words, shown)


# ------------------------------------------------------------- README and docs


def _prose_and_code(text: str) -> tuple[str, list[str]]:
    """(the text outside fenced code blocks, the command lines inside them with
    backslash continuations joined)."""
    prose, code, fenced = [], [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        (code if fenced else prose).append(line)
    joined = re.sub(r"\\\n", " ", "\n".join(code))
    return "\n".join(prose), joined.splitlines()


def _same(written: str, default) -> bool:
    written = written.strip().strip("`")
    if isinstance(default, bool):
        return written in (("on", "true") if default else ("off", "false"))
    if isinstance(default, (int, float)):
        try:
            return float(written) == float(default)
        except ValueError:
            return False
    return written == str(default)


def _doc_defaults(text: str) -> list[tuple[str, str]]:
    """(flag, the default written) for each default README/docs state: tables with
    a flag and a default column, tables headed by a flag with a '(default)' row, and
    the prose forms '`--bn frozen` (the default)', 'the default `--bn frozen`',
    '`--lr`, default 3e-3'."""
    found = []
    for table in re.findall(r"(?:^\|.*\|\n)+", text, flags=re.M):
        rows = [
            [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", r.strip()[1:-1])]
            for r in table.splitlines()
        ]
        head = [c.strip("`").lower() for c in rows[0]]
        for row in rows[2:]:
            if "default" in head and (m := FLAG.match(row[0].strip("`"))):
                found.append((m.group(), row[head.index("default")]))
            if FLAG.fullmatch(head[0]) and (m := re.match(r"`([^`]+)` \(default\)", row[0])):
                found.append((head[0], m.group(1)))
    prose = text.replace("\n", " ")
    found += re.findall(r"`(--[a-z-]+) ([^`]+)` \((?:the )?default\)", prose)
    found += re.findall(r"[Tt]he default `(--[a-z-]+) ([^`]+)`", prose)
    found += re.findall(r"`(--[a-z-]+)`, default `?([^`,;)\s]+)", prose)
    return found


@pytest.mark.parametrize("doc", _params("defaults", DOCS))
def test_defaults_in_readme_and_docs_are_the_codes(doc):
    wrong = []
    for flag, written in _doc_defaults(_prose_and_code(doc.read_text())[0]):
        defaults = _defaults_of(flag)
        assert defaults, f"{flag} (documented with a default) is no option"
        if None in defaults:  # a default said in words (a path, 'from the data')
            continue
        if not any(_same(written, d) for d in defaults):
            wrong.append(f"{flag}: docs say {written}, the code {defaults}")
    assert wrong == []


def test_the_readme_fit_table_lists_every_fit_setting():
    documented = {f for f, _ in _doc_defaults((ROOT / "README.md").read_text())}
    fit = {a.option_strings[-1] for a in _help_segments(("fit",)) if a.dest in _FIT_FLAGS}
    fit |= {f"--{d}" for d in _HEAD_FLAGS}
    assert fit - {"--no-augment", "--no-leak-check", "--compile"} <= documented


# ------------------------------------------------------ every --flag is real


def _command_flags(line: str) -> list[tuple[str, tuple[str, ...] | None]]:
    """(flag, the command it is given to) for a ``transferkit ...`` command line."""
    names = "|".join(map(re.escape, {w[0] for w in COMMANDS if w}))
    out = []
    for m in re.finditer(rf"(?:^|[\s/$])transferkit\s+((?:{names}|--)\S*.*)", line):
        tokens = m.group(1).split()
        command, _ = _command_parser(PARSER, tokens)
        words = next(w for w, p in COMMANDS.items() if p is command)
        out += [(flag, words) for flag in FLAG.findall(m.group(1))]
    return out


def _doc_flags(text: str) -> list[tuple[str, tuple[str, ...] | None]]:
    prose, code = _prose_and_code(text)
    found = [f for line in code for f in _command_flags(line)]
    names = "|".join(re.escape(w[0]) for w in COMMANDS if w)
    for span in re.findall(r"`([^`]+)`", prose):
        span = " ".join(span.split())
        if span.startswith("--"):
            found += [(flag, None) for flag in FLAG.findall(span)]
        elif re.match(rf"(?:transferkit )?(?:{names})\b", span):
            found += _command_flags(
                span if span.startswith("transferkit") else f"transferkit {span}"
            )
    return found


def _exists(flag: str, words: tuple[str, ...] | None) -> bool:
    if flag in TORCHRUN or flag in ("--help", "--version"):
        return True
    commands = [w for w, _ in OPTIONS.get(flag, [])]
    if words is None:
        return bool(commands)
    return words in commands or () in commands or any(w[: len(words)] == words for w in commands)


@pytest.mark.parametrize("doc", _params("flags", DOCS))
def test_every_flag_in_readme_and_docs_is_an_option(doc):
    missing = sorted(
        {
            f"{flag} ({' '.join(w or ('any command',))})"
            for flag, w in _doc_flags(doc.read_text())
            if not _exists(flag, w)
        }
    )
    assert missing == []


def _strings(path: Path):
    """String constants of a module (messages, docstrings, f-string parts); in cli.py
    not the option names it defines."""
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Constant) and isinstance(node.value, str):
            if path.name == "cli.py" and FLAG.fullmatch(node.value):
                continue
            yield node.value


@pytest.mark.parametrize("source", _params("flags", SOURCES))
def test_every_flag_a_message_in_src_names_is_an_option(source):
    missing = sorted({f for s in _strings(source) for f in FLAG.findall(s) if not _exists(f, None)})
    assert missing == []


def test_the_checks_catch_a_stale_flag_and_a_stale_default():
    assert not _exists("--epochs", ("fit",)) and _exists("--head-epochs", ("fit",))
    assert _command_flags("$ transferkit fit DATA --out RUN --epochs 3") == [
        ("--out", ("fit",)),
        ("--epochs", ("fit",)),
    ]
    assert _doc_flags("see `--learning-rate`")[0] == ("--learning-rate", None)
    assert not _exists("--top-k", ("fit",)) and _exists("--top-k", ("predict",))
    table = "| flag | default |\n| --- | --- |\n| `--lr` | 0.1 |\n"
    ((flag, written),) = _doc_defaults(table)
    assert not any(_same(written, d) for d in _defaults_of(flag))
    assert _doc_defaults("With `--bn frozen` (the default) it") == [("--bn", "frozen")]
