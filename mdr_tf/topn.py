"""Top-N recommendation: model registry, BPR sampler, training, leave-one-out evaluation, export.

A separate task from the CTR models of ``mdr_tf.registry``: the models of
``mdr_tf.models.graph`` rank each test user's held-out target item against sampled
negatives (``data_prep.multibehavior``), reported as HR@10 and NDCG@10.

Training follows CIGF's official loop (docs/models/cigf.md, "Equations"):

* an epoch draws ``min(users_per_epoch, U)`` distinct random users, in batches of
  ``batch_users`` (256);
* for each user and each behaviour the model trains on: ``min(samples_per_user, |P_uk|)``
  positives drawn with replacement from the user's train row and as many uniform
  negatives outside it. A user without positives for a behaviour adds no pairs; a task
  with no pairs in a batch adds 0 to the loss (not the NaN of an empty mean);
* loss ``Σ_k mean softplus(−(s^k(u,i⁺) − s^k(u,i⁻))) + model.regularization``;
* Adam (ε = 1e-8), lr 1e-3 with staircase decay ×0.96 every ``users_per_epoch // batch_users``
  steps.

Evaluation: each test user's held-out item against its 99 negatives, scored by the
target task; rank = number of negatives scoring ≥ the positive (ties count against the
positive, like the official stable sort); HR@10 = [rank < 10], NDCG@10 = 1/log2(rank + 2)
if rank < 10. Model selection never looks at the test set (the official code reports the
best test epoch): with ``eval_every`` the target task is scored on the validation pairs
every ``eval_every`` epochs, the weights of the best validation NDCG@10 are kept (early
stopping after ``patience`` evaluations without improvement) and the test metrics are
computed once, with those weights.
"""

from __future__ import annotations

import dataclasses
import importlib
import os
import time
from typing import Any, Callable

import numpy as np

# ----------------------------------------------------------------------------- registry


@dataclasses.dataclass(frozen=True)
class TopNSpec:
    """A named top-N model.

    Attributes:
      name: flag name.
      builder: ``"module:Class"`` of a ``TopNModel``, or None for a training-free scorer.
      defaults: constructor arguments.
      train: ``TopNConfig`` overrides for this model (e.g. its learning rate).
      family: "seed" (CIGF and its ablations), "baseline" or "trivial" (popularity, random).
      description: one line.
    """

    name: str
    builder: str | None
    defaults: dict = dataclasses.field(default_factory=dict)
    family: str = "baseline"
    description: str = ""
    train: dict = dataclasses.field(default_factory=dict)

    def build(self, num_users: int, num_items: int, num_behaviors: int, **kwargs: Any):
        if self.builder is None:
            raise ValueError(f"top-N model {self.name!r} is a training-free scorer")
        module, _, attr = self.builder.partition(":")
        cls = getattr(importlib.import_module(module), attr)
        return cls(num_users=num_users, num_items=num_items, num_behaviors=num_behaviors,
                   **{**self.defaults, **kwargs})


_G = "mdr_tf.models.graph:"
TOPN_REGISTRY: dict[str, TopNSpec] = {s.name: s for s in [
    TopNSpec("cigf", _G + "CIGF", {}, "seed",
             "CIGF: CIGCN (per-node mixing of all behaviour graphs) + MESI, BPR on every behaviour"),
    TopNSpec("cigf_no_mesi", _G + "CIGF", {"use_gate": False}, "seed",
             "CIGF ablation: task k scores with its own expert only, s^k = 300·<Z^k_u, Z^k_i>"),
    TopNSpec("cigf_no_mixing", _G + "CIGF", {"mixing": False}, "seed",
             "CIGF ablation: every hop follows behaviour k's own graph (no multi-behaviour mixing)"),
    TopNSpec("cigf_target_only", _G + "CIGF", {"target_only": True}, "seed",
             "CIGF ablation: the target behaviour only (one graph, one task): no multi-behaviour data"),
    TopNSpec("lightgcn", _G + "LightGCN", {}, "baseline", "LightGCN (L = 2, symmetric norm) on the target graph"),
    TopNSpec("mf_bpr", _G + "MFBPR", {}, "baseline", "MF-BPR on the target behaviour"),
    TopNSpec("popularity", None, {"behavior": -1}, "trivial", "items ranked by train target-behaviour degree"),
    TopNSpec("random", None, {}, "trivial", "uniform random scores"),
]}


