"""Reliability checks of issue 19: loadable ``.keras`` files, no silent NaN, id range, clear errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mdr_tf import registry
from mdr_tf.schema import Schema

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TINY = {
    "features": [
        {"name": "user_id", "kind": "categorical", "vocab_size": 7, "group": "user", "is_id": True},
        {"name": "item_id", "kind": "categorical", "vocab_size": 5, "group": "item", "is_id": True},
        {"name": "ctx", "kind": "categorical", "vocab_size": 3, "group": "domain"},
        {"name": "price", "kind": "dense", "group": "item"},
    ],
    "num_domains": 3,
}


def tiny_inputs(n: int = 6) -> dict[str, np.ndarray]:
    return {"user_id": np.arange(n, dtype=np.int64) % 7, "item_id": np.arange(n, dtype=np.int64) % 5,
            "ctx": np.arange(n, dtype=np.int64) % 3, "price": np.linspace(0, 1, n).astype(np.float32),
            "domain_id": np.arange(n, dtype=np.int64) % 3}


def _subprocess(code: str, timeout: int = 300) -> subprocess.CompletedProcess:
    env = dict(os.environ, KERAS_BACKEND="tensorflow", TF_CPP_MIN_LOG_LEVEL="3", PYTHONPATH=REPO)
    return subprocess.run([sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True,
                          timeout=timeout)


# --- item 10: every registry model loads with keras.models.load_model after `import mdr_tf` ---

def test_every_registry_model_loads_after_import_mdr_tf_only(tmp_path):
    x = tiny_inputs()
    want = {}
    for name in registry.names():
        m = registry.get(name).build(TINY)
        m.build()
        want[name] = np.asarray(m(x, training=False)).reshape(-1).tolist()
        m.save(str(tmp_path / f"{name}.keras"))
    np.savez(tmp_path / "x.npz", **x)
    (tmp_path / "want.json").write_text(json.dumps(want))
    code = f"""
import json, sys, numpy as np
import keras, mdr_tf
d = {str(tmp_path)!r}
x = dict(np.load(d + '/x.npz'))
want = json.load(open(d + '/want.json'))
bad = []
for name, ref in want.items():
    try:
        got = np.asarray(keras.models.load_model(d + '/' + name + '.keras')(x, training=False)).reshape(-1)
        if not np.allclose(got, ref, atol=1e-6, rtol=0):
            bad.append(name + ': predictions differ')
    except Exception as e:
        bad.append(name + ': ' + type(e).__name__ + ': ' + str(e).splitlines()[0][:200])
print('\\n'.join(bad))
sys.exit(1 if bad else 0)
"""
    r = _subprocess(code)
    assert r.returncode == 0, f"models that do not load after `import mdr_tf`:\n{r.stdout}\n{r.stderr[-2000:]}"
    assert len(want) == len(registry.names()) >= 31
