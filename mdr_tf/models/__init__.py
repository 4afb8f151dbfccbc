"""Registered multi-domain Keras models (assembly only; the maths lives in mdr_tf.layers)."""

from mdr_tf.models.base import MultiDomainModel  # noqa: F401
from mdr_tf.models.backbones import BackboneModel  # noqa: F401
