"""Where each stage writes under `data.work_dir` (one directory per arrow of the flow)."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Layout:
    """Stage directories under a work dir.

    Attributes:
        root: `data.work_dir` from cartwise.yaml, resolved.
    """

    root: Path

    @property
    def ingest(self) -> Path:
        return self.root / "ingest"

    @property
    def feature_store(self) -> Path:
        return self.root / "feature_store"

    @property
    def dataset(self) -> Path:
        return self.root / "dataset"

    @property
    def model(self) -> Path:
        return self.root / "model"

    @property
    def index(self) -> Path:
        return self.root / "index"

    @property
    def evaluation(self) -> Path:
        return self.root / "evaluation"

    @property
    def bundles(self) -> Path:
        return self.root / "bundles"
