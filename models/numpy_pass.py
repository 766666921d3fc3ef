"""A saved tower's forward pass in NumPy, used only where it gives the SavedModel's own outputs.

Where it sits: serving calls two saved towers per request on a few rows (the
query tower on one shopper, the ranker on a few hundred candidates), where
TensorFlow's per-call dispatch costs more than the arithmetic.
`models.ranking.NumpyRankingTower` and `models.towers.NumpyQueryTower` read a
saved tower's variables and compute its layers in NumPy; what a SavedModel
does not store (activations, how the layers are wired) they assume as the
Keras tower builds it. :func:`checked` is the one place that decides whether
such a pass may stand in for the SavedModel: only when it reproduces the
SavedModel's outputs on probe inputs like those it will see.
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np

#: a probe whose outputs reach this size says nothing (a saturated model or out-of-range inputs)
PROBE_MAX_OUTPUT = 1000.0
#: the largest difference from the SavedModel's outputs a NumPy pass may show on the probe (relative and absolute)
TOLERANCE = 1e-4


def checked(reference: Callable[[Any], np.ndarray], build: Callable[[], Callable[[Any], np.ndarray]],
            probe: Any | None, unavailable: str | None = None) -> Callable[[Any], np.ndarray]:
    """`build()`'s NumPy pass when it gives `reference`'s outputs on `probe`, else `reference`.

    The returned function has `engine` ("numpy" / "tensorflow") and `engine_reason` (why TensorFlow was kept;
    None with NumPy).

    Args:
        reference: the SavedModel's own function (inputs -> float array).
        build: makes the NumPy pass from the SavedModel's variables; any exception it or the pass raises (a
            tower without the expected parts, a lookup table of another kind) keeps `reference`: the NumPy
            pass is an optimisation, never a reason to refuse a model TensorFlow serves.
        probe: inputs like those that will be passed (serving passes catalog items' feature rows to the
            ranker, the golden users' inputs and session contexts to the query tower); None: nothing to check
            the NumPy pass on, `reference` is kept. Inputs far outside the training range make any comparison
            pass (standardised near-constant features blow up), hence the bound on the outputs' size.
        unavailable: why no NumPy pass can be made (e.g. no SavedModel behind `reference`): `reference` is
            kept with this reason, nothing is called.
    """
    fn, reason = reference, None
    if unavailable is not None:
        reason = unavailable
    elif probe is None:
        reason = "no probe inputs to check the NumPy pass on"
    else:
        expected = np.asarray(reference(probe))
        try:
            candidate = build()
            got = np.asarray(candidate(probe))
            worst = float(np.max(np.abs(expected))) if expected.size else float("nan")
            if not np.isfinite(worst) or worst >= PROBE_MAX_OUTPUT:
                reason = f"probe outputs up to {worst:.3g}: not a probe the comparison can judge"
            elif got.shape != expected.shape:
                reason = f"NumPy outputs have shape {got.shape}, the SavedModel's {expected.shape}"
            elif not np.allclose(got, expected, rtol=TOLERANCE, atol=TOLERANCE):
                reason = (f"NumPy outputs differ from the SavedModel's by up to "
                          f"{float(np.max(np.abs(got - expected))):.3g}")
            else:
                fn = candidate
        except Exception as e:  # noqa: BLE001  (see `build`)
            reason = f"{type(e).__name__}: {e}"

    def call(inputs: Any) -> np.ndarray:
        return fn(inputs)

    call.engine = "numpy" if reason is None else "tensorflow"  # type: ignore[attr-defined]
    call.engine_reason = reason  # type: ignore[attr-defined]
    return call
