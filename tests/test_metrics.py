"""Exact metrics against hand-computed values."""

import math

import numpy as np
import pytest

from mdr_tf import metrics as M


def test_auc_hand_computed_with_ties():
    # Positives: 0.8, 0.4, 0.4 ; negatives: 0.4, 0.1.
    # Pairs (pos > neg): 0.8>0.4 ✓, 0.8>0.1 ✓, 0.4=0.4 ½, 0.4>0.1 ✓, 0.4=0.4 ½, 0.4>0.1 ✓ → 5/6.
    y = np.array([1, 0, 1, 1, 0])
    p = np.array([0.8, 0.4, 0.4, 0.4, 0.1])
    assert M.auc(y, p) == pytest.approx(5 / 6, abs=1e-12)


def test_auc_perfect_inverse_and_single_class():
    y = np.array([0, 0, 1, 1])
    assert M.auc(y, np.array([0.1, 0.2, 0.3, 0.4])) == 1.0
    assert M.auc(y, np.array([0.4, 0.3, 0.2, 0.1])) == 0.0
    assert math.isnan(M.auc(np.ones(3), np.array([0.1, 0.2, 0.3])))


def test_auc_matches_pairwise_definition_on_random_data():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 300)
    p = np.round(rng.random(300), 2)  # many ties
    pos, neg = p[y == 1], p[y == 0]
    brute = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (len(pos) * len(neg))
    assert M.auc(y, p) == pytest.approx(brute, abs=1e-12)


def test_logloss_hand_computed_and_clipping():
    y = np.array([1, 0])
    p = np.array([0.9, 0.2])
    assert M.logloss(y, p) == pytest.approx(-(math.log(0.9) + math.log(0.8)) / 2, abs=1e-12)
    assert M.logloss(np.array([1]), np.array([0.0])) == pytest.approx(-math.log(1e-15), rel=1e-9)


def test_per_domain_wauc_mean_auc():
    y = np.array([1, 0, 1, 0, 1, 0, 0, 1])
    p = np.array([0.9, 0.1, 0.2, 0.8, 0.7, 0.6, 0.5, 0.4])
    d = np.array([0, 0, 0, 0, 1, 1, 1, 1])
    r = M.evaluate(y, p, d, 2)
    # d0: pos {0.9, 0.2} neg {0.1, 0.8}: pairs 0.9>0.1, 0.9>0.8, 0.2>0.1 → 3/4.
    # d1: pos {0.7, 0.4} neg {0.6, 0.5}: 0.7>0.6, 0.7>0.5 → 2/4.
    assert r["auc_d0"] == pytest.approx(0.75)
    assert r["auc_d1"] == pytest.approx(0.5)
    assert r["mean_auc"] == pytest.approx(0.625)
    assert r["wauc"] == pytest.approx(0.625)  # equal sizes
    assert r["n_d0"] == 4 and r["n_d1"] == 4
    d2 = np.array([0, 0, 0, 0, 0, 0, 1, 1])  # d0 has 6 rows, d1 2 rows
    r2 = M.evaluate(y, p, d2, 2)
    assert r2["wauc"] == pytest.approx((6 * r2["auc_d0"] + 2 * r2["auc_d1"]) / 8)


def test_relaimpr():
    assert M.relaimpr(0.66, 0.6) == pytest.approx(60.0)
    assert M.mean_std([0.5, 0.7]) == pytest.approx((0.6, math.sqrt(0.02)))
