"""New-domain onboarding: add a domain to a trained model and train only its private parameters.

1. ``add_domain(model)`` returns a new model of the same class with ``num_domains + 1``
   domains. Every variable that holds one slice per domain (LoRA factors, towers, gates,
   STAR's ``W_d`` and partitioned-norm statistics, per-domain BatchNorm statistics, the
   domain-id row of the embedding table, ...) grows by one slice, initialised from an
   existing domain's slice or the mean over domains; every other variable is copied.
2. ``onboard_domain(model, schema, cfg)`` trains the new domain on its own data only
   (``mdr_tf.training.fit(domains=[new])``, early stopping on its validation AUC) while
   ``onboarding_scope`` freezes every shared variable (``trainable = False``), puts shared
   ``BatchNormalization`` layers in inference mode, and compiles a ``MaskedAdam``: the
   gradient of each per-domain variable is masked to the new domain's slice, and after
   every step the other entries are reset to their value before the step and
   non-trainable per-domain state (moving statistics, which layers update in the forward
   pass) to its value before onboarding. Choosing an optimizer (not a custom
   ``train_step``) keeps Keras' own train step, ``steps_per_execution`` and XLA, and the
   model's class untouched.

Guarantee. Shared variables and the old domains' slices are bit-identical by
construction. An old domain's *prediction* is bit-identical when, in addition, the
model computes an old-domain row with the same floating-point operations whatever the
number of domains. Every registry model does: domains enter through gathers, per-domain
tiles, or per-domain matmuls whose shapes do not depend on D (MLoRA's ``"matmul"``
routing at inference, HAMUR-MLP's adapter tower by tower, HierRec's scenario
conditions row by row, SAR-Net's experts and gate block by block). One matmul over all
domains' blocks would not: CPU matmul kernels round a few entries differently (about
1e-7) when its shape grows. ``add_domain`` checks this on a probe batch at several batch
sizes and raises (or warns) when old-domain predictions differ.

Where a variable's domain slices lie (its ``DomainLayout``) is found structurally: the
model's config is instantiated with D and D + 1 domains (vocabularies shrunk so that the
probes are small) and the variables are compared shape by shape. A variable whose shape
grows on one axis from ``D·b`` to ``(D + 1)·b`` holds domain-major blocks of ``b`` entries
on that axis (``[D, ...]`` tables on axis 0, SAR-Net's ``[n, D·P·u]`` experts on the last
axis, stacked towers' BatchNorm ``[D·u]`` in blocks of ``u``); the fused embedding table's
domain rows follow the feature rows. ``set_domain_layout`` declares a layout explicitly.
Anything else (a shape that grows on several axes or not in whole blocks, as PLE's
multi-level shared gate ``[D·ns + nsh]``; a variable tagged per-domain whose shape does
not depend on D) is rejected with a ``ValueError`` naming the variable.

Example:
  >>> new = add_domain(model, name="teens", init_from="mean")
  >>> result = onboard_domain(new, schema_with_teens, TrainConfig(epochs=5))
  >>> result.trainable_params, result.stopper.best
"""

from __future__ import annotations

import contextlib
import dataclasses
import time
import warnings
from typing import Any, Callable, Iterator

import keras
import numpy as np
from keras import ops

from mdr_tf.layers.embedding import FeatureEmbedding
from mdr_tf.params import is_per_domain
from mdr_tf.schema import Schema


@dataclasses.dataclass(frozen=True)
class DomainLayout:
    """Where the domain slices of one variable lie.

    Domain ``d``'s slice is ``[offset + d·block, offset + (d + 1)·block)`` along ``axis``.

    Attributes:
      axis: the domain axis (non-negative).
      block: entries per domain on that axis.
      offset: index of domain 0's first entry (the fused embedding table's domain rows
        come after the feature rows).
    """

    axis: int
    block: int
    offset: int = 0

    def index(self, rank: int, domain: int) -> tuple[slice, ...]:
        """The numpy index of ``domain``'s slice in a variable of rank ``rank``."""
        idx = [slice(None)] * rank
        start = self.offset + domain * self.block
        idx[self.axis] = slice(start, start + self.block)
        return tuple(idx)

    def mask(self, shape: tuple[int, ...], domain: int) -> np.ndarray:
        """Boolean mask of ``domain``'s entries in a variable of ``shape``."""
        m = np.zeros(shape, bool)
        m[self.index(len(shape), domain)] = True
        return m


