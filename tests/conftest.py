"""Shared fixtures: a tiny synthetic dataset (fast) and the real MovieLens-100k (session-scoped)."""

from __future__ import annotations

import os

import pytest

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import mdr_tf  # noqa: E402,F401

#: Fixtures that prepare or read real data: MovieLens-100k from the recbole wheel and the
#: datasets built from it (ml100k_seq in tests/test_sequences.py, ml100k_multibehavior in
#: tests/test_topn.py). A test using one is marked ``slow``; ``pytest -m "not slow"`` is
#: the fast tier (synthetic data and hand-made fixtures only).
REAL_DATA_FIXTURES = frozenset({"ml100k_dir", "ml100k_schema", "raw_ml100k", "seq_dir", "seq_schema", "ml100k_mb"})


def pytest_collection_modifyitems(config, items):
    for item in items:
        if REAL_DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory) -> str:
    """3-domain synthetic dataset, 6,000 rows (domains with opposite user-item effects)."""
    from data_prep.synthetic import generate

    d = str(tmp_path_factory.mktemp("synth") / "synth")
    generate(d, num_rows=6000, num_domains=3, num_users=60, num_items=40, num_context=8, seed=0)
    return d


@pytest.fixture(scope="session")
def columnar_synth_dir(tmp_path_factory) -> str:
    """3 domains x 2 shards, 6,000 rows, with the train and valid splits converted to columnar
    shards (shared by the out-of-core and columnar-evaluation tests; tests copy it before
    changing anything in it)."""
    from data_prep.synthetic import generate
    from mdr_tf import columnar

    d = str(tmp_path_factory.mktemp("columnar") / "synth")
    generate(d, num_rows=6000, num_domains=3, num_users=60, num_items=40, num_context=8, seed=0, num_shards=2)
    columnar.convert(d, ["train", "valid"], chunk_rows=500, progress=lambda m: None)
    return d


@pytest.fixture(scope="session")
def synth_schema(synth_dir):
    from mdr_tf.schema import Schema

    return Schema.load(synth_dir)


@pytest.fixture(scope="session")
def ml100k_dir(tmp_path_factory) -> str:
    """Real MovieLens-100k (age3 domains, rating > 3) from the recbole wheel cache.

    The wheel is downloaded once into $MDR_TF_CACHE (default ~/.cache/mdr_tf); the
    prepared TFRecords go to $MDR_TF_DATA (default: a pytest temp dir).
    """
    from data_prep import movielens

    base = os.environ.get("MDR_TF_DATA") or str(tmp_path_factory.mktemp("data"))
    out = os.path.join(base, "ml100k")  # the name experiments.run uses, so it reuses this output
    movielens.prepare(out)
    return out


@pytest.fixture(scope="session")
def ml100k_schema(ml100k_dir):
    from mdr_tf.schema import Schema

    return Schema.load(ml100k_dir)
