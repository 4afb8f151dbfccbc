"""mdr_tf: multi-domain CTR/CVR models (HAMUR, MLoRA, MI-DPG, HierRec and baselines) in Keras 3."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(f"mdr_tf needs KERAS_BACKEND=tensorflow, got {keras.backend.backend()!r}")

__version__ = "0.1.0"