def get(name: str) -> TopNSpec:
    if name not in TOPN_REGISTRY:
        raise ValueError(f"unknown top-N model {name!r}; available: {', '.join(TOPN_REGISTRY)}")
    return TOPN_REGISTRY[name]


# ----------------------------------------------------------------------------- sampler


class BPRSampler:
    """Per-behaviour (user, positive, negative) sampler with CIGF's rules.

    Args:
      users, items: the behaviour's train edges.
      num_users, num_items: id ranges.
      samples_per_user: positives per user (≤ its degree), drawn with replacement.
      rng: numpy Generator.
    """

    def __init__(self, users: np.ndarray, items: np.ndarray, num_users: int, num_items: int,
                 samples_per_user: int, rng: np.random.Generator):
        self.num_items = int(num_items)
        self.keys = np.unique(np.asarray(users, np.int64) * num_items + np.asarray(items, np.int64))
        self.items = self.keys % num_items
        self.indptr = np.searchsorted(self.keys, np.arange(num_users + 1, dtype=np.int64) * num_items)
        self.samples_per_user = int(samples_per_user)
        self.rng = rng

    def degree(self, users: np.ndarray) -> np.ndarray:
        return self.indptr[users + 1] - self.indptr[users]

    def sample(self, batch_users: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        batch_users = np.asarray(batch_users, np.int64)
        deg = self.degree(batch_users)
        n = np.minimum(self.samples_per_user, deg)  # users without positives add no pairs
        u = np.repeat(batch_users, n)
        start = np.repeat(self.indptr[batch_users], n)
        pos = self.items[start + (self.rng.random(len(u)) * np.repeat(deg, n)).astype(np.int64)]
        neg = self.rng.integers(0, self.num_items, len(u))
        todo = np.arange(len(u))
        for _ in range(1000):  # rejection: a negative is outside the user's train row
            k = u[todo] * self.num_items + neg[todo]
            j = np.minimum(np.searchsorted(self.keys, k), len(self.keys) - 1)
            bad = todo[self.keys[j] == k] if len(self.keys) else todo[:0]
            if not len(bad):
                break
            neg[bad] = self.rng.integers(0, self.num_items, len(bad))
            todo = bad
        else:
            raise ValueError(f"users {np.unique(u[todo])[:5].tolist()}: no negative item found "
                             "(a user has a positive for every item)")
        return u, pos, neg


# ----------------------------------------------------------------------------- evaluation


def rank_metrics(pos_scores: np.ndarray, neg_scores: np.ndarray, k: int = 10) -> dict[str, np.ndarray]:
    """Per test user: rank of the positive among [pos, negatives] (0 = top), HR@k and NDCG@k."""
    pos = np.asarray(pos_scores, np.float64).reshape(-1, 1)
    neg = np.asarray(neg_scores, np.float64)
    rank = (neg >= pos).sum(axis=1)  # ties count against the positive
    hit = (rank < k).astype(np.float64)
    ndcg = np.where(rank < k, 1.0 / np.log2(rank + 2.0), 0.0)
    return {"rank": rank, "hr": hit, "ndcg": ndcg}


def summarize(metrics: dict[str, np.ndarray], test_domain: np.ndarray, num_domains: int, k: int = 10,
              prefix: str = "test_") -> dict[str, float]:
    """Overall and per-domain HR@k / NDCG@k means."""
    out = {f"{prefix}hr{k}": float(metrics["hr"].mean()), f"{prefix}ndcg{k}": float(metrics["ndcg"].mean()),
           f"{prefix}n": int(len(metrics["hr"]))}
    for d in range(num_domains):
        m = test_domain == d
        out[f"{prefix}hr{k}_d{d}"] = float(metrics["hr"][m].mean()) if m.any() else float("nan")
        out[f"{prefix}ndcg{k}_d{d}"] = float(metrics["ndcg"][m].mean()) if m.any() else float("nan")
        out[f"{prefix}n_d{d}"] = int(m.sum())
    return out


SPLITS = ("test", "valid")


def split_arrays(data, split: str = "test") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(users [T], held-out items [T], negatives [T, n]) of the ``"test"`` or ``"valid"`` split."""
    if split == "test":
        return data.test_users, data.test_items, data.negatives
    if split == "valid":
        return data.valid_users, data.valid_items, data.valid_negatives
    raise ValueError(f"split {split!r}: expected one of {SPLITS}")


def candidate_scores(score_fn: Callable[[np.ndarray, np.ndarray], np.ndarray], data,
                     split: str = "test") -> tuple[np.ndarray, np.ndarray]:
    """Scores of the held-out items [T] and of the negatives [T, n] with ``score_fn(users, items)``."""
    users0, items0, negatives = split_arrays(data, split)
    T, n = negatives.shape
    users = np.repeat(users0, n + 1)
    items = np.concatenate([items0[:, None], negatives], axis=1).reshape(-1)
    s = np.asarray(score_fn(users, items)).reshape(T, n + 1)
    return s[:, 0], s[:, 1:]


def evaluate_scorer(score_fn, data, k: int = 10, split: str = "test") -> dict[str, float]:
    """HR@k / NDCG@k of ``split`` (keys ``{split}_hr10``, ...), overall and per domain."""
    users = split_arrays(data, split)[0]
    if not len(users):
        raise ValueError(f"the data has no {split} pairs (prepared with validation=False?)")
    pos, neg = candidate_scores(score_fn, data, split)
    return summarize(rank_metrics(pos, neg, k), data.user_domain[users], data.num_domains, k, prefix=f"{split}_")


def trivial_scorer(name: str, data, seed: int = 0, behavior: int = -1) -> Callable:
    """``popularity`` (train degree of the item in ``behavior``) or ``random`` (seeded uniform)."""
    if name == "popularity":
        pop = np.bincount(data.train_items[behavior], minlength=data.num_items).astype(np.float64)
        return lambda users, items: pop[items]
    if name == "random":
        rng = np.random.default_rng(seed)
        return lambda users, items: rng.random(len(items))
    raise ValueError(f"unknown trivial scorer {name!r}")


# ----------------------------------------------------------------------------- training


@dataclasses.dataclass
class TopNConfig:
    """Training settings (defaults: CIGF's official code, with fewer epochs)."""

    epochs: int = 100
    batch_users: int = 256
    samples_per_user: int = 40
    users_per_epoch: int = 10000
    learning_rate: float = 1e-3
    lr_decay: float = 0.96
    decay_steps: int | None = None  # None: users_per_epoch // batch_users (the code's decay_step)
    seed: int = 0
    eval_every: int = 0  # > 0: validation NDCG@10 every eval_every epochs, keep the best weights
    patience: int = 0  # > 0: stop after this many evaluations without improvement (0: run all epochs)


def graph_inputs(model, data) -> list:
    """The normalised adjacencies of the model's behaviours (empty for graph-free models)."""
    from mdr_tf.layers.graph import SparseAdjacency, bipartite_adjacency

    if model.adjacency_norm is None:
        return []
    return [SparseAdjacency(bipartite_adjacency(data.train_users[k], data.train_items[k], data.num_users,
                                                data.num_items, model.adjacency_norm)) for k in model.behaviors]


def bpr_loss(pos, neg):
    """``mean softplus(−(pos − neg))``, 0 for an empty batch (no NaN)."""
    from keras import ops

    n = ops.maximum(ops.cast(ops.shape(pos)[0], "float32"), 1.0)
    return ops.sum(ops.softplus(neg - pos)) / n


def make_train_step(model, adjacencies: list, optimizer):
    """A ``tf.function`` step over the flat (users, pos, neg) × tasks; returns (loss, bpr)."""
    import tensorflow as tf

    from mdr_tf.optimizers import sum_duplicate_rows

    T = len(model.behaviors)
    spec = [tf.TensorSpec([None], tf.int64)] * (3 * T)

    @tf.function(input_signature=spec)
    def step(*flat):
        with tf.GradientTape() as tape:
            z = model.propagate(adjacencies)
            bpr = 0.0
            reg = 0.0
            for t in range(T):
                u, p, n = flat[3 * t:3 * t + 3]
                bpr += bpr_loss(model.score(z, u, p, t), model.score(z, u, n, t))
                reg += model.regularization(u, p, n)
            # CIGF regularises the full tables once per step; per-batch terms are per task.
            loss = bpr + reg
        variables = model.trainable_variables
        grads = sum_duplicate_rows(tape.gradient(loss, variables))  # duplicate ids summed, as TF1's Adam
        optimizer.apply_gradients([(g, v) for g, v in zip(grads, variables) if g is not None])
        return loss, bpr

    return step


def model_scorer(model, adjacencies: list) -> Callable:
    """``fn(users, items) -> scores`` of the target task with the representations computed once."""
    import tensorflow as tf

    z = model.propagate(adjacencies)
    target = len(model.behaviors) - 1

    def fn(users, items):
        out = []
        for s in range(0, len(users), 65536):
            u = tf.constant(users[s:s + 65536], tf.int64)
            i = tf.constant(items[s:s + 65536], tf.int64)
            out.append(np.asarray(model.score(z, u, i, target)))
        return np.concatenate(out)

    return fn


def train(model, data, cfg: TopNConfig, log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Trains ``model`` on ``data``; returns {"epoch_seconds", "train_seconds", "final_loss", "steps",
    "epochs_run"} and, with ``cfg.eval_every``, "best_epoch", "valid_curve" and the validation metrics
    of the best epoch (``valid_hr10``, ...), whose weights the model holds on return.

    Selection uses validation NDCG@10 only (ties keep the earlier epoch); the test split is
    never read here.
    """
    import keras
    import tensorflow as tf

    adjs = graph_inputs(model, data)
    model.set_graph(adjs)
    rng = np.random.default_rng(cfg.seed)
    samplers = [BPRSampler(data.train_users[k], data.train_items[k], data.num_users, data.num_items,
                           cfg.samples_per_user, rng) for k in model.behaviors]
    decay_steps = cfg.decay_steps or max(cfg.users_per_epoch // cfg.batch_users, 1)
    schedule = keras.optimizers.schedules.ExponentialDecay(cfg.learning_rate, decay_steps, cfg.lr_decay,
                                                           staircase=True)
    optimizer = keras.optimizers.Adam(learning_rate=schedule, epsilon=1e-8)
    step = make_train_step(model, adjs, optimizer)
    epoch_times, loss, steps = [], float("nan"), 0
    validate = cfg.eval_every > 0
    if validate and not len(data.valid_users):
        raise ValueError("eval_every > 0 needs validation pairs: prepare the data with validation=True")
    best: dict[str, Any] = {"score": -np.inf, "epoch": 0, "metrics": {}, "weights": None}
    curve, since_best, epochs_run = [], 0, 0
    t_all = time.time()
    for epoch in range(cfg.epochs):
        t0 = time.time()
        ids = rng.permutation(data.num_users)[:cfg.users_per_epoch]
        total, nb = 0.0, 0
        for s in range(0, len(ids), cfg.batch_users):
            flat = []
            for sampler in samplers:
                flat += [tf.constant(a, tf.int64) for a in sampler.sample(ids[s:s + cfg.batch_users])]
            l, _ = step(*flat)
            total += float(l)
            nb += 1
            steps += 1
        loss = total / max(nb, 1)
        epoch_times.append(time.time() - t0)
        epochs_run = epoch + 1
        if log and (epoch == 0 or (epoch + 1) % max(cfg.epochs // 5, 1) == 0 or epoch + 1 == cfg.epochs):
            log(f"  epoch {epoch + 1}/{cfg.epochs}: loss {loss:.4f} ({epoch_times[-1]:.2f}s)")
        if validate and ((epoch + 1) % cfg.eval_every == 0 or epoch + 1 == cfg.epochs):
            metrics = evaluate_scorer(model_scorer(model, adjs), data, split="valid")
            curve.append((epoch + 1, metrics["valid_hr10"], metrics["valid_ndcg10"]))
            if metrics["valid_ndcg10"] > best["score"]:
                best = {"score": metrics["valid_ndcg10"], "epoch": epoch + 1, "metrics": metrics,
                        "weights": [np.array(v.numpy()) for v in model.weights]}
                since_best = 0
            else:
                since_best += 1
            if cfg.patience and since_best >= cfg.patience:
                if log:
                    log(f"  early stop at epoch {epoch + 1}: best validation NDCG@10 "
                        f"{best['score']:.4f} at epoch {best['epoch']}")
                break
    out: dict[str, Any] = {"epoch_seconds": float(np.median(epoch_times)) if epoch_times else float("nan"),
                           "train_seconds": time.time() - t_all, "final_loss": loss, "steps": steps,
                           "epochs_run": epochs_run}
    if validate:
        if best["weights"] is not None:
            for v, w in zip(model.weights, best["weights"]):
                v.assign(w)
        out.update(best["metrics"])
        out["best_epoch"] = best["epoch"]
        out["valid_curve"] = curve
    # The first epoch includes tracing; the median is reported.
    return out


def run_trial(name: str, data, cfg: TopNConfig, model_kwargs: dict[str, Any] | None = None,
              log: Callable[[str], None] | None = None, return_model: bool = False):
    """Builds, trains and evaluates one model; returns the trial row (and the model)."""
    import keras

    spec = get(name)
    row: dict[str, Any] = {"model": name, "seed": cfg.seed}
    model = None
    if spec.builder is None:
        t0 = time.time()
        fn = trivial_scorer(name, data, seed=cfg.seed, **spec.defaults)
        if cfg.eval_every and len(data.valid_users):
            row.update(evaluate_scorer(fn, data, split="valid"))
        row.update(evaluate_scorer(fn, data))
        row.update({"epoch_seconds": 0.0, "train_seconds": time.time() - t0, "params_total": 0})
    else:
        keras.utils.set_random_seed(cfg.seed)
        model = spec.build(data.num_users, data.num_items, data.num_behaviors, **(model_kwargs or {}))
        info = train(model, data, cfg, log=log)
        row.update(info)
        row["params_total"] = int(sum(int(np.prod(v.shape)) for v in model.trainable_variables))
        row.update(evaluate_scorer(model_scorer(model, model._graph), data))  # best-validation weights
    return (row, model) if return_model else row


# ----------------------------------------------------------------------------- export


def export_topn(model, directory: str) -> str:
    """Writes ``embeddings.npz`` (Z per task: ``user`` [T, U, d], ``item`` [T, I, d]) and a
    SavedModel ``saved_model/`` whose ``serving_default(user, item)`` returns ``{"score"}``,
    the target-task score (for CIGF, MESI's gated score). Atomic: a temp folder renamed into place.

    The graph representations are computed once (the graph is fixed after training), so
    serving is two gathers and the decoder. Ids outside [0, U) / [0, I) are rejected.
    """
    import tensorflow as tf

    from mdr_base.atomic import AtomicDir

    if model.adjacency_norm is not None and model._graph is None:
        raise ValueError("export_topn: the model has no graph; train it (or call set_graph) first")
    z = model.propagate(model._graph or [])
    U = model.num_users
    with AtomicDir(directory) as tmp:  # renamed into place (replacing an older export) when complete
        zn = np.asarray(z)
        np.savez(os.path.join(tmp, "embeddings.npz"), user=zn[:, :U], item=zn[:, U:],
                 behaviors=np.array(model.behaviors))
        scorer = _Scorer(model, zn)
        tf.saved_model.save(scorer, os.path.join(tmp, "saved_model"),
                            signatures={"serving_default": scorer.serve})
    return directory


def _scorer_class():
    import tensorflow as tf

    class Scorer(tf.Module):
        def __init__(self, model, z: np.ndarray):
            super().__init__()
            self.model = model
            self.z = tf.Variable(z, trainable=False, name="representations")
            self.num_users = model.num_users
            self.num_items = model.num_items
            self.target = len(model.behaviors) - 1

        @tf.function(input_signature=[tf.TensorSpec([None], tf.int64, name="user"),
                                      tf.TensorSpec([None], tf.int64, name="item")])
        def serve(self, user, item):
            checks = [tf.debugging.assert_non_negative(user, message="user id < 0"),
                      tf.debugging.assert_less(user, tf.constant(self.num_users, tf.int64), message="user id >= U"),
                      tf.debugging.assert_non_negative(item, message="item id < 0"),
                      tf.debugging.assert_less(item, tf.constant(self.num_items, tf.int64), message="item id >= I")]
            with tf.control_dependencies(checks):
                return {"score": self.model.score(self.z, user, item, self.target)}

    return Scorer


def _Scorer(model, z):
    return _scorer_class()(model, z)
