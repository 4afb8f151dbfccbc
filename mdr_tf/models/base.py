"""``MultiDomainModel``: the base every model shares (inputs, embedding, output, build)."""

from __future__ import annotations

from typing import Any

import keras
import numpy as np
from keras import ops

from mdr_tf.layers.embedding import FeatureEmbedding
from mdr_tf.schema import Schema


def _make_interest(schema: Schema, cfg: dict[str, Any], dtype: Any = None):
    """``(SequenceInterest, (target, clicks, unclicks or None))`` from an ``interest`` dict.

    ``dtype`` is the model's dtype policy, given to the interest layer.
    """
    from mdr_tf.layers.sequence import SequenceInterest

    cfg = dict(cfg)
    mode = cfg.pop("mode", "tem4ctr")
    clicks = cfg.pop("clicks", "click")
    unclicks = cfg.pop("unclicks", "unclick") if mode == "tem4ctr" else None
    have = [q.name for q in schema.sequences]
    for name in (clicks, unclicks):
        if name is not None and name not in have:
            raise ValueError(f"interest {mode!r}: the schema has no sequence {name!r} (sequences: {have}); "
                             "prepare a dataset with behaviour sequences, e.g. --dataset=ml100k_seq")
    cq = schema.sequence(clicks)
    if len(cq.shape) != 1:
        raise ValueError(f"interest: click sequence {clicks!r} must be 1-D, has shape {list(cq.shape)}")
    if unclicks is not None:
        uq = schema.sequence(unclicks)
        if len(uq.shape) != 2 or uq.shape[0] != cq.shape[0]:
            raise ValueError(f"interest: unclick windows {unclicks!r} must have shape [L, W] with L = "
                             f"{cq.shape[0]} (the clicks' length), got {list(uq.shape)}")
    target = cfg.pop("target", cq.embed_with)
    if target not in [f.name for f in schema.categorical]:
        raise ValueError(f"interest: target {target!r} is not a categorical feature")
    return SequenceInterest(mode=mode, name="interest", dtype=dtype, **cfg), (target, clicks, unclicks)


