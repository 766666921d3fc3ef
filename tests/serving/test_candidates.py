"""`Candidates`: every helper returns a read-only list and leaves its input unchanged, and what a caller hands
in is checked."""
from __future__ import annotations

import numpy as np
import pytest

from serving.candidates import Candidates


def _arrays(c: Candidates) -> list[np.ndarray]:
    return [c.ids, c.scores, c.sources, c.categories, *c.columns.values()]


def _base() -> Candidates:
    return Candidates.from_lists(["a", "b", "c", "d"], [0.4, 0.9, 0.1, 0.9], ["x", "y", "x", "y"],
                                 ["k1", None, "k2", "k1"], {"row": np.array([3, 1, 2, 0])})


def test_every_helper_returns_read_only_arrays_and_leaves_its_input_unchanged():
    base = _base()
    before = [a.copy() for a in _arrays(base)]
    derived = {
        "take": base.take([2, 0]), "take_mask": base.take(np.array([True, False, True, True])),
        "head": base.head(2), "head_0": base.head(0), "ranked": base.ranked(), "top": base.top(3),
        "with_scores": base.with_scores([1.0, 2.0, 3.0, 4.0]), "with_columns": base.with_columns(m=np.ones(4)),
        "append": base.append(base.take([1])),
    }
    for name, c in derived.items():
        for a in _arrays(c):
            assert not a.flags.writeable, name
            with pytest.raises(ValueError):
                a[...] = a  # read-only
    for a, b in zip(_arrays(base), before):
        assert np.array_equal(a, b) and a.dtype == b.dtype


def test_helpers_answer_what_they_say():
    base = _base()
    assert base.take([2, 0]).ids.tolist() == ["c", "a"] and base.take([2, 0]).column("row").tolist() == [2, 3]
    assert base.head(2).ids.tolist() == ["a", "b"] and base.head(9) is base and len(base.head(-1)) == 0
    ranked = base.ranked()
    assert ranked.ids.tolist() == ["b", "d", "a", "c"]  # ties keep list order
    assert ranked.column("row").tolist() == [1, 0, 3, 2] and ranked.categories.tolist() == [None, "k1", "k1", "k2"]
    both = base.append(base.take([1]))
    assert both.ids.tolist() == ["a", "b", "c", "d", "b"] and both.column("row").tolist() == [3, 1, 2, 0, 1]
    assert both.ids.dtype == object and both.scores.dtype == np.float64


def test_the_callers_arrays_stay_writable_and_the_candidates_read_only_views_of_them():
    scores = np.array([1.0, 2.0, 3.0, 4.0])
    col = np.zeros(4)
    c = _base().with_scores(scores).with_columns(m=col)
    assert scores.flags.writeable and col.flags.writeable  # the caller's own arrays: still theirs to change
    assert not c.scores.flags.writeable and not c.column("m").flags.writeable
    # views, not copies (no copy per stage): a caller that writes into its array after handing it over
    # changes the candidates too, so the stages never do
    assert np.shares_memory(c.scores, scores) and np.shares_memory(c.column("m"), col)


def test_what_a_caller_hands_in_is_checked():
    base = _base()
    with pytest.raises(ValueError, match="must all have length 4"):
        base.with_scores([1.0, 2.0])
    with pytest.raises(ValueError, match="column 'm' has 3 rows, expected 4"):
        base.with_columns(m=np.ones(3))
    with pytest.raises(ValueError, match="clashes with a core array"):
        base.with_columns(score=np.ones(4))
    with pytest.raises(ValueError, match="must all have length"):
        Candidates(np.array(["a"], dtype=object), np.zeros(2), np.array(["x"], dtype=object),
                   np.array([None], dtype=object))
    with pytest.raises(ValueError, match="cannot append"):
        base.append(Candidates.from_lists(["z"], [1.0]))
