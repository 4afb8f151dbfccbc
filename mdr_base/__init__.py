"""TF-free pieces shared by ``mdr_tf`` and ``data_prep``.

``mdr_tf`` imports Keras/TensorFlow on import (``mdr_tf/__init__`` registers every layer),
while ``data_prep`` must stay TensorFlow-free at import (its worker processes and the
preprocessing command lines do not pay TF's start-up). ``mdr_tf`` must not import
``data_prep``. Code both need therefore lives here, in a package that imports only the
standard library and NumPy:

- ``mdr_base.atomic``: the one atomic-write helper family (temp name, then rename).
- ``mdr_base.features``: ``Feature``, the one feature type of ``schema.json``.
"""
