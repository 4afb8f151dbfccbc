"""Mechanism layers, one paper per file (``layers/mechanisms/<paper>.py``).

Importing this package imports nothing else: import the file you need
(``from mdr_tf.layers.mechanisms.mlora import MLoRADense``). ``import mdr_tf`` imports
(and so registers) every file, which is what ``blocks.block_class`` / ``hook_class``
rely on to find a block or hook by name.
"""
