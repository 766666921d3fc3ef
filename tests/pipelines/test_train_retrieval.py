"""Training the two-tower model on a tiny synthetic set with a known answer.

The set: 4 categories of 10 items; 40 users, user u prefers category u % 4
and buys from it 9 times in 10. An item's description embedding is its
category's direction plus small noise, and half of the purchases happen in
a session whose current category is the item's. So the only structure is
the category: a trained candidate tower must put items of one category
together, including items it never saw (from category + text alone), and
a trained query tower must send an anonymous session in category c to the
items of c.
"""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from cartwise.bundle import load_tower
from cartwise.config import parse_config
from feature_repo import names as n
from pipelines import train_retrieval as tr

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
CATS, PER_CAT, USERS, TEXT = 4, 10, 40, 8
MODEL = {"embedding_size": 8, "epochs": 12, "batch_size": 128, "learning_rate": 0.2, "seed": 5,
         "item_id_dropout": 0.3, "user_id_dropout": 0.3}


def directions() -> np.ndarray:
    return np.eye(TEXT, dtype=np.float32)[:CATS] * 2.0


def item_table(ids, cats, rng) -> pd.DataFrame:
    """Candidate-tower inputs of items `ids` in categories `cats` (text = category direction + noise)."""
    text = [directions()[c] + rng.normal(0, 0.05, TEXT).astype(np.float32) for c in cats]
    return pd.DataFrame({n.ITEM_ID: ids, n.CATEGORY: [f"cat{c}" for c in cats],
                         n.PRICE_BAND: [f"p{i % 5}" for i in range(len(ids))],
                         n.PRICE: [float(1 + i % 7) for i in range(len(ids))], n.TEXT_EMBEDDING: text,
                         **{f: 0.0 for f in n.ITEM_FEATURES}})


