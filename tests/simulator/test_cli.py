"""`cartwise simulate` and `cartwise abtest` parse their options and call the simulator."""
import json

import pandas as pd

from cartwise.cli import main


def test_simulate_writes_the_canonical_files(tmp_path):
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("world: {shoppers: 300, items: 60, days: 30}\n")
    assert main(["simulate", "--config", str(cfg), "--seed", "3", "--out", str(tmp_path / "o"), "--days", "3"]) == 0
    summary = json.loads((tmp_path / "o" / "summary.json").read_text())
    assert summary["days"] == 3 and summary["seed"] == 3
    assert len(pd.read_parquet(tmp_path / "o" / "events.parquet")) == sum(summary["events"].values())


def test_abtest_options_override_the_file(tmp_path, capsys):
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("world: {shoppers: 600, items: 80, days: 5}\nabtest: {days: 10}\n")
    out = tmp_path / "ab"
    assert main(["abtest", "--config", str(cfg), "--seed", "1", "--out", str(out), "--days", "3",
                 "--control", "random", "--treatment", "oracle"]) == 0
    res = json.loads((out / "abtest.json").read_text())
    assert len(res["daily"]) == 3
    assert res["policies"]["treatment"]["label"] == "oracle"
    assert "revenue_per_session_lift" in capsys.readouterr().out


def test_a_bad_world_key_exits_2(tmp_path, capsys):
    cfg = tmp_path / "sim.yaml"
    cfg.write_text("world: {shopers: 10}\n")
    assert main(["simulate", "--config", str(cfg), "--out", str(tmp_path / "o")]) == 2
    assert "world.shopers: unknown key" in capsys.readouterr().err
