"""``FeatureEmbedding``: fused-table offsets, OOV ids read row 0, the context views (mdr_tf.layers.embedding)."""

from __future__ import annotations

import json

import numpy as np
import pytest
import tensorflow as tf

from mdr_tf.layers.embedding import FeatureEmbedding

D = 2  # embedding width
SCHEMA = {
    "features": [
        {"name": "user_id", "kind": "categorical", "vocab_size": 4, "group": "user", "is_id": True},
        {"name": "item_id", "kind": "categorical", "vocab_size": 3, "group": "item", "is_id": True},
        {"name": "ctx", "kind": "categorical", "vocab_size": 2, "group": "domain"},
        {"name": "price", "kind": "dense", "group": "item"},
        {"name": "hour", "kind": "dense", "group": "domain"},
    ],
    "num_domains": 3,
}
# Fused rows: user_id 0-3, item_id 4-6, ctx 7-8, domain_id 9-11 (12 rows).
OFFSETS = {"user_id": 0, "item_id": 4, "ctx": 7, "domain_id": 9}


def _layer(embed_domain: bool = True) -> FeatureEmbedding:
    emb = FeatureEmbedding(SCHEMA, embedding_dim=D, embed_domain=embed_domain)
    emb.build(None)
    # Row r holds [r, 100 + r], so every gathered vector names its row.
    emb.table.assign(np.stack([np.arange(12), 100 + np.arange(12)], axis=1).astype(np.float32))
    return emb


def _row(r: int) -> list[float]:
    return [float(r), 100.0 + r]


def _inputs(**over) -> dict[str, np.ndarray]:
    x = {"user_id": np.array([1, 3]), "item_id": np.array([2, 0]), "ctx": np.array([1, 0]),
         "price": np.array([0.5, 1.5], np.float32), "hour": np.array([7.0, 8.0], np.float32),
         "domain_id": np.array([2, 0])}
    x.update(over)
    return {k: np.asarray(v) for k, v in x.items()}


def test_fused_table_offsets_and_views():
    emb = _layer()
    assert emb.offsets == [0, 4, 7, 9] and emb.total_rows == 12 and tuple(emb.table.shape) == (12, D)
    for name, start in OFFSETS.items():
        size = {"user_id": 4, "item_id": 3, "ctx": 2, "domain_id": 3}[name]
        assert emb.table_rows(name) == (start, start + size)
    ctx = emb(_inputs())
    # Sample 0: user 1 → row 1, item 2 → row 6, ctx 1 → row 8, domain 2 → row 11.
    want_fields = np.array([[_row(1), _row(6), _row(8), _row(11)], [_row(3), _row(4), _row(7), _row(9)]])
    np.testing.assert_array_equal(np.asarray(ctx["fields"]), want_fields)
    np.testing.assert_array_equal(np.asarray(ctx["domain"]), [2, 0])
    np.testing.assert_array_equal(np.asarray(ctx["domain_emb"]), [_row(11), _row(9)])
    np.testing.assert_array_equal(np.asarray(ctx["dense"]), [[0.5, 7.0], [1.5, 8.0]])
    want_all = np.concatenate([want_fields.reshape(2, -1), [[0.5, 7.0], [1.5, 8.0]]], axis=1)
    np.testing.assert_array_equal(np.asarray(ctx["all"]), want_all)
    # Domain side: domain embedding, group-"domain" fields (ctx), group-"domain" dense (hour).
    np.testing.assert_array_equal(np.asarray(ctx["domain_side"]),
                                  [_row(11) + _row(8) + [7.0], _row(9) + _row(7) + [8.0]])
    np.testing.assert_array_equal(np.asarray(ctx["agnostic"]), [_row(1) + _row(6) + [0.5], _row(3) + _row(4) + [1.5]])
    np.testing.assert_array_equal(np.asarray(ctx["ids"]), [_row(1) + _row(6), _row(3) + _row(4)])
    dims = emb.output_dims
    for key in ("all", "domain_side", "agnostic", "ids", "dense"):
        assert dims[key] == np.asarray(ctx[key]).shape[1], key
    assert dims["fields"] == np.asarray(ctx["fields"]).shape[1] == 4


def test_without_the_domain_field():
    emb = _layer(embed_domain=False)
    ctx = emb(_inputs())
    assert np.asarray(ctx["fields"]).shape == (2, 3, D)
    np.testing.assert_array_equal(np.asarray(ctx["fields"])[0], [_row(1), _row(6), _row(8)])
    np.testing.assert_array_equal(np.asarray(ctx["domain_emb"])[0], _row(11))  # still computed
    dims = emb.output_dims
    assert dims["all"] == 3 * D + 2 == np.asarray(ctx["all"]).shape[1]
    assert dims["agnostic"] == np.asarray(ctx["agnostic"]).shape[1]


def test_out_of_vocabulary_ids_read_their_features_row_0():
    emb = _layer()
    # user 4 (= vocab), item -1, ctx 2**32 + 1 (not read as 1 after an int32 cast).
    ctx = emb(_inputs(user_id=np.array([4, 1]), item_id=np.array([-1, 2]), ctx=np.array([2**32 + 1, 1])))
    fields = np.asarray(ctx["fields"])
    np.testing.assert_array_equal(fields[0, :3], [_row(0), _row(4), _row(7)])  # each feature's own row 0
    np.testing.assert_array_equal(fields[1, :3], [_row(1), _row(6), _row(8)])  # in-range ids unchanged
    # lookup (behaviour sequences) clips the same way, within the feature's rows.
    got = np.asarray(emb.lookup("item_id", np.array([[0, 2, 3, -5]])))
    np.testing.assert_array_equal(got[0], [_row(4), _row(6), _row(4), _row(4)])


def test_out_of_range_domain_and_non_finite_dense_are_rejected():
    emb = _layer()
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"domain_id must be in \[0, 3\)"):
        emb(_inputs(domain_id=np.array([3, 0])))
    with pytest.raises(tf.errors.InvalidArgumentError, match="dense feature 'price' must be finite"):
        emb(_inputs(price=np.array([np.nan, 1.0], np.float32)))


def test_config_round_trip_and_initializer():
    emb = FeatureEmbedding(SCHEMA, embedding_dim=3, embed_domain=False,
                           embeddings_initializer={"class_name": "Constant", "config": {"value": 0.25}})
    clone = FeatureEmbedding.from_config(json.loads(json.dumps(emb.get_config())))
    clone.build(None)
    assert clone.embedding_dim == 3 and not clone.embed_domain
    np.testing.assert_array_equal(np.asarray(clone.table), np.full((12, 3), 0.25, np.float32))
