"""The docs and the CLI stay in step: every command and option the docs name exists, and every
option of every command is documented in docs/cli.md."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest
import typer.main

from medp2p.cli import app

ROOT = Path(__file__).resolve().parents[1]
DOCS = sorted((ROOT / "docs").glob("*.md")) + [ROOT / "README.md"]
GROUP = typer.main.get_command(app)


def _options(command: str) -> set[str]:
    cmd = GROUP.commands[command]
    opts = {"--help"}
    for p in cmd.params:
        opts.update(p.opts)
        opts.update(p.secondary_opts)
    return opts


def _cli_sections() -> dict[str, str]:
    text = (ROOT / "docs" / "cli.md").read_text()
    parts = re.split(r"^## `medp2p (\w+)[^`]*`", text, flags=re.M)
    return {parts[i]: parts[i + 1] for i in range(1, len(parts), 2)}


def test_every_command_has_a_section() -> None:
    assert set(_cli_sections()) == set(GROUP.commands)


@pytest.mark.parametrize("command", sorted(GROUP.commands))
def test_every_option_is_documented_and_every_documented_option_exists(command: str) -> None:
    section = _cli_sections()[command]
    documented = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*|-[a-z])\b", section))
    real = _options(command)
    assert documented <= real, f"docs/cli.md names options `medp2p {command}` lacks: {documented - real}"
    long_options = {o for o in real if o.startswith("--") and o != "--help" and not o.startswith("--no-")}
    missing = long_options - documented
    assert not missing, f"`medp2p {command}` options missing from docs/cli.md: {missing}"


def _commands_in(path: Path) -> list[tuple[int, list[str]]]:
    found = []
    in_code = False
    text = re.sub(r"\\\n\s*", " ", path.read_text())  # shell line continuations
    for n, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            in_code = not in_code
            continue
        candidates = [line] if in_code else re.findall(r"`((?:\.venv/bin/)?medp2p [^`]+)`", line)
        for text in candidates:
            text = text.strip()
            m = re.search(r"(?:^|\s)(?:\.venv/bin/)?medp2p(?:\.cli)? (\w+)(.*)$", text.split("#")[0])
            if m:
                found.append((n, [m.group(1), *shlex.split(m.group(2).replace("\\|", "|"))]))
    return found


@pytest.mark.parametrize("path", DOCS, ids=lambda p: p.name)
def test_commands_written_in_the_docs_exist(path: Path) -> None:
    for line, words in _commands_in(path):
        command = words[0]
        if command in ("COMMAND",):
            continue
        assert command in GROUP.commands, f"{path.name}:{line}: no command `medp2p {command}`"
        for word in words[1:]:
            if word.startswith("-") and not re.fullmatch(r"-?\d+(\.\d+)?", word):
                option = word.split("=")[0]
                assert option in _options(command), f"{path.name}:{line}: `medp2p {command}` has no option {option}"


def test_make_targets_in_the_readme_exist() -> None:
    makefile = (ROOT / "Makefile").read_text()
    for target in re.findall(r"^make (\w+)", (ROOT / "README.md").read_text(), flags=re.M):
        assert re.search(rf"^{target}:", makefile, flags=re.M), target
