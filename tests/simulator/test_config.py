"""Simulation files: the documented default world is the built-in one; the headline file parses."""
from pathlib import Path

from simulator.config import SimulationFile, WorldConfig, load_simulation

ROOT = Path(__file__).resolve().parents[2]


def test_default_world_file_documents_the_defaults():
    assert load_simulation(ROOT / "simulator" / "default_world.yaml").world == WorldConfig()


def test_headline_file_compares_click_and_purchase_training():
    sim = load_simulation(ROOT / "simulator" / "headline.yaml")
    assert isinstance(sim, SimulationFile)
    ab = sim.abtest
    assert ab.days == 28 and ab.control.policy == ab.treatment.policy == "bundle"
    click, purchase = (p.train["objective"]["event_weights"] for p in (ab.control, ab.treatment))
    assert click["click"] == 1.0 and click["purchase"] == 0.0
    assert purchase["purchase"] == 1.0 and purchase["add_to_cart"] > 0
    # the two arms differ only in their objective
    assert {k for k in ab.control.train} == {k for k in ab.treatment.train} == {"objective"}
