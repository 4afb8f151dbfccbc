"""Prequential (test-then-train) streaming with embedding assignment policies (AutoAssign+).

A stream is cut into time-ordered chunks. For each chunk ``t``: the counters are set
from the events of chunks ``< t`` only; the model predicts the chunk (the test); the
AutoAssign+ agent turns those losses into rewards for its previous decisions, trains its
critic and keep head, and decides which ids (seen before, or in chunk ``t``) hold a row
while the recommender trains on chunk ``t`` and is tested on chunk ``t + 1``; the
recommender trains on the chunk; the counters take in the chunk.

AutoAssign+ is reconstructed from its abstract only (no paper body, no code): see
``mdr_tf/layers/assignment.py`` and ``docs/models/autoassign.md`` for every choice.
"""

from __future__ import annotations

import collections
import time
from typing import Any, Callable, Sequence

import keras
import numpy as np
import tensorflow as tf

from mdr_tf import metrics as M
from mdr_tf.layers.assignment import managed_fields
from mdr_tf.optimizers import sum_duplicate_rows


def chunk_index(n: int, num_chunks: int) -> np.ndarray:
    """Chunk id of each of ``n`` time-ordered events: ``num_chunks`` equal-count chunks."""
    if not 1 <= num_chunks <= n:
        raise ValueError(f"num_chunks={num_chunks}: expected 1 <= num_chunks <= {n} events")
    return (np.arange(n) * num_chunks // n).astype(np.int64)


class StreamCounter:
    """Per-field event counts and last-seen chunk, updated only at chunk ends.

    ``counts[k][x]`` / ``last[k][x]`` describe the events of the chunks passed to
    ``update`` so far; a chunk's own events are added after it has been tested and trained.
    """

    def __init__(self, fields: Sequence[str], vocab: Sequence[int]):
        self.fields = list(fields)
        self.counts = [np.zeros(v, np.int64) for v in vocab]
        self.last = [np.full(v, -1, np.int64) for v in vocab]
        self.chunks_seen = 0

    def update(self, chunk: int, ids: dict[str, np.ndarray]) -> None:
        if chunk < self.chunks_seen:
            raise ValueError(f"StreamCounter.update: chunk {chunk} after chunk {self.chunks_seen - 1}")
        for k, f in enumerate(self.fields):
            x = np.asarray(ids[f], np.int64)
            np.add.at(self.counts[k], x, 1)
            self.last[k][x] = chunk
        self.chunks_seen = chunk + 1

    def prior(self, field: str, ids: np.ndarray) -> np.ndarray:
        return self.counts[self.fields.index(field)][np.asarray(ids, np.int64)]

    def seen(self, k: int) -> np.ndarray:
        """Ids of field ``k`` with at least one counted event (id 0 = OOV excluded)."""
        s = self.counts[k] > 0
        s[0] = False
        return np.flatnonzero(s)


def _reset_optimizer_rows(optimizer, variable, rows: np.ndarray) -> None:
    """Zeroes ``rows`` of every slot (Adam momentum / velocity) the optimizer keeps for ``variable``."""
    if optimizer is None or not getattr(optimizer, "built", False) or len(rows) == 0:
        return
    try:
        i = optimizer._get_variable_index(variable)
    except (KeyError, ValueError, AttributeError):
        return
    idx = tf.constant(np.asarray(rows, np.int64)[:, None])
    for name in ("_momentums", "_velocities", "_velocity_hats"):
        slots = getattr(optimizer, name, None)
        if slots:
            s = slots[i]
            s.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(s), idx,
                                                 tf.zeros([len(rows), s.shape[1]], s.dtype)))


def _set_rows(variable, rows: np.ndarray, values) -> None:
    idx = tf.constant(np.asarray(rows, np.int64)[:, None])
    variable.assign(tf.tensor_scatter_nd_update(tf.convert_to_tensor(variable), idx,
                                                tf.cast(values, variable.dtype)))


def reset_allocation(embedding) -> int:
    """Autoassign: zero the rows of ids outside the kept set (they are not allocated). Returns rows zeroed."""
    layer = embedding.assignment
    total = 0
    for k, name in enumerate(layer.fields):
        start, _ = embedding.table_rows(name)
        free = np.flatnonzero(np.asarray(layer.kept[k].numpy()) < 0.5)
        if len(free):
            _set_rows(embedding.table, start + free, tf.zeros([len(free), layer.embedding_dim]))
        total += len(free)
    return total