@keras.saving.register_keras_serializable(package="mdr_tf")
class MultiDomainModel(keras.Model):
    """Base model: dict of raw feature tensors (incl. ``domain_id``) → probability [B, 1].

    Subclasses implement ``compute_logit(inputs, ctx, training)`` where ``ctx`` is the
    dict of conditioning views from ``FeatureEmbedding``. Works with ``compile``/``fit``/
    ``evaluate``/``predict``, ``.keras`` save/load and ``mdr_tf.export``.

    Args:
      schema: ``Schema.to_config()`` dict (features, number of domains).
      embedding_dim: embedding size of every categorical feature (default 16).
      embed_domain: feed the domain id as an embedded field of the backbone input.
      embeddings_initializer: embedding initializer: a name, a serialised dict or an
        ``keras.initializers.Initializer`` (default N(0, 1e-4), HAMUR / Scenario-Wise-Rec).
        ``get_config`` stores it serialised.
      embedding_l2: coupled L2 weight on the embedding tables (torch ``weight_decay``
        style, ``0.5 * wd * ||E||²`` per step on the whole table); 0 disables.
      embedding_assignment: optional streaming embedding-assignment policy
        (``FeatureEmbedding``'s ``assignment``; docs/models/autoassign.md); None = one row per id.
      interest: optional behaviour-sequence interest appended to the backbone input
        ``ctx["all"]`` (and given as ``ctx["interest"]``): a dict with ``mode`` ("din" or
        "tem4ctr"), optional ``clicks`` / ``unclicks`` (sequence names; default
        "click" / "unclick"), ``target`` (the target feature; default the clicks'
        ``embed_with``) and ``SequenceInterest`` arguments (``attention_units``,
        ``enhance``, ...). "STAR + TEM4CTR interest" is ``STAR(schema, interest={"mode":
        "tem4ctr"})``. See docs/models/tem4ctr.md.
      embedding_precision: "fp" (float32 table, default), or a low-precision table
        trained with "lpt_dr" / "lpt_sr" (LPT, deterministic / stochastic rounding) or
        "alpt" (learned step size); ALPT, AAAI 2023, docs/models/alpt.md.
      embedding_bits: bit width of a low-precision table (2-16; int8 storage up to 8).
      embedding_quantization: further ``QuantizedEmbedding`` arguments (``step``,
        ``grad_scale``, ``delta_init``, ``delta_lr``, ``rounding``).
      **kwargs: ``keras.Model`` arguments (``name``, ``dtype``: a dtype policy such as
        "mixed_float16", which every sublayer shares).
    """

    def __init__(
        self,
        schema: dict[str, Any],
        embedding_dim: int = 16,
        embed_domain: bool = True,
        embeddings_initializer: Any = None,
        embedding_l2: float = 0.0,
        embedding_assignment: dict[str, Any] | None = None,
        interest: dict[str, Any] | None = None,
        embedding_precision: str = "fp",
        embedding_bits: int = 8,
        embedding_quantization: dict[str, Any] | None = None,
        **kwargs,
    ):
        super().__init__(**kwargs)
        self.schema_config = dict(schema)
        self.schema = Schema.from_config(schema)
        self.embedding_dim = int(embedding_dim)
        self.embed_domain = bool(embed_domain)
        self.embeddings_initializer = embeddings_initializer or {
            "class_name": "RandomNormal", "config": {"mean": 0.0, "stddev": 1e-4}}
        self.embedding_l2 = float(embedding_l2)
        self.embedding_assignment = dict(embedding_assignment) if embedding_assignment else None
        self.embedding_precision = str(embedding_precision)
        self.embedding_bits = int(embedding_bits)
        self.embedding_quantization = dict(embedding_quantization or {})
        self.embedding = FeatureEmbedding(
            schema, embedding_dim=self.embedding_dim, embed_domain=self.embed_domain,
            embeddings_initializer=keras.initializers.get(self.embeddings_initializer),
            embeddings_regularizer=keras.regularizers.L2(self.embedding_l2 / 2) if self.embedding_l2 else None,
            assignment=self.embedding_assignment, embedding_precision=self.embedding_precision,
            embedding_bits=self.embedding_bits, quantization=self.embedding_quantization, name="embedding",
            dtype=self.dtype_policy)
        self.context_dims = self.embedding.output_dims
        self.interest = dict(interest) if interest else None
        self.interest_layer = None
        if self.interest:
            self.interest_layer, self._interest_keys = _make_interest(self.schema, self.interest, self.dtype_policy)
            w = self.interest_layer.output_width(self.embedding_dim)
            self.context_dims = {**self.context_dims, "all": self.context_dims["all"] + w, "interest": w}

    def reject_interest(self, why: str) -> None:
        """For models that cannot use ``interest``: a clear error instead of an unused interest layer."""
        if self.interest:
            raise ValueError(f"{type(self).__name__} does not take a sequence interest: {why}")

    @property
    def num_domains(self) -> int:
        return self.schema.num_domains

    def dummy_inputs(self, batch: int = 2) -> dict[str, np.ndarray]:
        """Valid zero inputs (domain ids 0..D-1 cycled), used to build the model."""
        x = {f.name: np.zeros([batch], np.int64 if f.kind == "categorical" else np.float32)
             for f in self.schema.features}
        x[self.schema.domain_key] = np.arange(batch, dtype=np.int64) % self.num_domains
        for q in self.schema.sequences:
            x[q.ids_key] = np.zeros([batch, q.length], np.int64)
            x[q.mask_key] = np.zeros([batch, q.length], np.int64)
        return x

    def build(self, input_shape=None):
        # The schema fixes every input; build by tracing one call on dummy inputs so
        # that all sublayers (incl. ones sized from context views) create weights.
        if self.built:
            return
        self.embedding.build(None)
        self.call(self.dummy_inputs(max(2, self.num_domains)), training=False)
        self.built = True

    # --- low-precision embedding training (LPT / ALPT); a float table uses Keras' own ---
    def compile(self, *args, **kwargs):
        super().compile(*args, **kwargs)
        q = self.embedding.quantized
        if q is not None:
            from mdr_tf.layers.quantized_embedding import check_single_replica

            check_single_replica()
        if q is not None and self.optimizer is not None:
            # The optimizer also updates the float rows of the low-precision table (a
            # training scratch that is not a model weight): build it on them now.
            if not self.built:
                self.build()
            if not self.optimizer.built:
                self.optimizer.build(list(self.trainable_variables) + [q.work])
            if q.precision == "alpt":
                q.make_delta_optimizer(self.optimizer)

    def compile_from_config(self, config):
        """Compiles a model loaded from a ``.keras`` file as it was saved (optimizer class and
        settings, loss, XLA, steps per execution), so its optimizer state is restored too.
        Keras skips this for a model that overrides ``compile``, as this class does. An
        optimizer that cannot be rebuilt from its config (e.g. ``onboarding.MaskedAdam``,
        not registered) leaves the model uncompiled, with a warning, as Keras did."""
        try:
            config = keras.saving.deserialize_keras_object(config)
        except (TypeError, ValueError) as e:
            import warnings

            warnings.warn(f"{type(self).__name__}: the saved compile settings could not be restored ({e}); the "
                          "model is loaded uncompiled: call compile() before training it", stacklevel=2)
            return
        self.compile(**config)
        if self.built and not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def train_step(self, data):
        """Keras' TensorFlow ``train_step``, with duplicate ids of sparse gradients summed.

        The gradient of every gather (embedding rows, per-domain parameters taken per
        sample) is summed per row before the optimizer sees it, as in the references
        (torch's dense gradients, TF1's optimizers); Keras 3 would otherwise square each
        duplicate separately in Adam's second moment (``mdr_tf.optimizers.sum_duplicate_rows``).
        A low-precision table trains with ``lpt_train_step``.
        """
        q = self.embedding.quantized
        if q is not None:
            from mdr_tf.layers.quantized_embedding import lpt_train_step

            return lpt_train_step(self, q, data)
        import tensorflow as tf
        from keras.src import tree
        from keras.src.losses import loss as loss_module
        from keras.src.trainers.data_adapters import data_adapter_utils

        from mdr_tf.optimizers import sum_duplicate_rows

        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        batch = tf.shape(next(i for i in tree.flatten(x) if i is not None))[0]
        with tf.GradientTape() as tape:
            y_pred = self(x, training=True)
            loss = self._compute_loss(x=x, y=y, y_pred=y_pred, sample_weight=sample_weight, training=True)
            self._loss_tracker.update_state(loss_module.unscale_loss_for_distribution(loss), sample_weight=batch)
            loss = self.optimizer.scale_loss(loss)
        variables = self.trainable_weights
        grads = sum_duplicate_rows(tape.gradient(loss, variables), self.optimizer)
        self.optimizer.apply_gradients(zip(grads, variables))
        return self.compute_metrics(x, y, y_pred, sample_weight=sample_weight)

    def extra_optimizer_variables(self) -> list:
        """Training state outside ``self.optimizer`` (ALPT's Δ optimizer), for checkpoints."""
        q = self.embedding.quantized
        opt = q.delta_optimizer if q is not None else None
        return list(opt.variables) if opt is not None else []

    def compute_logit(self, inputs: dict[str, Any], ctx: dict[str, Any], training: bool | None = None):
        raise NotImplementedError

    def sequence_interest(self, inputs: dict[str, Any]) -> Any:
        """The interest vector ``[B, w]`` of ``self.interest`` (DIN ``v₁`` or TEM4CTR ``[v₁, v₂]``)."""
        target, clicks, unclicks = self._interest_keys
        emb = self.embedding
        cq = self.schema.sequence(clicks)
        e_t = emb.lookup(target, ops.reshape(inputs[target], [-1]))
        c = emb.lookup(cq.embed_with, ops.reshape(inputs[cq.ids_key], [-1, cq.length]))
        cm = ops.reshape(inputs[cq.mask_key], [-1, cq.length])
        if unclicks is None:
            return self.interest_layer(e_t, c, cm)
        uq = self.schema.sequence(unclicks)
        shape = [-1, cq.length, uq.length // cq.length]
        u = emb.lookup(uq.embed_with, ops.reshape(inputs[uq.ids_key], shape))
        um = ops.reshape(inputs[uq.mask_key], shape)
        return self.interest_layer(e_t, c, cm, u, um)

    def call(self, inputs: dict[str, Any], training: bool | None = None):
        ctx = self.embedding(inputs)
        if self.interest_layer is not None:
            v = ops.cast(self.sequence_interest(inputs), ctx["all"].dtype)
            ctx = {**ctx, "all": ops.concatenate([ctx["all"], v], axis=1), "interest": v}
        logit = self.compute_logit(inputs, ctx, training=training)
        return ops.sigmoid(ops.cast(ops.reshape(logit, [-1, 1]), "float32"))

    def get_config(self) -> dict[str, Any]:
        # keras.Model's config: name, trainable and the dtype policy.
        return {
            **super().get_config(),
            "schema": self.schema_config,
            "embedding_dim": self.embedding_dim,
            "embed_domain": self.embed_domain,
            "embeddings_initializer": keras.initializers.serialize(keras.initializers.get(self.embeddings_initializer)),
            "embedding_l2": self.embedding_l2,
            **({"embedding_assignment": self.embedding_assignment} if self.embedding_assignment else {}),
            **({"interest": self.interest} if self.interest else {}),
            **({"embedding_precision": self.embedding_precision, "embedding_bits": self.embedding_bits,
                "embedding_quantization": self.embedding_quantization} if self.embedding_precision != "fp" else {}),
        }

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        config = dict(config)
        init = config.get("embeddings_initializer")
        if isinstance(init, dict):
            config["embeddings_initializer"] = keras.initializers.deserialize(init)
        return cls(**config)
