"""`cartwise --help` and every subcommand's help describe the real options; errors exit cleanly."""
import subprocess
import sys
from pathlib import Path

import pytest

from cartwise.cli import build_parser, main

ROOT = Path(__file__).resolve().parents[1]
SUBCOMMANDS = {
    "ingest": [], "build-features": ["--repo"], "build-dataset": [], "build-ranking-dataset": [],
    "train-ranking": [], "validate": ["--candidate", "--adapter", "--out"],
    "rollback": [], "index": [], "train": [],
    "evaluate": ["--test-events", "--adapter", "--out"], "export": [], "serve": ["--host", "--port", "--bundle", "--watch", "--reload-token-env"],
    "recommend": ["--users", "--k", "--out", "--exclude-purchased", "--bundle"], "demo": [],
    "overrides": ["--bundle", "--k", "--users", "--exclude-purchased"],
    "simulate": ["--seed", "--out", "--days"],
    "abtest": ["--seed", "--out", "--days", "--sessions-per-day", "--refresh-days", "--control", "--treatment"],
}


def test_top_level_help_lists_every_subcommand():
    out = subprocess.run([sys.executable, "-m", "cartwise", "--help"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0
    for name in SUBCOMMANDS:
        assert name in out.stdout


@pytest.mark.parametrize("name, options", sorted(SUBCOMMANDS.items()))
def test_subcommand_help_lists_its_options(name, options, capsys):
    with pytest.raises(SystemExit) as e:
        main([name, "--help"])
    assert e.value.code == 0
    text = capsys.readouterr().out
    for opt in ["--config", *options]:
        assert opt in text


def test_parser_has_exactly_the_documented_subcommands():
    sub = next(a for a in build_parser()._actions if a.dest == "command")
    assert set(sub.choices) == set(SUBCOMMANDS)


def test_config_error_exits_2_with_the_key(tmp_path, capsys):
    bad = tmp_path / "c.yaml"
    bad.write_text("model:\n  epochs: -1\n")
    assert main(["train", "--config", str(bad)]) == 2
    err = capsys.readouterr().err
    assert "model.epochs" in err and str(bad) in err


def test_missing_stage_input_exits_2(tmp_path, capsys):
    cfg = tmp_path / "c.yaml"
    cfg.write_text("data:\n  work_dir: w\n")
    assert main(["export", "--config", str(cfg)]) == 2
    assert "validation" in capsys.readouterr().err