def apply_decisions(embedding, k: int, admit: np.ndarray, evict: np.ndarray, optimizer=None) -> np.ndarray:
    """Admits / evicts ids of managed field ``k``; returns the admitted rows' initial values.

    An admitted id's row is allocated and initialised to its shared mixture
    ``Σ_j β_j P_f[j]`` (computed from the state before admission); an evicted id's row
    is freed (zeroed). The optimizer's slots of both are reset (a fresh row).
    """
    layer = embedding.assignment
    name = layer.fields[k]
    start, _ = embedding.table_rows(name)
    admit = np.asarray(admit, np.int64)
    evict = np.asarray(evict, np.int64)
    init = np.zeros([0, layer.embedding_dim], np.float32)
    if len(admit):
        own = tf.gather(tf.convert_to_tensor(embedding.table), start + admit)
        mix, _ = layer.mixture(k, tf.constant(admit, tf.int32), own, training=True)
        init = np.asarray(mix, np.float32)
        _set_rows(embedding.table, start + admit, init)
    if len(evict):
        _set_rows(embedding.table, start + evict, tf.zeros([len(evict), layer.embedding_dim]))
    _reset_optimizer_rows(optimizer, embedding.table, start + np.concatenate([admit, evict]))
    kept = np.asarray(layer.kept[k].numpy()).copy()
    kept[admit] = 1.0
    kept[evict] = 0.0
    layer.kept[k].assign(kept)
    return init