def shop(seed: int = 0, rows_per_user: int = 40) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(training set in the columns of build_dataset, the item table)."""
    rng = np.random.default_rng(seed)
    cats = [i // PER_CAT for i in range(CATS * PER_CAT)]
    items = item_table([f"I{i:03d}" for i in range(len(cats))], cats, rng)
    rows = []
    for u in range(USERS):
        fav = u % CATS
        for j in range(rows_per_user):
            c = fav if rng.random() < 0.9 else int(rng.integers(CATS))
            i = c * PER_CAT + int(rng.integers(PER_CAT))
            rows.append({n.USER_ID: f"U{u:03d}", "item_row": i,
                         n.SESSION_CATEGORY: f"cat{c}" if rng.random() < 0.5 else "unknown",
                         n.SESSION_DEVICE: "mobile" if j % 2 else "unknown",
                         n.EVENT_TYPE: n.PURCHASE, n.WEIGHT: float(1 + (j % 3 == 0)), n.LABEL: 1})
    train = pd.DataFrame(rows)
    train = pd.concat([train.drop(columns="item_row"),
                       items.iloc[train["item_row"]].reset_index(drop=True)], axis=1)
    for f in n.USER_FEATURES:
        train[f] = train.groupby(n.USER_ID).cumcount().astype(float)
    return train, items


def config(**model):
    return parse_config({"model": {**MODEL, **model}})


def cosine(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a = a / np.linalg.norm(a, axis=1, keepdims=True)
    b = b / np.linalg.norm(b, axis=1, keepdims=True)
    return a @ b.T


@pytest.fixture(scope="module")
def trained():
    train, items = shop()
    model, history = tr.fit(train, config(), log=lambda m: None)
    return model, history, train, items


def embed_items(model, frame: pd.DataFrame) -> np.ndarray:
    return model.candidate_tower(tr.tensors(frame, tr.CANDIDATE_STRINGS, tr.CANDIDATE_FLOATS)).numpy()


def embed_users(model, frame: pd.DataFrame) -> np.ndarray:
    return model.query_tower(tr.tensors(frame, tr.QUERY_STRINGS, tr.QUERY_FLOATS)).numpy()


def anonymous(session_categories) -> pd.DataFrame:
    k = len(session_categories)
    return pd.DataFrame({n.USER_ID: ["never-seen"] * k, n.SESSION_CATEGORY: session_categories,
                         n.SESSION_DEVICE: ["unknown"] * k, **{f: [0.0] * k for f in tr.QUERY_FLOATS}})


def test_training_lowers_the_loss(trained):
    _, history, _, _ = trained
    assert history[-1]["loss"] < 0.9 * history[0]["loss"]  # in-batch duplicates keep the floor high
    assert all(h["examples_per_s"] > 0 for h in history)


def test_cold_item_is_closest_to_its_category_peers(trained):
    model, _, _, items = trained
    warm = embed_items(model, items)
    cats = np.repeat(np.arange(CATS), PER_CAT)
    cold = item_table([f"NEW{c}" for c in range(CATS)], list(range(CATS)), np.random.default_rng(9))
    e = embed_items(model, cold)
    sim = cosine(e, warm)  # [cold item, warm item]
    share = []
    for c in range(CATS):
        by_category = [sim[c, cats == k].mean() for k in range(CATS)]
        assert np.argmax(by_category) == c, (c, by_category)
        share.append(np.mean(cats[np.argsort(-sim[c])[:PER_CAT]] == c))  # among its 10 nearest warm items
    assert min(share) >= 0.6 and np.mean(share) >= 0.85, share  # chance is 0.25
    # two cold items that differ only in category / only in text get different embeddings
    moved = cold.iloc[[0, 0]].reset_index(drop=True)
    moved.loc[1, n.CATEGORY] = "cat1"
    assert not np.allclose(*embed_items(model, moved))
    moved = cold.iloc[[0, 0]].reset_index(drop=True)
    moved.at[1, n.TEXT_EMBEDDING] = directions()[2]
    assert not np.allclose(*embed_items(model, moved))


def test_unknown_user_is_sent_to_the_session_category(trained):
    model, _, _, items = trained
    q = embed_users(model, anonymous([f"cat{c}" for c in range(CATS)]))
    assert not np.allclose(q[0], q[1])
    scores = q @ embed_items(model, items).T  # [session category, item]
    cats = np.repeat(np.arange(CATS), PER_CAT)
    for c in range(CATS):
        top = np.argsort(-scores[c])[:PER_CAT]
        assert np.mean(cats[top] == c) >= 0.7, (c, cats[top])


def test_known_user_ranks_their_category_first(trained):
    model, _, train, items = trained
    frame = train.drop_duplicates(n.USER_ID).copy()
    frame[n.SESSION_CATEGORY] = "unknown"
    scores = embed_users(model, frame) @ embed_items(model, items).T
    fav = frame[n.USER_ID].str[1:].astype(int).to_numpy() % CATS
    top = np.argsort(-scores, axis=1)[:, :5] // PER_CAT
    assert np.mean(top == fav[:, None]) > 0.8  # chance is 0.25


def test_same_seed_same_weights_other_seed_other_weights():
    train, _ = shop(rows_per_user=10)
    a, _ = tr.fit(train, config(epochs=2), log=lambda m: None)
    b, _ = tr.fit(train, config(epochs=2), log=lambda m: None)
    c, _ = tr.fit(train, config(epochs=2, seed=6), log=lambda m: None)
    wa, wb, wc = a.get_weights(), b.get_weights(), c.get_weights()
    assert all(np.array_equal(x, y) for x, y in zip(wa, wb))
    assert not all(np.array_equal(x, y) for x, y in zip(wa, wc))
    np.testing.assert_array_equal(embed_items(a, train), embed_items(b, train))


def test_logq_flag_changes_training():
    train, _ = shop(rows_per_user=10)
    train = train[train[n.ITEM_ID] != "I015"]  # skew: one item 3x as frequent as the rest
    train = pd.concat([train, train[train[n.ITEM_ID] == "I000"], train[train[n.ITEM_ID] == "I000"]])
    on, h_on = tr.fit(train, config(epochs=2), log=lambda m: None)
    off, h_off = tr.fit(train, config(epochs=2, logq_correction=False), log=lambda m: None)
    assert on.sampling_probability == tr.SAMPLING_PROBABILITY and off.sampling_probability is None
    assert h_on[0]["loss"] != pytest.approx(h_off[0]["loss"], rel=1e-4)
    p = tr.sampling_probability(train[n.ITEM_ID])
    assert pd.Series(p).groupby(train[n.ITEM_ID].to_numpy()).first().sum() == pytest.approx(1.0)
    assert p[(train[n.ITEM_ID] == "I000").to_numpy()][0] == pytest.approx(
        (train[n.ITEM_ID] == "I000").mean())


def test_click_label_trains_on_clicks_and_fails_clearly_without_them():
    train, _ = shop(rows_per_user=4)
    cfg = parse_config({"objective": {"label": "click"}})
    with pytest.raises(ValueError, match="no click events.*Online Retail has purchases only"):
        tr.training_examples(train, cfg.objective)
    clicks = train.copy()
    clicks[n.EVENT_TYPE] = np.where(np.arange(len(train)) % 2, n.CLICK, n.PURCHASE)
    clicks[n.WEIGHT] = 0.05 * 4.0  # click weight x recency multiplier
    ex = tr.training_examples(clicks, cfg.objective)
    assert (ex[n.EVENT_TYPE] == n.CLICK).all() and len(ex) == len(train) // 2
    assert np.allclose(ex[n.WEIGHT], 4.0)  # the event-type weight is divided out
    purchase = tr.training_examples(clicks.assign(**{n.LABEL: np.arange(len(train)) % 3 > 0}),
                                    parse_config({}).objective)
    assert len(purchase) == int((np.arange(len(train)) % 3 > 0).sum())  # sampled negatives dropped


def test_saved_towers_give_identical_embeddings_in_a_fresh_process(trained, tmp_path):
    model, _, train, items = trained
    tr.save_towers(model, tmp_path)
    users = pd.concat([train.drop_duplicates(n.USER_ID).head(5), anonymous(["cat1", "unknown"])], ignore_index=True)
    users = users[[*tr.QUERY_STRINGS, *tr.QUERY_FLOATS]]  # what user_features_as_of gives
    cold = item_table(["NEW"], [2], np.random.default_rng(1))
    cold.at[0, n.TEXT_EMBEDDING] = np.zeros(0, np.float32)  # an item without text: zero-padded
    frame = pd.concat([items, cold], ignore_index=True)
    q_in = tr.tensors(users, tr.QUERY_STRINGS, tr.QUERY_FLOATS)
    c_in = tr.tensors(frame, tr.CANDIDATE_STRINGS, tr.CANDIDATE_FLOATS)
    assert c_in[n.TEXT_EMBEDDING].shape == (len(frame), TEXT) and n.TEXT_EMBEDDING not in q_in
    np.savez(tmp_path / "inputs.npz", **{f"q__{k}": v.astype(str) if v.dtype == object else v for k, v in q_in.items()},
             **{f"c__{k}": v.astype(str) if v.dtype == object else v for k, v in c_in.items()})
    script = f"""
