"""MI-DPG's decomposable weighting matrix (DWM) dense block and its MI regulariser (MIR).

Cheng et al., "MI-DPG: Decomposable Parameter Generation Network Based on Mutual
Information for Multi-Scenario Recommendation", CIKM 2023 (eqs. 1-8; the formulas are
restated in docs/models/midpg.md because they were lost from the paper text).

Every backbone layer is re-weighted per sample::

    h_{l+1} = act( h_l @ (W ⊙ M) + b ),      M = DWM(e_s, h_l) ∈ R^{n×m}

with an auxiliary MLP ``f`` on ``z = [e_s ; h_l]`` and one of four variants:

=======  =========================================  ==========================
variant  generated per sample by ``f``              M
=======  =========================================  ==========================
non      the full n×m matrix                        σ(f(z)) reshaped to n×m
rc       P ∈ R^{a×k} and Q ∈ R^{k×b}                Repeat(σ(P Q), n/a, m/b)
r        P (row-wise); Q is one global variable     Repeat(σ(P Q), n/a, m/b)
c        Q (column-wise); P is one global variable  Repeat(σ(P Q), n/a, m/b)
=======  =========================================  ==========================

``Repeat`` is either ``"tile"`` (``M[i, j] = S[i mod a, j mod b]``, as ``tf.tile``) or
``"block"`` (``M[i, j] = S[⌊i/(n/a)⌋, ⌊j/(m/b)⌋]``, each entry of S spread over an
(n/a)×(m/b) block, as ``np.kron``); neither interpolates. The paper's "repeats its input
n/a times on the row axis" fits both; ``repeat`` selects. With ``a | d`` (d the embedding
width) tile gives coordinate ``i mod a`` of *every* field the same row weight, so on the
first layer the rows cannot tell fields apart; block gives each run of n/a consecutive
input coordinates (about one field when n/a ≈ d) its own row. With ``a = 1, b = m`` the
DWM gates each output neuron (PEPNet / AdaSparse). MIR maximises a Jensen-Shannon MI
estimate (Deep InfoMax / f-GAN) between the scenario-aware input ``e_s`` and the small
a×b matrix ``σ(P Q)``; the model's loss becomes ``BCE − λ1·MIR + λ2·||Θ||²`` with MIR the
mean over the DWM layers (``mdr_tf.models.midpg.MIDPGModel``); λ1 = 0 is DPG.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import keras
from keras import ops

from mdr_tf.layers.blocks import DenseBlock, register_block

VARIANTS = ("non", "rc", "r", "c")
REPEATS = ("tile", "block")
MIR_NEGATIVES = ("shuffle", "roll")


def _bitonic_sort(a):
    """Ascending sort of a 1-D tensor of static power-of-two length n (bitonic network).

    log2(n)·(log2(n)+1)/2 compare-exchange stages (k, j), run as one loop: entry i meets
    its partner i XOR j and keeps the min or the max (ascending where bit k of i is 0).
    On CPU/XLA ~15 µs for n = 512 against ~350 µs for XLA's sort; the loop keeps the
    compiled program small (the stages unrolled took several seconds more to compile).
    """
    n = int(a.shape[0])
    stages = [(1 << p, 1 << q) for p in range(1, n.bit_length()) for q in range(p - 1, -1, -1)]
    if not stages:
        return a
    ks = ops.convert_to_tensor([k for k, _ in stages], dtype="int32")
    js = ops.convert_to_tensor([j for _, j in stages], dtype="int32")
    i = ops.arange(n, dtype="int32")

    def stage(s, a):
        k, j = ks[s], js[s]
        partner = ops.bitwise_xor(i, j)
        other = ops.take(a, partner, axis=0)
        keep_min = ops.equal(ops.less(i, partner), ops.equal(ops.bitwise_and(i, k), 0))
        return ops.where(keep_min, ops.minimum(a, other), ops.maximum(a, other))

    return ops.fori_loop(0, len(stages), stage, a)


def _tracing_for_xla() -> bool:
    """True while TensorFlow traces a function for XLA (``jit_compile=True``, or inside one)."""
    if keras.backend.backend() != "tensorflow":
        return False
    from tensorflow.python.framework import ops as tf_ops
    from tensorflow.python.ops import control_flow_util

    return bool(control_flow_util.GraphOrParentsInXlaContext(tf_ops.get_default_graph()))


def shuffled_indices(n, seed, method: str = "auto") -> Any:
    """The permutation ``keras.random.shuffle(ops.arange(n), seed=seed)``, computed faster under XLA.

    ``keras.random.shuffle`` draws n uniform keys and argsorts them (a stable sort: equal
    keys keep their index order); XLA's CPU sort took ~0.35 ms for n = 512, a quarter of
    MI-DPG's MIR cost. ``method="network"``: the same keys (same draw from ``seed``) are
    sorted by ``argsort_unit_keys`` (a bitonic network, ~15 µs under XLA). ``"sort"``:
    ``keras.random.shuffle`` itself. ``"auto"``: the network while tracing for XLA, else the
    sort (TensorFlow's own argsort kernel is fast; the network's loop of small ops is not,
    outside XLA). The same permutation either way (tested); a non-static ``n`` always sorts.
    """
    if method not in ("auto", "network", "sort"):
        raise ValueError(f"shuffled_indices: method must be 'auto', 'network' or 'sort', got {method!r}")
    network = method == "network" or (method == "auto" and _tracing_for_xla())
    if not network or not isinstance(n, int):
        return keras.random.shuffle(ops.arange(n), seed=seed)
    return argsort_unit_keys(keras.random.uniform((n,), seed=seed, dtype="float32"))


def argsort_unit_keys(u):
    """Stable ascending argsort of float32 keys in [0, 1) that are multiples of 2^-23 (int32).

    Each key becomes the integer ``2^23·u_i`` packed with its index (``k_i·n + i``, all
    distinct, ordered as a stable argsort orders the keys: equal keys by index), sorted by
    ``_bitonic_sort``; ``packed mod n`` is the order.
    """
    n = int(u.shape[0])
    packed = ops.cast(u * float(2**23), "int64") * n + ops.arange(n, dtype="int64")
    size = 1 << max(0, (n - 1).bit_length())
    if size != n:  # pad with keys above every real one; they sort last and are dropped
        packed = ops.concatenate([packed, ops.full((size - n,), 2**23 * n, dtype="int64")], axis=0)
    return ops.cast(_bitonic_sort(packed)[:n] % n, "int32")


def permute_rows(h, perm):
    """``ops.take(h, perm, axis=0)`` for a permutation ``perm``, with its gradient as a gather.

    The autodiff gradient of a gather is a scatter-add; for a permutation every row gets
    exactly one term, which is the gather of the upstream gradient by the inverse
    permutation: the same numbers without the scatter of [n, width] floats (only the n
    indices are scattered to invert ``perm``).
    """
    n = ops.shape(h)[0]

    @ops.custom_gradient
    def take(rows):
        def grad(*args, upstream=None):
            if upstream is None:
                (upstream,) = args
            inverse = ops.scatter(ops.expand_dims(perm, 1), ops.arange(n, dtype=perm.dtype), (n,))
            return ops.take(upstream, inverse, axis=0)

        return ops.take(rows, perm, axis=0), grad

    return take(h)


@register_block("dwm")
class DWMDense(DenseBlock):
    """Dense layer ``act(x @ (W ⊙ M(e_s, x)) + b)`` with a per-sample weighting matrix (MI-DPG).

    Cost. For rc/r/c the n×m matrix is never formed: with ``x`` viewed as
    ``[B, n/a, a]`` and ``W`` as ``[n/a, a, m]`` (tile; block: ``[B, a, n/a]``,
    ``[a, n/a, m]``), ``T_i = x[:, rows_i] @ W[rows_i]`` (one batched matmul over i, the
    FLOPs of the plain layer) and ``y[b, c] = Σ_i T_i[b, c] S[b, i, col(c)]`` (``B·a·m``).
    ``compute="materialize"`` builds ``[B, n, m]`` instead (kept to test and time the
    identity). ``variant="non"`` always materialises ``[B, n, m]``: the
    aux net outputs n·m numbers per sample.

    Args:
      units: output width m.
      num_domains, context_dims, use_bias, kernel_initializer, kernel_regularizer: see
        ``DenseBlock``.
      variant: "non", "rc", "r" or "c" (table above).
      a, b: size of the small matrix; ``a | n`` and ``b | m`` (ignored by "non").
      k: rank of ``P Q``.
      scale: M is multiplied by ``scale`` (ours; 1.0 = paper's σ; 2.0 starts M near 1).
      aux_units: hidden widths of the auxiliary net ``f`` (ours).
      aux_activation: hidden activation of ``f`` (ours).
      stop_gradient_inputs: stop gradients from ``f`` into ``e_s`` and ``x`` (ours; the
        paper does not say; default False).
      uneven: "error" raises when ``a ∤ n`` or ``b ∤ m``; "pad" repeats ``ceil(n/a)`` times
        and crops to n×m (ours; equals zero-padding x and W).
      repeat: "tile" or "block" (see the module docstring; the paper does not say).
      compute: "factored" (never forms [B, n, m]) or "materialize" (rc/r/c only).
      condition: ``ctx`` key of the scenario-aware input ``e_s`` (default "domain_side").
      mir_weight: this layer's weight of ``−weight·MIR`` in the loss; 0 builds no
        discriminator and adds no loss (DPG). ``MIDPGModel`` sets it to λ1/L (one MIR term
        for the model: the mean over its L DWM layers) or λ1 (``mir_reduction="sum"``).
      mir_units: hidden widths of the discriminator T (ours; one T per DWM layer).
      mir_proj_dim: for "non", T sees a learned projection of M to this width (ours).
      mir_negatives: how the negatives ``z̃`` are drawn: "shuffle" (a random permutation of
        the batch, the layer's default and the estimator as first built) or "roll" (a random
        cyclic shift of the batch: every sample's partner is uniform over the batch as with
        "shuffle", so the estimate has the same expectation, without the sort; an option,
        docs/models/midpg.md).
      seed: seed of the negative-pair shuffling.
    """

    def __init__(
        self,
        units: int,
        num_domains: int = 1,
        context_dims: dict[str, int] | None = None,
        variant: str = "r",
        a: int = 8,
        b: int = 8,
        k: int = 4,
        scale: float = 1.0,
        aux_units: Sequence[int] = (32,),
        aux_activation: str = "relu",
        stop_gradient_inputs: bool = False,
        uneven: str = "error",
        compute: str = "factored",
        condition: str = "domain_side",
        repeat: str = "tile",
        mir_weight: float = 0.0,
        mir_units: Sequence[int] = (32,),
        mir_proj_dim: int = 16,
        mir_negatives: str = "shuffle",
        seed: int | None = None,
        **kwargs,
    ):
        super().__init__(units, num_domains, context_dims, **kwargs)
        variant = str(variant).lower()
        if variant not in VARIANTS:
            raise ValueError(f"{self.name}: variant must be one of {VARIANTS}, got {variant!r}")
        if uneven not in ("error", "pad"):
            raise ValueError(f"{self.name}: uneven must be 'error' or 'pad', got {uneven!r}")
        if compute not in ("factored", "materialize"):
            raise ValueError(f"{self.name}: compute must be 'factored' or 'materialize', got {compute!r}")
        if repeat not in REPEATS:
            raise ValueError(f"{self.name}: repeat must be one of {REPEATS}, got {repeat!r}")
        if mir_negatives not in MIR_NEGATIVES:
            raise ValueError(f"{self.name}: mir_negatives must be one of {MIR_NEGATIVES}, got {mir_negatives!r}")
        self.mir_negatives = mir_negatives
        self.variant = variant
        self.repeat = repeat
        self.a, self.b, self.k = int(a), int(b), int(k)
        if min(self.a, self.b, self.k) < 1:
            raise ValueError(f"{self.name}: a, b, k must be >= 1, got a={a}, b={b}, k={k}")
        self.scale = float(scale)
        self.aux_units = [int(u) for u in aux_units]
        self.aux_activation = aux_activation
        self.stop_gradient_inputs = bool(stop_gradient_inputs)
        self.uneven = uneven
        self.compute = compute
        self.condition = condition
        self.mir_weight = float(mir_weight)
        self.mir_units = [int(u) for u in mir_units]
        self.mir_proj_dim = int(mir_proj_dim)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    # ------------------------------------------------------------------ build
    def _gen_dim(self) -> int:
        n, m, a, b, k = self.input_dim, self.units, self.a, self.b, self.k
        return {"non": n * m, "rc": a * k + k * b, "r": a * k, "c": k * b}[self.variant]

    def build(self, input_shape):
        super().build(input_shape)
        n, m = self.input_dim, self.units
        if self.variant != "non":
            bad = [f"a={self.a} does not divide the input width n={n}"] if n % self.a else []
            bad += [f"b={self.b} does not divide the output width m={m}"] if m % self.b else []
            if bad and self.uneven == "error":
                raise ValueError(f"DWM layer {self.name!r} (n={n}, m={m}, a={self.a}, b={self.b}): "
                                 + "; ".join(bad) + " (pick divisors or set uneven='pad')")
        self.rows_rep = math.ceil(n / self.a)  # how many times S is tiled along rows
        self.cols_rep = math.ceil(m / self.b)
        if self.condition not in self.context_dims:
            raise ValueError(f"DWM layer {self.name!r}: context view {self.condition!r} unknown; "
                             f"have {sorted(self.context_dims)}")
        zdim = int(self.context_dims[self.condition])
        self.aux_layers = [keras.layers.Dense(u, activation=self.aux_activation, name=f"aux_{i}",
                                              dtype=self.dtype_policy)
                           for i, u in enumerate(self.aux_units)]
        self.aux_out = keras.layers.Dense(self._gen_dim(), name="aux_out", dtype=self.dtype_policy)
        width = zdim + n
        for layer in self.aux_layers:
            layer.build((None, width))
            width = layer.units
        self.aux_out.build((None, width))
        self.q_shared = self.p_shared = None
        if self.variant == "r":
            self.q_shared = self.add_weight(name="q_shared", shape=(self.k, self.b), initializer="glorot_uniform")
        elif self.variant == "c":
            self.p_shared = self.add_weight(name="p_shared", shape=(self.a, self.k), initializer="glorot_uniform")
        self.mir_layers = []
        self.mir_proj = None
        if self.mir_weight > 0:
            if self.variant == "non":
                self.mir_proj = keras.layers.Dense(self.mir_proj_dim, name="mir_proj", dtype=self.dtype_policy)
                self.mir_proj.build((None, n * m))
                mdim = self.mir_proj_dim
            else:
                mdim = self.a * self.b
            self.mir_layers = [keras.layers.Dense(u, activation="relu", name=f"mir_{i}", dtype=self.dtype_policy)
                               for i, u in enumerate(self.mir_units)] + \
                [keras.layers.Dense(1, name="mir_out", dtype=self.dtype_policy)]
            width = zdim + mdim
            for layer in self.mir_layers:
                layer.build((None, width))
                width = layer.units
            self.mir_estimate = self.add_weight(name="mir_estimate", shape=(), initializer="zeros",
                                                trainable=False)
        self.built = True

    # ------------------------------------------------------------ generation
    def _condition(self, ctx: dict | None):
        if ctx is None or self.condition not in ctx:
            raise ValueError(f"DWM layer {self.name!r} needs ctx[{self.condition!r}] (the scenario-aware input)")
        return ops.cast(ctx[self.condition], self.compute_dtype)

    def generate(self, x, ctx: dict | None) -> dict[str, Any]:
        """Runs the aux net: returns ``{"z", "S"}`` (S = scale·σ(PQ) [B, a, b], or for
        "non" the full scale·σ(f) [B, n, m]) plus the factors ``P``, ``Q`` where defined."""
        z = self._condition(ctx)
        h = ops.concatenate([z, ops.cast(x, self.compute_dtype)], axis=-1)
        if self.stop_gradient_inputs:
            h = ops.stop_gradient(h)
        for layer in self.aux_layers:
            h = layer(h)
        g = self.aux_out(h)
        a, b, k = self.a, self.b, self.k
        out: dict[str, Any] = {"z": z}
        if self.variant == "non":
            out["S"] = self.scale * ops.sigmoid(ops.reshape(g, [-1, self.input_dim, self.units]))
            return out
        if self.variant == "rc":
            p = ops.reshape(g[:, : a * k], [-1, a, k])
            q = ops.reshape(g[:, a * k:], [-1, k, b])
            pq = ops.matmul(p, q)
        elif self.variant == "r":
            p = ops.reshape(g, [-1, a, k])
            q = self.q_shared
            # [B·a, k] @ [k, b]: one 2-D matmul. The einsum "bik,kj->bij" is the same product,
            # but XLA on CPU computed q's gradient from it ~10x slower (docs/benchmarks.md).
            pq = ops.reshape(ops.matmul(ops.reshape(g, [-1, k]), ops.cast(q, g.dtype)), [-1, a, b])
        else:
            q = ops.reshape(g, [-1, k, b])
            p = self.p_shared
            pq = ops.einsum("ik,bkj->bij", ops.cast(p, q.dtype), q)
        out.update({"P": p, "Q": q, "S": self.scale * ops.sigmoid(pq)})
        return out

    def weighting_matrix(self, x, ctx: dict | None):
        """The small per-sample matrix scale·σ(PQ) [B, a, b] (for "non": the full [B, n, m])."""
        return self.generate(x, ctx)["S"]

    def full_weighting_matrix(self, x, ctx: dict | None):
        """The tiled per-sample matrix M [B, n, m] (diagnostics / tests; costs B·n·m)."""
        s = self.weighting_matrix(x, ctx)
        return self._tile(s)

    def _tile(self, s):
        if self.variant == "non":
            return s
        if self.repeat == "block":
            m_full = ops.repeat(ops.repeat(s, self.rows_rep, axis=1), self.cols_rep, axis=2)
        else:
            m_full = ops.tile(s, [1, self.rows_rep, self.cols_rep])
        return m_full[:, : self.input_dim, : self.units]

    # ----------------------------------------------------------------- call
    def _apply(self, x, s):
        w = ops.cast(self.kernel, self.compute_dtype)
        n, m = self.input_dim, self.units
        if self.variant == "non" or self.compute == "materialize":
            return ops.einsum("bn,bnm->bm", x, w[None] * self._tile(s))
        a, b, tr, tc = self.a, self.b, self.rows_rep, self.cols_rep
        n_pad, m_pad = a * tr, b * tc
        if n_pad != n:  # zero rows: padded inputs contribute nothing
            x = ops.pad(x, [[0, 0], [0, n_pad - n]])
            w = ops.pad(w, [[0, n_pad - n], [0, 0]])
        if m_pad != m:
            w = ops.pad(w, [[0, 0], [0, m_pad - m]])
        # Tile: input row t*a + i uses S row i; output column u*b + j uses S column j.
        # Block: input row i*tr + t uses S row i; output column j*tc + u uses S column j.
        # T[i] = x[:, rows of i] @ W[rows of i, :] (a batched matmul: the cost of x @ W), then
        # y = Σ_i T[i] ⊙ S[:, i, j(col)]. Measured faster than two einsums (docs/models/midpg.md).
        if self.repeat == "block":
            xt = ops.transpose(ops.reshape(x, [-1, a, tr]), [1, 0, 2])   # [a, B, n/a]
            wt = ops.reshape(w, [a, tr, m_pad])                          # [a, n/a, m]
        else:
            xt = ops.transpose(ops.reshape(x, [-1, tr, a]), [2, 0, 1])   # [a, B, n/a]
            wt = ops.transpose(ops.reshape(w, [tr, a, m_pad]), [1, 0, 2])  # [a, n/a, m]
        t = ops.matmul(xt, wt)                                       # [a, B, m]
        s_t = ops.transpose(s, [1, 0, 2])                            # [a, B, b]
        st = ops.repeat(s_t, tc, axis=2) if self.repeat == "block" else ops.tile(s_t, [1, 1, tc])  # [a, B, m]
        y = ops.sum(t * st, axis=0)                                  # [B, m]
        return y[:, :m] if m_pad != m else y

    def _mvec(self, s):
        """T's matrix input: flattened S (or its learned projection for "non")."""
        return ops.reshape(s, [-1, self.a * self.b]) if self.variant != "non" else \
            self.mir_proj(ops.reshape(s, [-1, self.input_dim * self.units]))

    def discriminator(self, z, s):
        """``T(z, m)`` [B, 1], ``m`` = flattened S (or its learned projection for "non")."""
        h = ops.concatenate([z, self._mvec(s)], axis=-1)
        for layer in self.mir_layers:
            h = layer(h)
        return h

    def _jsd(self, hz_pos, hz_neg, s):
        """The JSD estimate from T's first-layer z-terms of the positive and negative pairs.

        T's first layer on ``[z; m]`` is ``z W_z + m W_m + b``: the m-part is the same for a
        positive pair and its negative (same m, other z), so it is computed once, and both
        terms go through the remaining layers as one ``[2B]`` batch. Equal to two separate
        ``discriminator`` calls (tested against the two-pass form).
        """
        first = self.mir_layers[0]
        zdim = int(self.context_dims[self.condition])
        hm = ops.matmul(self._mvec(s), ops.cast(first.kernel[zdim:], s.dtype)) + ops.cast(first.bias, s.dtype)
        h = first.activation(ops.concatenate([hz_pos + hm, hz_neg + hm], axis=0))
        for layer in self.mir_layers[1:]:
            h = layer(h)
        batch = ops.shape(hz_pos)[0]
        pos, neg = h[:batch], h[batch:]
        return ops.mean(-ops.softplus(-pos)) - ops.mean(ops.softplus(neg))

    def _z_term(self, z):
        zdim = int(self.context_dims[self.condition])
        return ops.matmul(z, ops.cast(self.mir_layers[0].kernel[:zdim], z.dtype))

    def mir_from_pairs(self, z, z_neg, s):
        """JSD MI estimate ``E[-softplus(-T(z, m))] - E[softplus(T(z̃, m))]`` for given negatives ``z̃``."""
        return self._jsd(self._z_term(z), self._z_term(z_neg), s)

    def mir(self, z, s, training: bool | None = None):
        """JSD MI estimate with ``z̃`` = z permuted across the batch (``mir_from_pairs``).

        ``mir_negatives="shuffle"``: a uniformly random permutation (``keras.random.shuffle``);
        ``"roll"``: a cyclic shift by a uniformly random offset r ∈ [0, B), ``z̃_i = z_{(i+r) mod B}``.
        In both, the negative partner of every sample is uniform over the batch, so the
        estimate (and its gradient) has the same expectation (docs/models/midpg.md; tested).
        ``z̃ W_z`` is the permuted ``z W_z`` (a permutation commutes with the row-wise map).
        """
        hz = self._z_term(z)
        batch = ops.shape(z)[0]
        if self.mir_negatives == "roll":
            r = keras.random.randint((), 0, batch, seed=self.seed_generator, dtype="int32")
            # A roll, not tf.slice of [hz; hz] at offset r: TF's XLA bridge compiles a Slice
            # with its begin as a compile-time constant, so r's input (the seed state) became
            # part of the compilation key and every call recompiled the program (one fit epoch
            # of midpg: 96 CPU-s instead of 1.1; docs/models/midpg.md). A roll by a runtime
            # shift (and its gradient, a roll by r) compiles to dynamic slices: no constant.
            neg = ops.roll(hz, -r, axis=0)
        else:
            # keras.random.shuffle's permutation and the gather's gradient, computed faster
            # (same numbers: shuffled_indices, permute_rows).
            neg = permute_rows(hz, shuffled_indices(batch, self.seed_generator))
        return self._jsd(hz, neg, s)

    def call(self, x, ctx: dict | None = None, training: bool | None = None):
        x = ops.cast(x, self.compute_dtype)
        gen = self.generate(x, ctx)
        y = self._apply(x, gen["S"])
        if self.bias is not None:
            y = y + ops.cast(self.bias, y.dtype)
        if training and self.mir_weight > 0:
            mir = ops.cast(self.mir(gen["z"], gen["S"], training), "float32")
            self.add_loss(-self.mir_weight * mir)
            self.mir_estimate.assign(mir)
        return y

    # ------------------------------------------------------------ reporting
    def generated_parameters_per_sample(self) -> int:
        """Numbers the aux net generates per sample (a·k + k·b, a·k, k·b, or n·m for "non")."""
        return int(self._gen_dim())

    def get_config(self) -> dict[str, Any]:
        config = super().get_config()
        config.update({
            "variant": self.variant, "a": self.a, "b": self.b, "k": self.k, "scale": self.scale,
            "aux_units": self.aux_units, "aux_activation": self.aux_activation,
            "stop_gradient_inputs": self.stop_gradient_inputs, "uneven": self.uneven, "compute": self.compute,
            "condition": self.condition, "repeat": self.repeat, "mir_weight": self.mir_weight,
            "mir_units": self.mir_units, "mir_proj_dim": self.mir_proj_dim,
            "mir_negatives": self.mir_negatives, "seed": self.seed,
        })
        return config