class AutoAssignAgent:
    """The critic and the keep head's training (AutoAssign+, reconstructed; ours throughout).

    Before training on chunk ``t`` every id ``x`` of a managed field seen so far or in the
    chunk gets an action ``a_x = 1[ρ_x > ½]``, set to 1 with probability ``epsilon``
    (exploration by admission only). Its reward,
    observed when chunk ``t + 1`` is tested, is ``r_x = −Σ_{i ∈ chunk t+1, x_i = x} BCE_i
    − memory_weight · a_x``: the id's test loss in the next chunk, minus the memory cost of a
    row. For an id kept at test time the reward of the other action is observed too: the
    same examples re-scored with the field's rows replaced by the shared mixtures
    (``observe(shared_losses=...)``). The critic ``Q_φ(s, a) = V_φ(s) + a · A_φ(s)`` regresses
    ``r`` (MSE, one step, γ = 0) on the last ``replay_chunks`` chunks of (s, a, r); the keep
    head maximises ``Q_φ(s, ρ_θ(s))`` with the relaxed action ``ρ`` (DDPG), i.e. it raises ρ
    where the learned advantage ``A_φ(s)`` of a row is positive. The first
    ``warmup_chunks`` decisions keep every id (the critic has no data yet). The β head is
    trained by the recommender loss itself (see ``EmbeddingAssignment``).

    Args:
      layer: the model's ``EmbeddingAssignment`` (policy "autoassign").
      memory_weight: λ, BCE nats per row per chunk (ours: 0.01).
      critic_units: critic hidden width (ours: 32).
      learning_rate: Adam rate of the critic.
      actor_learning_rate: Adam rate of the keep head (small: decisions should not swing).
      critic_steps / actor_steps: updates per chunk; batch_size: their batch.
      epsilon: exploration (probability of admitting an id the keep head would not keep).
      replay_chunks: chunks of (s, a, r) the critic trains on.
      warmup_chunks: first decisions that keep every id.
      actor_objective: "ddpg" (ascend ``Q(s, ρ(s))``) or "greedy" (fit ρ to ``1[A(s) > 0]`` by
        cross-entropy: the critic's greedy policy, distilled).
      reward_chunks: H, chunks over which a decision's return is summed (1: the next chunk
        only, γ = 0). With H > 1 the return is ``−Σ_h (BCE sums + λ·1[row held])`` over chunks
        t+1..t+H and the advantage target sums what the row earned while it was held.
      seed: exploration and sampling seed.
    """

    def __init__(self, layer, memory_weight: float = 0.01, critic_units: int = 32, learning_rate: float = 1e-3,
                 critic_steps: int = 200, actor_steps: int = 100, batch_size: int = 256, epsilon: float = 0.02,
                 replay_chunks: int = 4, warmup_chunks: int = 5, actor_learning_rate: float = 3e-4,
                 actor_objective: str = "ddpg", reward_chunks: int = 1, seed: int = 0):
        if actor_objective not in ("ddpg", "greedy"):
            raise ValueError(f"AutoAssignAgent: actor_objective={actor_objective!r}, expected 'ddpg' or 'greedy'")
        greedy = actor_objective == "greedy"
        self.actor_objective = actor_objective
        self.layer = layer
        self.warmup_chunks = int(warmup_chunks)
        self.decisions = 0
        self.memory_weight = float(memory_weight)
        self.critic_steps, self.actor_steps = int(critic_steps), int(actor_steps)
        self.batch_size = int(batch_size)
        self.epsilon = float(epsilon)
        self.rng = np.random.default_rng(seed)
        # The critic sees [log1p c, log1p age, is_new, onehot(f)]: not the kept flag nor the row,
        # so what it learns from kept ids' counterfactual rewards carries over to admissions.
        self.critic_columns = np.array([0, 1] + list(range(3, 4 + len(layer.fields))))
        sdim = len(self.critic_columns)
        r = np.random.default_rng([seed, 1])
        # Q(s, a) = V(s) + a · A(s): a trunk and two linear heads (value, advantage of keeping).
        self.critic = [tf.Variable(r.normal(0, (1 / sdim) ** 0.5, (sdim, critic_units)).astype(np.float32)),
                       tf.Variable(np.zeros(critic_units, np.float32)),
                       tf.Variable(r.normal(0, (1 / critic_units) ** 0.5, (critic_units, 2)).astype(np.float32)),
                       tf.Variable(np.zeros(2, np.float32))]
        self.critic_opt = keras.optimizers.Adam(learning_rate)
        self.actor_opt = keras.optimizers.Adam(actor_learning_rate)
        self.buffer: collections.deque = collections.deque(maxlen=int(replay_chunks) * len(layer.fields))
        self.reward_chunks = int(reward_chunks)
        if self.reward_chunks < 1:
            raise ValueError(f"AutoAssignAgent: reward_chunks={reward_chunks} must be >= 1")
        self.pending: dict[int, tuple[np.ndarray, np.ndarray, np.ndarray]] = {}
        # decisions whose reward window is still open: (field, ids, states, actions, sums, chunks seen)
        self.open: collections.deque = collections.deque()
        self.last_critic_loss = float("nan")
        keep_vars = [v.value if hasattr(v, "value") else v for v in layer.keep_variables]
        self._keep_vars = keep_vars

        cols = tf.constant(self.critic_columns)

        def q(s, a):
            s = tf.gather(s, cols, axis=1)
            h = tf.nn.relu(tf.matmul(s, self.critic[0]) + self.critic[1])
            va = tf.matmul(h, self.critic[2]) + self.critic[3]
            return va[:, 0] + a * va[:, 1]

        def advantage(s):
            return q(s, tf.ones_like(s[:, 0])) - q(s, tf.zeros_like(s[:, 0]))

        @tf.function(reduce_retracing=True)
        def critic_steps(s, a, r, d, paired, index):  # index [steps, batch]: the sampled rows of every step
            loss = tf.constant(0.0)
            for i in tf.range(tf.shape(index)[0]):
                b = index[i]
                sb, pb = tf.gather(s, b), tf.gather(paired, b)
                with tf.GradientTape() as tape:
                    # MSE of Q(s, a) on the observed reward, plus, where both actions were
                    # observed, MSE of the advantage A(s) on the paired difference r(1) − r(0).
                    loss = tf.reduce_mean(tf.square(q(sb, tf.gather(a, b)) - tf.gather(r, b)))
                    loss += tf.reduce_sum(pb * tf.square(advantage(sb) - tf.gather(d, b))) / tf.maximum(
                        tf.reduce_sum(pb), 1.0)
                self.critic_opt.apply(tape.gradient(loss, self.critic), self.critic)
            return loss

        @tf.function(reduce_retracing=True)
        def actor_steps(s, index):
            loss = tf.constant(0.0)
            for i in tf.range(tf.shape(index)[0]):
                sb = tf.gather(s, index[i])
                with tf.GradientTape() as tape:
                    tape.watch(keep_vars)
                    rho = layer.keep_probability(sb)
                    if greedy:  # fit ρ to the critic's greedy action 1[A(s) > 0]
                        target = tf.cast(advantage(sb) > 0, tf.float32)
                        loss = tf.reduce_mean(keras.losses.binary_crossentropy(target[:, None], rho[:, None]))
                    else:  # DDPG: ascend Q(s, ρ(s)) = V(s) + ρ(s) A(s)
                        loss = -tf.reduce_mean(q(sb, rho))
                self.actor_opt.apply(tape.gradient(loss, keep_vars), layer.keep_variables)
            return loss

        self.q, self.advantage, self._critic_steps, self._actor_steps = q, advantage, critic_steps, actor_steps

    def observe(self, local_ids: dict[str, np.ndarray], losses: np.ndarray,
                shared_losses: dict[str, np.ndarray] | None = None) -> None:
        """Rewards for the pending decisions from the per-example test losses of the new chunk.

        ``shared_losses[field]``: the same examples' losses with that field's kept rows
        replaced by their shared mixtures (the counterfactual "not kept"). For an id kept
        at test time it gives the reward of the other action as well.
        """
        losses = np.asarray(losses, np.float64)
        for k, (ids, states, actions) in self.pending.items():
            self.open.append([k, ids, states, actions, np.zeros(len(ids)), np.zeros(len(ids)), np.zeros(len(ids)), 0])
        per_field = {}
        for k, name in enumerate(self.layer.fields):
            x = np.asarray(local_ids[name], np.int64)
            v = self.layer.vocab[k]
            loss_sum = np.bincount(x, weights=losses, minlength=v)
            gain = np.zeros(v)
            if shared_losses is not None and name in shared_losses:
                gain = np.bincount(x, weights=np.asarray(shared_losses[name], np.float64), minlength=v) - loss_sum
            per_field[k] = (loss_sum, gain, np.asarray(self.layer.kept[k].numpy()) > 0.5)
        still_open = collections.deque()
        for entry in self.open:
            k, ids, states, actions, ret, adv, held, n = entry
            loss_sum, gain, kept_now = per_field[k]
            kept = kept_now[ids]
            ret -= loss_sum[ids] + self.memory_weight * kept  # return: −Σ BCE − λ·(chunks the row was held)
            adv += np.where(kept, gain[ids] - self.memory_weight, 0.0)  # what the held row earned, net of λ
            held += kept
            entry[7] = n + 1
            if entry[7] < self.reward_chunks:
                still_open.append(entry)
                continue
            paired = (actions > 0.5).astype(np.float64) if shared_losses is not None else np.zeros(len(ids))
            self.buffer.append(tuple(v.astype(np.float32) for v in (states, actions, ret, adv, paired)))
        self.open = still_open
        self.pending = {}

    def train(self) -> None:
        if not self.buffer:
            return
        s, a, r, d, paired = (np.concatenate([b[j] for b in self.buffer]) for j in range(5))
        n, b = len(r), min(self.batch_size, len(r))
        if not self.critic_opt.built:  # optimizer variables are created outside the traced loop
            self.critic_opt.build(self.critic)
            self.actor_opt.build(self.layer.keep_variables)
        ci = self.rng.integers(0, n, (self.critic_steps, b))
        self.last_critic_loss = float(self._critic_steps(*(tf.constant(v) for v in (s, a, r, d, paired, ci))))
        if self.decisions < self.warmup_chunks:  # the keep head waits for a critic fit on grown rows
            return
        ai = self.rng.integers(0, n, (self.actor_steps, b))
        self._actor_steps(tf.constant(s), tf.constant(ai))

    def decide(self, embedding, counter: StreamCounter, chunk_ids: dict[str, np.ndarray] | None = None,
               optimizer=None) -> dict[str, int]:
        """Keep / admit / evict every seen id (and every id of the chunk about to be trained)."""
        layer = self.layer
        stats = {"admitted": 0, "evicted": 0}
        for k, name in enumerate(layer.fields):
            ids = counter.seen(counter.fields.index(name))
            if chunk_ids is not None:
                ids = np.union1d(ids, np.asarray(chunk_ids[name], np.int64))
                ids = ids[ids > 0]
            if not len(ids):
                continue
            start, _ = embedding.table_rows(name)
            own = tf.gather(tf.convert_to_tensor(embedding.table), start + ids)
            s = layer.state(k, tf.constant(ids, tf.int32), own)
            rho = np.asarray(layer.keep_probability(s))
            act = rho > 0.5
            # exploration only admits: a kept id's "not kept" reward is observed anyway
            # (counterfactual), and a random eviction would throw a learned row away
            act |= self.rng.random(len(ids)) < self.epsilon
            if self.decisions < self.warmup_chunks:  # warm-up: keep every id, collect rewards
                act = np.ones(len(ids), bool)
            kept = np.asarray(layer.kept[k].numpy())[ids] > 0.5
            self.pending[k] = (ids, np.asarray(s, np.float32), act.astype(np.float32))
            apply_decisions(embedding, k, ids[act & ~kept], ids[~act & kept], optimizer)
            stats["admitted"] += int((act & ~kept).sum())
            stats["evicted"] += int((~act & kept).sum())
            stats[f"kept_{name}"] = int(act.sum())
        self.decisions += 1
        return stats