def set_domain_layout(variable, axis: int, offset: int = 0) -> None:
    """Declares a variable's domain axis (and the offset of domain 0 on it).

    Declared variables skip the structural detection; the block size is the axis size
    minus ``offset``, divided by the number of domains. Call it in a layer's ``build``.
    """
    variable._mdr_domain_axis = int(axis)
    variable._mdr_domain_offset = int(offset)


def _short_path(variable) -> str:
    """The variable path without the model's (auto-numbered) name."""
    path = getattr(variable, "path", variable.name)
    return path.split("/", 1)[1] if "/" in path else path


def _schema_config(model: keras.Model, num_domains: int, names: list[str] | None = None,
                   small_vocab: bool = False) -> dict[str, Any]:
    cfg = dict(model.schema_config)
    cfg["num_domains"] = int(num_domains)
    cfg["domain_names"] = list(names) if names is not None else [str(i) for i in range(num_domains)]
    if small_vocab:
        cfg["features"] = [{**f, "vocab_size": min(int(f.get("vocab_size", 0)), 2)}
                           if f.get("kind") == "categorical" else dict(f) for f in cfg["features"]]
    return cfg


def _instantiate(model: keras.Model, schema_cfg: dict[str, Any]) -> keras.Model:
    config = model.get_config()
    config["schema"] = schema_cfg
    new = type(model).from_config(config)
    new.build()
    return new


def _check_model(model: keras.Model) -> None:
    if not hasattr(model, "schema_config") or not hasattr(model, "num_domains"):
        raise ValueError(f"{type(model).__name__}: onboarding needs a MultiDomainModel (schema config, num_domains)")
    if getattr(getattr(model, "embedding", None), "quantized", None) is not None:
        raise ValueError(f"{type(model).__name__}: onboarding a domain needs a float embedding table; this model "
                         f"has a low-precision one (embedding_precision={model.embedding.embedding_precision!r})")
    if not model.built:
        model.build()


def domain_layouts(model: keras.Model) -> list[DomainLayout | None]:
    """The domain layout of every variable of ``model.weights`` (None: shared).

    Raises:
      ValueError: a variable depends on the number of domains in a way that is not one
        block per domain on one axis, or is tagged per-domain but does not depend on it.
    """
    _check_model(model)
    name = type(model).__name__
    d = model.num_domains
    weights = model.weights
    probes = [_instantiate(model, _schema_config(model, k, small_vocab=True)) for k in (d, d + 1)]
    pa, pb = probes[0].weights, probes[1].weights
    if not len(weights) == len(pa) == len(pb):
        raise ValueError(f"{name}: the number of variables changes with the number of domains "
                         f"({len(pa)} with D={d}, {len(pb)} with D={d + 1}): per-domain sublayers "
                         "are not supported (stack per-domain weights in one variable instead)")
    tables = {}
    for layer in model._flatten_layers(include_self=False):
        if isinstance(layer, FeatureEmbedding) and layer.built:
            tables[id(layer.table)] = layer.table_rows(layer.schema.domain_key)[0]
    out: list[DomainLayout | None] = []
    for v, a, b in zip(weights, pa, pb):
        where = f"{name}: variable {_short_path(v)!r} {tuple(v.shape)}"
        if not v.name == a.name == b.name or len(v.shape) != len(a.shape):
            raise ValueError(f"{where}: does not line up with a rebuilt model ({_short_path(a)!r}); "
                             "the model's config does not rebuild the same layers")
        shape = tuple(int(s) for s in v.shape)
        if id(v) in tables:
            out.append(DomainLayout(0, 1, tables[id(v)]))
            continue
        axis = getattr(v, "_mdr_domain_axis", None)
        if axis is not None:
            axis = int(axis) % len(shape)
            offset = int(getattr(v, "_mdr_domain_offset", 0))
            block, rest = divmod(shape[axis] - offset, d)
            if rest or block < 1:
                raise ValueError(f"{where}: declared domain axis {axis} (offset {offset}) does not hold "
                                 f"{d} equal blocks")
            out.append(DomainLayout(axis, block, offset))
            continue
        sa, sb = tuple(a.shape), tuple(b.shape)
        grown = [i for i in range(len(sa)) if sa[i] != sb[i]]
        if not grown:
            if is_per_domain(v):
                raise ValueError(f"{where}: tagged per-domain but its shape does not depend on the number of "
                                 "domains; declare its domain axis with set_domain_layout")
            out.append(None)
            continue
        if len(grown) > 1:
            raise ValueError(f"{where}: its shape grows on axes {grown} with the number of domains; only one "
                             "domain axis is supported")
        i = grown[0]
        block = sb[i] - sa[i]
        if block < 1 or sa[i] != d * block or shape[i] != d * block:
            raise ValueError(f"{where}: axis {i} grows from {sa[i]} to {sb[i]} with D={d}→{d + 1}, which is not "
                             "one block per domain (e.g. domain blocks followed by shared entries); it cannot "
                             "be grown without changing the old domains. Declare its layout with "
                             "set_domain_layout if it is one")
        out.append(DomainLayout(i, block, 0))
    return out


