"""Registered Keras layers: the feature embedding, the domain-aware dense-block seam and mechanisms."""

from mdr_tf.layers.blocks import (BLOCKS, HOOKS, DenseBlock, PlainDense, block_class, hook_class,  # noqa: F401
                                  register_block, register_hook)
from mdr_tf.layers.embedding import FeatureEmbedding  # noqa: F401
from mdr_tf.layers.mlp import DomainMLP  # noqa: F401
from mdr_tf.layers.routing import select_by_domain  # noqa: F401