def rows_held(model, counter: StreamCounter, fields: Sequence[str]) -> int:
    """Rows the model's policy holds for the managed ``fields`` (full: one per seen id)."""
    layer = model.embedding.assignment
    if layer is None:
        return int(sum(len(counter.seen(counter.fields.index(f))) for f in fields))
    return layer.rows_held()


def make_train_step(model, optimizer) -> Callable:
    """One Adam step on binary cross-entropy over the model's trainable variables."""
    loss_fn = keras.losses.BinaryCrossentropy()
    variables = model.trainable_variables

    @tf.function(reduce_retracing=True)
    def step(x, y):
        with tf.GradientTape() as tape:
            loss = loss_fn(y, model(x, training=True))
        grads = sum_duplicate_rows(tape.gradient(loss, variables))  # duplicate ids summed (optimizers.py)
        pairs = [(g, v) for g, v in zip(grads, variables) if g is not None]
        optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
        return loss

    return step


def run_stream(
    model,
    features: dict[str, np.ndarray],
    labels: np.ndarray,
    chunks: np.ndarray,
    *,
    learning_rate: float = 1e-3,
    batch_size: int = 256,
    epochs_per_chunk: int = 1,
    seed: int = 0,
    agent_kwargs: dict[str, Any] | None = None,
    cold_threshold: int = 5,
    cold_fields: Sequence[str] = ("user_id", "item_id"),
    eval_batch_size: int = 4096,
    log: Callable[[str], None] | None = None,
    on_test: Callable[[int, Any, StreamCounter], None] | None = None,
) -> dict[str, Any]:
    """Runs the prequential protocol; returns per-chunk records and all test predictions.

    Args:
      model: a built ``MultiDomainModel`` (any registry model), with or without an
        ``embedding_assignment``.
      features: time-ordered input columns (incl. the domain key); labels: [n].
      chunks: chunk id of each event (non-decreasing, e.g. ``chunk_index``).
      learning_rate / batch_size / epochs_per_chunk: the recommender's Adam training per chunk.
      seed: shuffling within chunks (and the agent's exploration).
      agent_kwargs: ``AutoAssignAgent`` arguments (autoassign policy only).
      cold_threshold: an example is cold when one of ``cold_fields`` has fewer prior events.
      on_test: called as ``on_test(t, model, counter)`` just before chunk ``t`` is tested.
    Returns:
      ``{"chunks": [per-chunk dict], "prob", "label", "domain", "cold", "chunk"}``.
    """
    from mdr_tf.training import predict_arrays

    schema = model.schema
    chunks = np.asarray(chunks)
    if np.any(np.diff(chunks) < 0):
        raise ValueError("run_stream: chunk ids must be non-decreasing (events in time order)")
    layer = model.embedding.assignment
    fields = list(layer.fields) if layer is not None else managed_fields(schema, None)
    cold_fields = [f for f in cold_fields if f in [c.name for c in schema.categorical]] or fields
    tracked = list(dict.fromkeys(fields + cold_fields))
    counter = StreamCounter(tracked, [schema.feature(f).vocab_size for f in tracked])
    optimizer = keras.optimizers.Adam(learning_rate, epsilon=1e-8)
    step = make_train_step(model, optimizer)
    agent = None
    if layer is not None and layer.policy == "autoassign" and not layer.keep_all:
        agent = AutoAssignAgent(layer, seed=seed, **(agent_kwargs or {}))
        reset_allocation(model.embedding)
    rng = np.random.default_rng(seed)
    loss_fn = keras.losses.BinaryCrossentropy(reduction=None)
    records, out = [], {"prob": [], "label": [], "domain": [], "cold": [], "chunk": []}
    labels = np.asarray(labels, np.float32).reshape(-1)
    t0 = time.time()
    num = int(chunks.max()) + 1 if len(chunks) else 0
    for t in range(num):
        idx = np.flatnonzero(chunks == t)
        if not len(idx):
            continue
        x = {k: v[idx] for k, v in features.items()}
        y = labels[idx]
        if layer is not None:
            layer.set_counters([counter.counts[tracked.index(f)] for f in fields],
                               [counter.last[tracked.index(f)] for f in fields], t)
        # 1. test (counters hold only chunks < t)
        if on_test is not None:
            on_test(t, model, counter)
        p = predict_arrays(model, x, eval_batch_size)
        cold = np.zeros(len(idx), bool)
        for f in cold_fields:
            cold |= counter.prior(f, x[f]) < cold_threshold
        dom = x[schema.domain_key]
        ev = M.evaluate(y, p, dom, schema.num_domains)
        rec = {"chunk": t, "n": int(len(idx)), "auc": ev["auc"], "logloss": ev["logloss"],
               "cold_n": int(cold.sum()), "cold_auc": M.auc(y[cold], p[cold]) if cold.any() else float("nan"),
               "cold_logloss": M.logloss(y[cold], p[cold]) if cold.any() else float("nan")}
        rec.update({f"auc_d{k}": ev[f"auc_d{k}"] for k in range(schema.num_domains)})
        for key, v in (("prob", p), ("label", y), ("domain", dom), ("cold", cold), ("chunk", np.full(len(idx), t))):
            out[key].append(v)
        # 2. rewards for the previous decisions (with the counterfactual "not kept" per
        #    field), critic and keep head; 3. keep / admit / evict for this chunk's training
        #    and the next chunk's test (states from the counters of chunks < t)
        if agent is not None:
            losses = np.asarray(loss_fn(y[:, None], p[:, None])).reshape(-1)
            shared = {}
            for k, f in enumerate(fields):
                saved = layer.kept[k].numpy()
                layer.kept[k].assign(np.zeros_like(saved))
                ps = predict_arrays(model, x, eval_batch_size)
                layer.kept[k].assign(saved)
                shared[f] = np.asarray(loss_fn(y[:, None], ps[:, None])).reshape(-1)
                rec[f"row_gain_{f}"] = float(np.mean(shared[f] - losses))  # mean BCE a field's own rows save
            agent.observe(x, losses, shared)
            agent.train()
            rec["critic_mse"] = agent.last_critic_loss
            rec.update(agent.decide(model.embedding, counter, {f: x[f] for f in fields}, optimizer))
        # 4. train on the chunk
        for e in range(epochs_per_chunk):
            order = rng.permutation(len(idx))
            for s in range(0, len(order), batch_size):
                b = order[s:s + batch_size]
                step({k: tf.constant(v[b]) for k, v in x.items()}, tf.constant(y[b][:, None]))
        # 5. the counters take in the chunk
        counter.update(t, {f: x[f] for f in tracked})
        if layer is not None:
            layer.set_counters([counter.counts[tracked.index(f)] for f in fields],
                               [counter.last[tracked.index(f)] for f in fields], t + 1)
        rec["rows"] = rows_held(model, counter, fields)
        rec["rows_full"] = int(sum(len(counter.seen(tracked.index(f))) for f in fields))
        rec["seconds"] = round(time.time() - t0, 2)
        records.append(rec)
        if log:
            log(f"  chunk {t + 1}/{num}: AUC {rec['auc']:.4f} cold AUC {rec['cold_auc']:.4f} "
                f"(n_cold {rec['cold_n']}) rows {rec['rows']}/{rec['rows_full']} ({rec['seconds']:.0f}s)")
    return {"chunks": records, **{k: np.concatenate(v) if v else np.zeros(0) for k, v in out.items()}}