import os, sys
os.environ["TF_USE_LEGACY_KERAS"] = "1"
sys.path.insert(0, {str(ROOT)!r})
import numpy as np
from cartwise.bundle import load_tower
d = np.load({str(tmp_path / 'inputs.npz')!r})
q = {{k[3:]: d[k] for k in d.files if k.startswith("q__")}}
c = {{k[3:]: d[k] for k in d.files if k.startswith("c__")}}
np.save({str(tmp_path / 'q.npy')!r}, load_tower(__import__("pathlib").Path({str(tmp_path / 'query_tower')!r}))(q))
np.save({str(tmp_path / 'c.npy')!r}, load_tower(__import__("pathlib").Path({str(tmp_path / 'candidate_tower')!r}))(c))
"""
    subprocess.run([sys.executable, "-c", script], check=True, cwd=ROOT, capture_output=True, timeout=300)
    np.testing.assert_array_equal(np.load(tmp_path / "q.npy"), model.query_tower(q_in).numpy())
    np.testing.assert_array_equal(np.load(tmp_path / "c.npy"), model.candidate_tower(c_in).numpy())
    # and in this process, through the loader evaluation and export use
    np.testing.assert_array_equal(load_tower(tmp_path / "candidate_tower")(c_in), model.candidate_tower(c_in).numpy())
    assert not list(tmp_path.rglob("*.pkl")) and not list(tmp_path.rglob("*.keras"))


def test_input_contract_names_every_tower_input(trained):
    model, _, _, _ = trained
    contract = json.loads(json.dumps(tr.input_contract(model)))
    q, c = contract["query_inputs"], contract["candidate_inputs"]
    assert q == {"strings": [n.USER_ID, n.SESSION_CATEGORY, n.SESSION_DEVICE],
                 "floats": list(n.USER_FEATURES)}
    assert c["strings"] == [n.ITEM_ID, n.CATEGORY, n.PRICE_BAND] and c["floats"] == [n.PRICE]
    assert c["vectors"] == [n.TEXT_EMBEDDING] and c["vector_sizes"] == {n.TEXT_EMBEDDING: TEXT}


def test_a_training_set_without_the_new_features_is_refused():
    train, _ = shop(rows_per_user=2)
    with pytest.raises(ValueError, match=r"item_text_embedding.*cartwise build-dataset"):
        tr.fit(train.drop(columns=[n.TEXT_EMBEDDING]), config(), log=lambda m: None)