def _resolve_init(init_from: int | str, model: keras.Model) -> int | str:
    d = model.num_domains
    names = list(model.schema.domain_names)
    if isinstance(init_from, str) and init_from in ("mean", "init"):
        return init_from
    if isinstance(init_from, (int, np.integer)) and not isinstance(init_from, bool):
        if 0 <= int(init_from) < d:
            return int(init_from)
    elif isinstance(init_from, str) and init_from in names:
        return names.index(init_from)
    raise ValueError(f"init_from must be 'mean', 'init', a domain id in 0..{d - 1} or a domain name in {names}; "
                     f"got {init_from!r}")


def _probe_inputs(schema: Schema, domains: list[int], rows_per_domain: int = 64,
                  seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    n = rows_per_domain * len(domains)
    x = {}
    for f in schema.features:
        if f.kind == "categorical":
            x[f.name] = rng.integers(0, f.vocab_size, n).astype(np.int64)
        else:
            x[f.name] = rng.normal(size=n).astype(np.float32)
    x[schema.domain_key] = np.resize(np.asarray(domains, np.int64), n)
    return x


def check_old_domains_unchanged(old: keras.Model, new: keras.Model, inputs: dict[str, np.ndarray] | None = None,
                                domains: list[int] | None = None,
                                batch_sizes: tuple[int, ...] = (4096, 1000, 251, 37)) -> tuple[bool, float]:
    """Predicts old-domain rows with both models; returns (bit-identical, max |difference|).

    The same rows are predicted in the same batches by both models, at several batch
    sizes: CPU matmul kernels round the last rows of a matrix differently, so a
    computation whose shape depends on the number of domains can differ only at some
    batch sizes.

    Args:
      old: the original model.
      new: the model after ``add_domain`` (and possibly ``onboard_domain``).
      inputs: feature arrays whose domain ids are old domains (default: a seeded random
        probe of 1,024 rows per domain of ``domains``).
      domains: old domains to probe (default: all of ``old``'s).
      batch_sizes: prediction batch sizes to compare at.
    """
    from mdr_tf.training import predict_arrays

    if inputs is None:
        inputs = _probe_inputs(old.schema, list(range(old.num_domains)) if domains is None else list(domains),
                               rows_per_domain=1024)
    same, diff = True, 0.0
    for bs in batch_sizes:
        p_old = predict_arrays(old, inputs, bs)
        p_new = predict_arrays(new, inputs, bs)
        if len(p_old):
            same = same and bool(np.array_equal(p_old, p_new))
            diff = max(diff, float(np.max(np.abs(p_old.astype(np.float64) - p_new))))
    return same, diff


def add_domain(model: keras.Model, name: str | None = None, init_from: int | str = "mean",
               verify: bool | str = True) -> keras.Model:
    """A copy of ``model`` with one more domain (id ``D``), old domains unchanged.

    Args:
      model: a built ``MultiDomainModel`` with D domains.
      name: the new domain's name (default ``str(D)``); must be new.
      init_from: the new slice of every per-domain variable: ``"mean"`` (mean over the
        D slices), a domain id or name (a copy of that domain's slice), or ``"init"``
        (the layers' own initialisation, e.g. MLoRA's ``B = 0``: the new domain starts
        as the shared network).
      verify: check on a probe batch of old-domain rows that the old domains'
        predictions are bit-identical: True / "raise" (a ``ValueError`` if not), "warn"
        (a warning), False (no check).

    Returns:
      A new model of the same class, schema ``num_domains = D + 1``, weights copied.

    Raises:
      ValueError: bad ``name`` / ``init_from``, a variable that cannot be grown (see
        ``domain_layouts``), or (``verify``) old-domain predictions that changed.
    """
    _check_model(model)
    if verify not in (True, False, "raise", "warn"):
        raise ValueError(f"verify must be True, False, 'raise' or 'warn', got {verify!r}")
    cls = type(model).__name__
    d = model.num_domains
    init = _resolve_init(init_from, model)
    names = list(model.schema.domain_names)
    name = str(d) if name is None else str(name)
    if name in names:
        raise ValueError(f"{cls}: a domain named {name!r} already exists ({names})")
    layouts = domain_layouts(model)
    new = _instantiate(model, _schema_config(model, d + 1, names + [name]))
    if len(new.weights) != len(model.weights):
        raise ValueError(f"{cls}: the rebuilt model has {len(new.weights)} variables, the original "
                         f"{len(model.weights)}")
    for v, nv, layout in zip(model.weights, new.weights, layouts):
        value = np.asarray(ops.convert_to_numpy(v))
        if layout is not None:
            slices = np.stack([value[layout.index(value.ndim, k)] for k in range(d)])
            if init == "mean":
                fresh = np.mean(slices.astype(np.float64), axis=0).astype(value.dtype)
            elif init == "init":
                fresh = np.asarray(ops.convert_to_numpy(nv))[layout.index(value.ndim, d)]
            else:
                fresh = slices[init]
            cut = layout.offset + d * layout.block
            head = value[(slice(None),) * layout.axis + (slice(None, cut),)]
            tail = value[(slice(None),) * layout.axis + (slice(cut, None),)]
            value = np.concatenate([head, fresh, tail], axis=layout.axis)
        if tuple(value.shape) != tuple(nv.shape):
            raise ValueError(f"{cls}: variable {_short_path(v)!r}: grown shape {value.shape} does not match the "
                             f"rebuilt model's {tuple(nv.shape)}")
        nv.assign(value)
    if verify:
        same, diff = check_old_domains_unchanged(model, new)
        if not same:
            msg = (f"{cls}: with {d + 1} domains the old domains' predictions differ on a probe batch "
                   f"(max |Δ| = {diff:.3g}): the model's computation for an old domain changes with the number "
                   "of domains (e.g. one matmul over all domains' blocks, as MLoRA with "
                   "per_domain_inference=False; compute per domain or per sample), or a variable was grown "
                   "wrongly")
            if verify == "warn":
                warnings.warn(msg, stacklevel=2)
            else:
                raise ValueError(msg)
    return new


def private_masks(model: keras.Model, domain: int | None = None) -> list[np.ndarray | None]:
    """For every variable of ``model.weights``: the boolean mask of ``domain``'s private
    entries (default: the last domain), or None for a shared variable."""
    _check_model(model)
    d = model.num_domains
    domain = d - 1 if domain is None else int(domain)
    if not 0 <= domain < d:
        raise ValueError(f"domain {domain} out of range 0..{d - 1}")
    return [None if lay is None else lay.mask(tuple(int(s) for s in v.shape), domain)
            for v, lay in zip(model.weights, domain_layouts(model))]


def private_parameters(model: keras.Model) -> list[dict[str, Any]]:
    """The per-domain variables: ``[{path, shape, axis, slice_shape, count, trainable}]``
    (``count``: entries of one domain's slice)."""
    rows = []
    for v, lay in zip(model.weights, domain_layouts(model)):
        if lay is None:
            continue
        shape = tuple(int(s) for s in v.shape)
        slice_shape = shape[:lay.axis] + (lay.block,) + shape[lay.axis + 1:]
        rows.append({"path": _short_path(v), "shape": shape, "axis": lay.axis, "slice_shape": slice_shape,
                     "count": int(np.prod(slice_shape)), "trainable": bool(v.trainable)})
    return rows


class MaskedAdam(keras.optimizers.Adam):
    """Adam that updates only the masked entries of partially trainable variables and
    pins everything else.

    Each step: gradients of masked variables are multiplied by their mask (so Adam's
    moments of frozen entries stay 0 and their update is exactly 0), the Adam update is
    applied, and then frozen entries are set back to their value before the step
    (``where(mask, new, old)``) — exact even with clipping or weight decay. Pinned
    non-trainable variables (moving statistics, which layers update in their forward
    pass) are reset to their original values outside their mask after every step.

    Not serialisable (its masks are model-specific): recompile before saving.

    Args:
      masks: ``[(variable, bool mask)]``: trainable variables of which only the mask
        may change.
      pinned: ``[(variable, original value, bool mask or None)]``: non-trainable
        variables restored to ``original`` outside ``mask`` (everywhere if None).
      **kwargs: ``keras.optimizers.Adam`` arguments.
    """

    def __init__(self, masks: list[tuple[Any, np.ndarray]] = (), pinned: list[tuple[Any, np.ndarray,
                 np.ndarray | None]] = (), **kwargs):
        super().__init__(**kwargs)
        self._masks = {id(v): (v, np.asarray(m, bool)) for v, m in masks}
        self._pinned = [(v, np.asarray(x), None if m is None else np.asarray(m, bool)) for v, x, m in pinned]

    @staticmethod
    def _mask_gradient(g, mask: np.ndarray):
        import tensorflow as tf

        if isinstance(g, tf.IndexedSlices):  # embedding tables: mask the gathered rows only
            rows = tf.gather(tf.constant(mask, g.values.dtype), g.indices)
            return tf.IndexedSlices(g.values * rows, g.indices, g.dense_shape)
        return g * ops.cast(mask, g.dtype)

    def apply(self, grads, trainable_variables=None):
        tvars = list(self._trainable_variables if trainable_variables is None else trainable_variables)
        grads = list(grads)
        before = []
        for i, (g, v) in enumerate(zip(grads, tvars)):
            hit = self._masks.get(id(v))
            if hit is None:
                continue
            if g is not None:
                grads[i] = self._mask_gradient(g, hit[1])
            before.append((v, ops.convert_to_tensor(v), hit[1]))  # read before the update
        super().apply(grads, trainable_variables)
        for v, old, mask in before:
            v.assign(ops.where(mask, v, old))
        for v, original, mask in self._pinned:
            v.assign(original if mask is None else ops.where(mask, v, ops.cast(original, v.dtype)))


@dataclasses.dataclass
class OnboardingScope:
    """What ``onboarding_scope`` froze: masks and counts (for reports)."""

    domain: int
    masks: list[np.ndarray | None]
    trainable_params: int
    frozen_batchnorm: list[str]
    optimizer_masks: list[tuple[Any, np.ndarray]]
    pinned: list[tuple[Any, np.ndarray, np.ndarray | None]]

    def optimizer(self, learning_rate: float = 1e-3, epsilon: float = 1e-8, **kwargs) -> MaskedAdam:
        """A ``MaskedAdam`` that trains only this scope's private entries."""
        return MaskedAdam(self.optimizer_masks, self.pinned, learning_rate=learning_rate, epsilon=epsilon, **kwargs)


def unseen_ids(schema: Schema, domain: int, features: list[str] | None = None) -> dict[str, np.ndarray]:
    """Ids that occur in ``domain``'s train split but in no other domain's (0 = OOV excluded).

    For ``onboard_domain(train_ids=...)``: e.g. the users of a new domain whose
    embeddings the other domains never trained.
    """
    from mdr_tf.data import load_arrays

    others = [k for k in range(schema.num_domains) if k != domain]
    mine, _ = load_arrays(schema, "train", domains=[domain])
    rest, _ = load_arrays(schema, "train", domains=others) if others else ({}, None)
    out = {}
    for f in schema.categorical:
        if features is not None and f.name not in features:
            continue
        ids = np.setdiff1d(np.unique(mine[f.name]), np.unique(rest[f.name]) if others else np.zeros(0, np.int64))
        out[f.name] = ids[ids > 0].astype(np.int64)
    return out


def _with_id_rows(model: keras.Model, masks: list[np.ndarray | None],
                  train_ids: dict[str, Any]) -> list[np.ndarray | None]:
    """``masks`` with the embedding-table rows of ``train_ids`` (feature → ids) added."""
    emb = model.embedding
    masks = list(masks)
    i = next(k for k, v in enumerate(model.weights) if v is emb.table)
    mask = masks[i].copy()
    for feature, ids in train_ids.items():
        if feature == model.schema.domain_key or feature not in [f.name for f in model.schema.categorical]:
            raise ValueError(f"train_ids: {feature!r} is not a categorical feature of the schema")
        start, end = emb.table_rows(feature)
        ids = np.asarray(ids, np.int64).reshape(-1)
        if len(ids) and (ids.min() < 0 or ids.max() >= end - start):
            raise ValueError(f"train_ids[{feature!r}]: ids must lie in 0..{end - start - 1}")
        mask[start + ids] = True
    masks[i] = mask
    return masks


@contextlib.contextmanager
def onboarding_scope(model: keras.Model, domain: int | None = None,
                     train_ids: dict[str, Any] | None = None) -> Iterator[OnboardingScope]:
    """Freezes ``model`` for training only ``domain``'s private parameters; restores it on exit.

    Inside the scope: every shared variable is non-trainable; per-domain variables stay
    trainable (to be masked by ``scope.optimizer()``); every ``BatchNormalization`` layer
    without per-domain variables has ``trainable = False`` and so runs in inference mode
    (its moving statistics neither used from the batch nor updated). On exit the
    original ``trainable`` flags of layers and variables are restored.

    Args:
      model: the model.
      domain: the domain to train (default: the last).
      train_ids: optionally also train these embedding rows, ``{feature: ids}`` (e.g.
        ``unseen_ids``: users only the new domain has). An old domain's prediction then
        stays bit-identical only for inputs that contain none of these ids.
    """
    _check_model(model)
    d = model.num_domains
    domain = d - 1 if domain is None else int(domain)
    masks = private_masks(model, domain)
    if train_ids:
        masks = _with_id_rows(model, masks, train_ids)
    by_id = {id(v): m for v, m in zip(model.weights, masks)}
    var_flags = [(v, v.trainable) for v in model.weights]
    layer_flags = []
    frozen_bn = []
    for layer in model._flatten_layers(include_self=False):
        shared = all(by_id.get(id(w)) is None for w in layer.weights)
        if isinstance(layer, keras.layers.BatchNormalization) and shared:
            layer_flags.append((layer, layer.trainable))
            layer.trainable = False
            frozen_bn.append(layer.path if hasattr(layer, "path") else layer.name)
    opt_masks, pinned, count = [], [], 0
    for v, m in zip(model.weights, masks):
        if v.trainable and m is not None:
            opt_masks.append((v, m))
            count += int(m.sum())
        elif v.trainable:
            v.trainable = False
        else:  # non-trainable state: pinned outside the private slice
            pinned.append((v, np.asarray(ops.convert_to_numpy(v)), m))
    try:
        yield OnboardingScope(domain, masks, count, frozen_bn, opt_masks, pinned)
    finally:
        for layer, flag in layer_flags:
            layer.trainable = flag
        for v, flag in var_flags:
            v.trainable = flag


@dataclasses.dataclass
class OnboardingResult:
    """Outcome of ``onboard_domain``.

    Attributes:
      domain: the trained domain.
      stopper: the early-stopping callback (``best``: best validation AUC of the domain,
        ``best_epoch``, ``history``).
      seconds: wall time of the training.
      trainable_params: entries that training could change.
      cpu_seconds: CPU time of the process during the training (all threads; unlike
        wall time, not inflated when the machine is shared).
    """

    domain: int
    stopper: Any
    seconds: float
    trainable_params: int
    cpu_seconds: float = float("nan")


def onboard_domain(model: keras.Model, schema: Schema, cfg, domain: int | None = None,
                   log: Callable[[str], None] | None = None,
                   train_ids: dict[str, Any] | None = None) -> OnboardingResult:
    """Trains only ``domain``'s private parameters on that domain's data.

    Uses ``mdr_tf.training.fit`` with ``domains=[domain]`` (training batches of the new
    domain only, Keras' ``steps_per_execution`` loop), early stopping on the domain's
    exact validation AUC (best epoch restored), and a ``MaskedAdam`` inside
    ``onboarding_scope`` (shared variables frozen, other domains' slices pinned, shared
    BatchNorm in inference mode). Dropout still applies. Afterwards the model is
    recompiled with the plain optimizer of ``cfg``, so it saves, loads and exports as any
    model.

    Args:
      model: a model whose last domain (or ``domain``) is new, e.g. from ``add_domain``.
      schema: the dataset, with the same number of domains as the model.
      cfg: ``TrainConfig`` (epochs, batch size, learning rate, patience, seed, ...).
      domain: the domain to train (default: the last).
      log: per-epoch progress lines.
      train_ids: also train these embedding rows (see ``onboarding_scope``).
    """
    from mdr_tf import training

    _check_model(model)
    if schema.num_domains != model.num_domains:
        raise ValueError(f"the dataset has {schema.num_domains} domains, the model {model.num_domains}")
    domain = model.num_domains - 1 if domain is None else int(domain)
    if cfg.strategy != "default":
        raise ValueError("onboard_domain runs without a tf.distribute strategy (strategy='default')")
    with onboarding_scope(model, domain, train_ids) as scope:
        jit = cfg.jit_compile
        if jit == "auto":
            jit = getattr(model, "supports_jit", True)
        # Keras' steps_per_execution loop, not fit's fused K-step programs (compiled with
        # steps_per_execution=1): on an onboarding's few hundred steps their larger XLA
        # programs cost more to compile than they save (ML-100k MLoRA: 20.1 vs 11.8 CPU s).
        model.compile(optimizer=scope.optimizer(cfg.learning_rate, cfg.adam_epsilon),
                      loss=keras.losses.BinaryCrossentropy(), jit_compile=bool(jit),
                      steps_per_execution=cfg.steps_per_execution)
        stopper = training.ExactEarlyStopping(schema, "auc", cfg.patience, cfg.min_delta, cfg.eval_batch_size, log,
                                              domains=[domain])
        t0, c0 = time.time(), time.process_time()
        training.fit(model, schema, cfg, log=log, compile=False, stopper=stopper, domains=[domain])
        seconds, cpu = time.time() - t0, time.process_time() - c0
    training.compile_model(model, cfg)
    return OnboardingResult(domain, stopper, seconds, scope.trainable_params, cpu)


def count_private_params(model: keras.Model, domain: int | None = None) -> int:
    """Trainable entries private to ``domain`` (what ``onboard_domain`` trains)."""
    return sum(int(m.sum()) for v, m in zip(model.weights, private_masks(model, domain))
               if m is not None and v.trainable)


__all__ = ["DomainLayout", "MaskedAdam", "OnboardingResult", "OnboardingScope", "add_domain",
           "check_old_domains_unchanged", "count_private_params", "domain_layouts", "onboard_domain",
           "onboarding_scope", "private_masks", "private_parameters", "set_domain_layout", "unseen_ids"]

