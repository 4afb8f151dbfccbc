"""mdr_tf: multi-domain CTR/CVR models (HAMUR, MLoRA, MI-DPG, HierRec and baselines) in Keras 3."""

import os

os.environ.setdefault("KERAS_BACKEND", "tensorflow")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras  # noqa: E402

if keras.backend.backend() != "tensorflow":
    raise ImportError(f"mdr_tf needs KERAS_BACKEND=tensorflow, got {keras.backend.backend()!r}")

__version__ = "0.1.0"


def register_all() -> None:
    """Imports every module of ``mdr_tf.layers`` and ``mdr_tf.models`` (and the registry's
    builders and procedures); idempotent.

    Their classes are registered with ``keras.saving.register_keras_serializable`` (and
    blocks / hooks with ``register_block`` / ``register_hook``) at import, so after
    ``import mdr_tf`` a saved ``.keras`` file of any model loads with plain
    ``keras.models.load_model`` (no ``custom_objects``), whatever was imported first.
    This is the package's only import-for-registration; no other module imports one for
    its side effect. Costs ~0.05 s.
    """
    import importlib
    import pkgutil

    for pkg_name in ("mdr_tf.layers", "mdr_tf.models"):
        pkg = importlib.import_module(pkg_name)
        for m in pkgutil.walk_packages(pkg.__path__, pkg_name + "."):
            importlib.import_module(m.name)
    from mdr_tf import registry

    for spec in registry.REGISTRY.values():  # builders / procedures outside the two packages, if any
        for ref in (spec.builder, spec.procedure):
            importlib.import_module(ref.partition(":")[0])


_register_serializables = register_all  # former name
register_all()
