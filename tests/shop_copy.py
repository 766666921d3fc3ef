"""A private copy of the session's trained synthetic shop, for tests that publish, crash or swap bundles.

The session fixture `trained_shop` (tests/conftest.py) is shared read-only by
many tests that expect its CURRENT bundle to be the one its export made; tests
that export again, roll back or kill exports work on a copy.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import yaml

from cartwise.config import CartwiseConfig, parse_config
from tests.conftest import SMALL


def copy_shop(cfg: CartwiseConfig, dest: Path, **overrides) -> tuple[CartwiseConfig, Path]:
    """Copy the shop's work dir under `dest` and write a cartwise.yaml for it.

    Args:
        cfg: the trained shop's config.
        dest: an empty temp directory.
        overrides: top-level sections merged into the small test config.

    Returns:
        (config of the copy, path of its cartwise.yaml).
    """
    shutil.copytree(cfg.work_dir, dest / "work", symlinks=True)
    raw = {**SMALL, **overrides}
    path = dest / "cartwise.yaml"
    path.write_text(yaml.safe_dump(raw))
    return parse_config(raw, base_dir=dest), path
