"""The README's examples are real: every yaml block parses as cartwise.yaml, every
`cartwise ...` command names a real subcommand and real options, and the two
set-up commands are the Makefile's."""
import re
import shlex
from pathlib import Path

import pytest
import yaml

from cartwise.cli import build_parser
from cartwise.config import parse_config

ROOT = Path(__file__).resolve().parents[1]
README = (ROOT / "README.md").read_text()


def _blocks(lang: str) -> list[str]:
    return re.findall(rf"```{lang}\n(.*?)```", README, flags=re.S)


def test_readme_has_config_examples_and_they_parse():
    blocks = _blocks("yaml")
    assert blocks, "README must show cartwise.yaml examples"
    for block in blocks:
        parse_config(yaml.safe_load(block), source="README.md", base_dir=ROOT)


def test_a_broken_example_would_fail():
    with pytest.raises(Exception):
        parse_config(yaml.safe_load("objective:\n  label: clicks_only\n"), source="README.md")


def _cartwise_commands() -> list[list[str]]:
    cmds = []
    for block in _blocks("(?:sh|bash|console)"):
        for line in block.splitlines():
            line = line.strip().removeprefix("$ ")
            if line.startswith(("cartwise ", ".venv/bin/cartwise ")):
                cmds.append(shlex.split(line.split(" #")[0])[1:])
    return cmds


def test_readme_commands_are_real():
    cmds = _cartwise_commands()
    assert len(cmds) >= 5
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices
    for argv in cmds:
        assert argv[0] in sub, argv
        known = {o for a in sub[argv[0]]._actions for o in a.option_strings}
        for tok in argv[1:]:
            if tok.startswith("--"):
                assert tok.split("=")[0] in known, (argv, tok)


def test_two_setup_commands_exist_in_makefile():
    assert "make demo" in README and "make test" in README
    mk = (ROOT / "Makefile").read_text()
    assert re.search(r"^demo:", mk, re.M) and re.search(r"^test:", mk, re.M)
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in ci
