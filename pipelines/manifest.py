"""The `manifest.json` every stage directory carries (STYLE.md section 1).

Where it sits: each arrow of the data flow (ingest -> features -> dataset ->
model -> index -> bundle) is a directory with a manifest naming its inputs,
the config section it used and its outputs, so any step reruns alone and an
export can prove what it was built from.
"""
from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def write_json(path: Path, obj: Any) -> None:
    """Write JSON atomically (temp file then rename), sorted and indented."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    tmp.replace(path)


def write_manifest(stage_dir: Path, stage: str, inputs: dict[str, Any], config: Any, outputs: dict[str, Any]) -> Path:
    """Write `<stage_dir>/manifest.json`.

    Args:
        stage_dir: the stage's output directory.
        stage: stage name.
        inputs: what the stage read (paths, hashes, upstream manifests).
        config: the config section used (pydantic model or dict).
        outputs: what it wrote (files, counts).
    """
    if hasattr(config, "model_dump"):
        config = config.model_dump(mode="json")
    manifest = {
        "stage": stage,
        "created_at": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "inputs": inputs,
        "config": config,
        "outputs": outputs,
    }
    path = stage_dir / "manifest.json"
    write_json(path, manifest)
    return path


def read_json(path: Path) -> Any:
    if not path.is_file():
        raise FileNotFoundError(f"{path} not found: run the stage that writes it first")
    return json.loads(path.read_text())
