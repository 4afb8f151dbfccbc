"""data_prep.multibehavior: nested behaviours, leave-one-out without leakage, seeded negatives."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from data_prep import multibehavior as mb
from data_prep.common import DataError


def _toy():
    # user, item, rating, ts. User 0 loves items 1 (t=5) and 2 (t=9) -> test item 2;
    # user 1 loves item 3 only (t=1) -> test item 3, no train target positive;
    # user 2 loves nothing -> no test pair; user 3: tie at t=7 between items 4 and 6 -> the larger id (6).
    rows = [(0, 0, 3, 1), (0, 1, 5, 5), (0, 2, 5, 9), (0, 3, 4, 2),
            (1, 3, 5, 1), (1, 4, 2, 3), (1, 5, 4, 4),
            (2, 0, 1, 1), (2, 1, 4, 2),
            (3, 4, 5, 7), (3, 6, 5, 7), (3, 7, 4, 8), (3, 2, 5, 3)]
    u, i, r, t = (np.array(c) for c in zip(*rows))
    return u, i, r, t, 4, 12


def _edges(out, k):
    return set(zip(out[f"train_users_{k}"].tolist(), out[f"train_items_{k}"].tolist()))


def test_protocol_hand_example():
    u, i, r, t, U, I = _toy()
    out = mb.build_protocol(u, i, r, t, U, I, num_negatives=4, seed=0, validation=False)
    assert len(out["valid_users"]) == 0 and out["valid_negatives"].shape == (0, 4)
    assert dict(zip(out["test_users"].tolist(), out["test_items"].tolist())) == {0: 2, 1: 3, 3: 6}
    rated, liked, loved = (_edges(out, k) for k in range(3))
    assert loved <= liked <= rated  # nested
    assert loved == {(0, 1), (3, 4), (3, 2)}
    assert liked == loved | {(0, 3), (1, 5), (2, 1), (3, 7)}
    for pair in [(0, 2), (1, 3), (3, 6)]:  # the held-out pair is in no train graph
        assert all(pair not in e for e in (rated, liked, loved))
    for row, (tu, ti) in enumerate(zip(out["test_users"], out["test_items"])):
        negs = out["negatives"][row].tolist()
        assert len(set(negs)) == 4 and ti not in negs
        assert not any((tu, n) in loved for n in negs)  # never a train target positive
    again = mb.build_protocol(u, i, r, t, U, I, num_negatives=4, seed=0, validation=False)
    np.testing.assert_array_equal(again["negatives"], out["negatives"])  # seeded
    other = mb.build_protocol(u, i, r, t, U, I, num_negatives=4, seed=1, validation=False)
    assert not np.array_equal(other["negatives"], out["negatives"])


def test_protocol_validation_pairs():
    u, i, r, t, U, I = _toy()
    noval = mb.build_protocol(u, i, r, t, U, I, num_negatives=4, seed=0, validation=False)
    out = mb.build_protocol(u, i, r, t, U, I, num_negatives=4, seed=0)  # validation is the default
    # Only user 3 has >= 3 loved items (2 @ t=3, 4 @ t=7, 6 @ t=7): test 6, validation 4 (second-latest).
    # User 0 (two loved) keeps its other loved item in train: no validation pair.
    assert out["valid_users"].tolist() == [3] and out["valid_items"].tolist() == [4]
    rated, liked, loved = (_edges(out, k) for k in range(3))
    assert loved == {(0, 1), (3, 2)}
    assert all((3, 4) not in e for e in (rated, liked, loved))  # validation pair in no train graph
    assert all((3, 6) not in e for e in (rated, liked, loved))
    # Test pairs and test negatives are those of the protocol without validation.
    for key in ("test_users", "test_items", "negatives"):
        np.testing.assert_array_equal(out[key], noval[key])
    vneg = out["valid_negatives"][0].tolist()
    assert len(set(vneg)) == 4 and not {4, 6, 2} & set(vneg)  # never valid item, test item, train positive
    assert 4 not in out["negatives"][out["test_users"].tolist().index(3)]  # nor the validation item in test
    two = mb.build_protocol(u, i, r, t, U, I, num_negatives=4, valid_min_target=2)
    assert dict(zip(two["valid_users"].tolist(), two["valid_items"].tolist())) == {0: 1, 3: 4}
    assert not _edges(two, 2) & {(0, 1), (3, 4)}
    with pytest.raises(DataError, match="valid_min_target=1"):
        mb.build_protocol(u, i, r, t, U, I, num_negatives=4, valid_min_target=1)


def test_protocol_flags():
    u, i, r, t, U, I = _toy()
    keep = mb.build_protocol(u, i, r, t, U, I, num_negatives=4, keep_aux_for_test=True, validation=False)
    assert (0, 2) in _edges(keep, 0) and (0, 2) in _edges(keep, 1) and (0, 2) not in _edges(keep, 2)
    anyx = mb.build_protocol(u, i, r, t, U, I, num_negatives=4, negatives_exclude="any")
    rated = _edges(anyx, 0)
    for row, tu in enumerate(anyx["test_users"]):
        assert not any((tu, n) in rated for n in anyx["negatives"][row])
    for row, vu in enumerate(anyx["valid_users"]):
        assert not any((vu, n) in rated for n in anyx["valid_negatives"][row])
    with pytest.raises(DataError, match="strictly increasing"):
        mb.build_protocol(u, i, r, t, U, I, thresholds=(4, 4, 5))
    with pytest.raises(DataError, match="candidate negatives"):
        mb.build_protocol(u, i, r, t, U, I, num_negatives=11)


@pytest.mark.slow  # real MovieLens-100k
def test_ml100k_prepare_and_load(tmp_path):
    out = str(tmp_path / "mb")
    info = mb.prepare(out)
    assert info["num_users"] == 943 and info["num_items"] == 1682
    # 21,201 five-star ratings, every user with one loses one to the test set; the 859 users
    # with at least three lose a second one to the validation set.
    assert info["num_test_users"] == 928 and info["num_valid_users"] == 859
    assert info["train_edges"]["loved"] == 21201 - 928 - 859
    assert info["train_edges"]["rated"] == 100000 - 928 - 859
    assert sum(info["test_users_per_domain"]) == 928 and info["domain_names"] == ["<25", "25-34", "35+"]
    d = mb.load(out)
    keys = [set((d.train_users[k] * d.num_items + d.train_items[k]).tolist()) for k in range(3)]
    assert keys[2] <= keys[1] <= keys[0]
    test_keys = set((d.test_users * d.num_items + d.test_items).tolist())
    assert all(not (test_keys & k) for k in keys)  # the test item is absent from all train graphs
    valid_keys = set((d.valid_users * d.num_items + d.valid_items).tolist())
    assert len(valid_keys) == 859 and all(not (valid_keys & k) for k in keys)  # nor the validation item
    assert not valid_keys & test_keys and set(d.valid_users.tolist()) <= set(d.test_users.tolist())
    neg_keys = (d.test_users[:, None] * d.num_items + d.negatives)
    assert not (set(neg_keys.reshape(-1).tolist()) & (keys[2] | test_keys | valid_keys))
    assert d.negatives.shape == (928, 99) and all(len(set(r)) == 99 for r in d.negatives.tolist())
    # Validation negatives: never the validation item, the user's test item or a train target positive.
    test_of = dict(zip(d.test_users.tolist(), d.test_items.tolist()))
    vneg = d.valid_users[:, None] * d.num_items + d.valid_negatives
    vtest = d.valid_users * d.num_items + np.array([test_of[u] for u in d.valid_users.tolist()])
    assert not (set(vneg.reshape(-1).tolist()) & (keys[2] | valid_keys | set(vtest.tolist())))
    assert d.valid_negatives.shape == (859, 99) and all(len(set(r)) == 99 for r in d.valid_negatives.tolist())
    mtime = os.path.getmtime(os.path.join(out, mb.ARRAYS_FILE))
    assert mb.prepare(out)["fingerprint"] == info["fingerprint"]  # reused, not rewritten
    assert os.path.getmtime(os.path.join(out, mb.ARRAYS_FILE)) == mtime
    assert not [p for p in os.listdir(tmp_path) if ".tmp-" in p]  # atomic: no temp folder left


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="multibehavior.json: missing"):
        mb.load(str(tmp_path))
    (tmp_path / mb.META_FILE).write_text("{not json")
    with pytest.raises(DataError, match="not valid JSON"):
        mb.load(str(tmp_path))
    (tmp_path / mb.META_FILE).write_text(json.dumps({"format": mb.FORMAT_VERSION, "behaviors": ["a"],
                                                     "num_users": 2, "num_items": 2, "domain_names": ["x"]}))
    np.savez(tmp_path / mb.ARRAYS_FILE, test_users=np.array([0]), test_items=np.array([5]),
             valid_users=np.zeros(0, int), valid_items=np.zeros(0, int), valid_negatives=np.zeros((0, 1), int),
             negatives=np.array([[1]]), user_domain=np.array([0, 0]), train_users_0=np.array([0]),
             train_items_0=np.array([1]))
    with pytest.raises(DataError, match=r"test_items has ids outside \[0, 2\)"):
        mb.load(str(tmp_path))
    with pytest.raises(DataError, match="differ in length"):
        mb.prepare(str(tmp_path / "x"), behaviors=("a", "b"), thresholds=(1,))
