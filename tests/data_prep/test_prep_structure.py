"""data_prep's module layout: TF-free at import, one feature type, one atomic-write helper."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_data_prep_and_mdr_base_do_not_import_tensorflow():
    mods = ["mdr_base.atomic", "mdr_base.features", "data_prep.common", "data_prep.base", "data_prep.tabular",
            "data_prep.schema_builder", "data_prep.tfrecord", "data_prep.writers", "data_prep.streaming",
            "data_prep.cli", "data_prep.registry", "data_prep.movielens", "data_prep.aliccp", "data_prep.ijcai18",
            "data_prep.kuairand", "data_prep.amazon", "data_prep.taobao", "data_prep.sequences",
            "data_prep.multibehavior", "data_prep.synthetic"]
    code = ("import sys\n" + "".join(f"import {m}\n" for m in mods)
            + "bad = sorted(m for m in ('tensorflow', 'keras', 'mdr_tf') if m in sys.modules)\nprint(bad)\n")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout + out.stderr


def test_one_feature_type():
    from data_prep.common import FeatureDef
    from mdr_tf.schema import Feature, Schema

    assert FeatureDef is Feature
    f = FeatureDef("user_id", "categorical", 5, "user", True)
    assert f.to_json() == {"name": "user_id", "kind": "categorical", "vocab_size": 5, "group": "user", "is_id": True}
    # what data_prep writes is what mdr_tf reads back
    s = Schema.from_config({"features": [f.to_json()], "num_domains": 2})
    assert s.features == (f,)


def test_one_atomic_helper_everywhere():
    import data_prep.common as common
    import mdr_base.atomic as atomic
    from mdr_tf import export

    assert common.AtomicDir is atomic.AtomicDir
    assert common.write_json_atomic is atomic.write_json_atomic
    assert export.mkdtemp_honouring_umask is atomic.mkdtemp_honouring_umask


def test_atomic_path_leaves_target_untouched_on_error(tmp_path):
    from mdr_base.atomic import atomic_path, savez_atomic, write_json_atomic, write_text_atomic

    target = str(tmp_path / "t.txt")
    write_text_atomic(target, "old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            with open(tmp, "w") as f:
                f.write("half")
            raise RuntimeError("killed")
    assert open(target).read() == "old"
    assert os.listdir(tmp_path) == ["t.txt"]  # no temp file left
    write_json_atomic(str(tmp_path / "j.json"), {"a": 1})
    assert open(tmp_path / "j.json").read() == '{\n  "a": 1\n}\n'
    savez_atomic(str(tmp_path / "z.bin"), x=np.arange(3))  # exact name, no ".npz" appended
    assert np.load(str(tmp_path / "z.bin"))["x"].tolist() == [0, 1, 2]


def test_atomic_dir_replaces_and_keeps_on_error(tmp_path):
    from mdr_base.atomic import AtomicDir

    final = str(tmp_path / "out")
    with AtomicDir(final) as tmp:
        open(os.path.join(tmp, "a"), "w").write("1")
    with pytest.raises(ValueError):
        with AtomicDir(final) as tmp:
            open(os.path.join(tmp, "a"), "w").write("2")
            raise ValueError
    assert open(os.path.join(final, "a")).read() == "1"
    with AtomicDir(final) as tmp:
        open(os.path.join(tmp, "b"), "w").write("3")
    assert sorted(os.listdir(final)) == ["b"]
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_streaming_flags_defined_once(monkeypatch):
    """The three streaming preprocessors get the shared flags from ``define_streaming_flags``, once each."""
    from absl import flags

    from data_prep import aliccp, ijcai18, kuairand

    for mod, shards, block in ((aliccp, 16, 8.0), (ijcai18, 4, 16.0), (kuairand, 4, 16.0)):
        defined: list[tuple[str, object]] = []
        for kind in ("string", "integer", "float", "boolean", "enum", "list"):
            monkeypatch.setattr(flags, f"DEFINE_{kind}", lambda name, default, *a, **k: defined.append((name, default)))
        mod.define_flags()
        monkeypatch.undo()
        names = [n for n, _ in defined]
        for name in ("raw_path", "output_dir", "num_shards", "block_mb", "skip_bad_rows", "keep_work"):
            assert names.count(name) == 1, (mod.__name__, name, names)
        assert dict(defined)["num_shards"] == shards and dict(defined)["block_mb"] == block
        assert dict(defined)["skip_bad_rows"] is False and dict(defined)["keep_work"] is False
