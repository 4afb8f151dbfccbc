"""Synthetic multi-domain CTR data with known per-domain effects (tests and scale benchmarks only).

Never a stand-in for real data in results. The label model is

    logit = b_d + <u_user, v_item> + w_d · x_ctx + s_d * <u_user, v_item>·flip_d

so domains differ in base rate (``b_d``), in how context features act (``w_d``) and,
for "flip" domains, in the sign of the user-item affinity: a shared model cannot fit
all domains, a domain-aware one can.

Example:
  python -m data_prep.synthetic --output_dir=data/synth --num_rows=1000000 --num_domains=4
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
from absl import app, flags

from data_prep.common import FeatureDef, existing_output, fingerprint, random_split, write_dataset


def generate(
    output_dir: str,
    num_rows: int = 20_000,
    num_domains: int = 3,
    num_users: int = 500,
    num_items: int = 300,
    num_context: int = 20,
    factor_dim: int = 8,
    domain_effect: float = 1.5,
    seed: int = 0,
    num_shards: int = 1,
    split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
) -> dict:
    """Writes a synthetic dataset in the standard layout; returns its schema.

    Args:
      output_dir: destination.
      num_rows: examples.
      num_domains: domains D (domain d has sampling weight proportional to d + 1).
      num_users, num_items, num_context: vocabulary sizes.
      factor_dim: latent dimension of the user-item affinity.
      domain_effect: scale of the domain-specific effects (0 = domains identical).
      seed: generator seed.
      num_shards: shards per (domain, split).
      split_ratios: train/valid/test fractions.
    """
    options = dict(num_rows=num_rows, num_domains=num_domains, num_users=num_users, num_items=num_items,
                   num_context=num_context, factor_dim=factor_dim, domain_effect=domain_effect, seed=seed,
                   num_shards=num_shards, split_ratios=list(split_ratios))
    fp = fingerprint({"synthetic": options})
    done = existing_output(output_dir, fp)
    if done is not None:
        return done
    rng = np.random.default_rng(seed)
    p = np.arange(1, num_domains + 1, dtype=np.float64)
    domain = rng.choice(num_domains, size=num_rows, p=p / p.sum()).astype(np.int64)
    user = rng.integers(1, num_users + 1, num_rows)
    item = rng.integers(1, num_items + 1, num_rows)
    ctx = rng.integers(1, num_context + 1, num_rows)
    dense = rng.random(num_rows).astype(np.float32)
    U = rng.normal(0, 1 / np.sqrt(factor_dim), (num_users + 1, factor_dim))
    V = rng.normal(0, 1 / np.sqrt(factor_dim), (num_items + 1, factor_dim))
    affinity = np.einsum("bk,bk->b", U[user], V[item]) * 2.0
    base = rng.normal(0, 0.5 * domain_effect, num_domains)
    ctx_w = rng.normal(0, domain_effect, (num_domains, num_context + 1))
    flip = np.where(np.arange(num_domains) % 2 == 1, -1.0, 1.0) if domain_effect > 0 else np.ones(num_domains)
    dense_w = rng.normal(0, domain_effect, num_domains)
    logit = base[domain] + flip[domain] * affinity + ctx_w[domain, ctx] + dense_w[domain] * (dense - 0.5)
    label = (rng.random(num_rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    split = random_split(num_rows, split_ratios, seed)
    feats = [FeatureDef("user_id", "categorical", num_users + 1, "user", True),
             FeatureDef("item_id", "categorical", num_items + 1, "item", True),
             FeatureDef("context", "categorical", num_context + 1, "context"),
             FeatureDef("dense_0", "dense", 0, "context")]
    vocabs = {"user_id": ["<OOV>"] + [f"u{i}" for i in range(1, num_users + 1)],
              "item_id": ["<OOV>"] + [f"i{i}" for i in range(1, num_items + 1)],
              "context": ["<OOV>"] + [f"c{i}" for i in range(1, num_context + 1)]}
    return write_dataset(
        output_dir, dataset="synthetic", features=feats,
        columns={"user_id": user, "item_id": item, "context": ctx, "dense_0": dense}, domain=domain,
        domain_names=[f"d{k}" for k in range(num_domains)], labels={"label": label}, split=split, vocabs=vocabs,
        fp=fp, num_shards=num_shards,
        metadata={"options": options, "synthetic": True,
                  "effects": {"base": base.tolist(), "flip": flip.tolist(), "dense_w": dense_w.tolist()}},
        progress=lambda m: None)



# Presets of ``generate_conflict`` (docs/conflicting_domains.md).
CONFLICT_PRESETS: dict[str, dict] = {
    # 5 domains; the two smallest have the largest domain's item taste reversed.
    "conflict": {"domain_weights": (0.50, 0.20, 0.15, 0.09, 0.06), "flips": (1, 1, 1, -1, -1)},
    # 20 equal small domains, each with its own random sign of the item taste, and a
    # user-item affinity shared by all of them (what a domain-aware model must still share).
    "many_small": {"domain_weights": (1.0,) * 20, "flips": None},
}


def conflict_arrays(
    num_rows: int = 8_000,
    scenario: str = "conflict",
    num_users: int = 200,
    num_items: int = 100,
    factor_dim: int = 4,
    shared_scale: float = 1.0,
    conflict_scale: float = 2.0,
    seed: int = 0,
) -> dict:
    """The rows of a conflicting-domains dataset as arrays (see ``generate_conflict``).

    Returns a dict with ``user``, ``item``, ``domain``, ``label``, the true ``logit``,
    ``flips`` [D], ``weights`` [D] and ``item_taste`` [num_items + 1].
    """
    if scenario not in CONFLICT_PRESETS:
        raise ValueError(f"unknown conflict scenario {scenario!r}; available: {sorted(CONFLICT_PRESETS)}")
    preset = CONFLICT_PRESETS[scenario]
    rng = np.random.default_rng(seed)
    w = np.asarray(preset["domain_weights"], np.float64)
    d = len(w)
    flips = (np.asarray(preset["flips"], np.float64) if preset["flips"] is not None
             else np.where(rng.random(d) < 0.5, -1.0, 1.0))
    domain = rng.choice(d, size=num_rows, p=w / w.sum()).astype(np.int64)
    user = rng.integers(1, num_users + 1, num_rows)
    item = rng.integers(1, num_items + 1, num_rows)
    U = rng.normal(0, 1 / np.sqrt(factor_dim), (num_users + 1, factor_dim))
    V = rng.normal(0, 1 / np.sqrt(factor_dim), (num_items + 1, factor_dim))
    taste = rng.normal(0, 1, num_items + 1)
    logit = shared_scale * 2.0 * np.einsum("bk,bk->b", U[user], V[item]) + conflict_scale * flips[domain] * taste[item]
    label = (rng.random(num_rows) < 1 / (1 + np.exp(-logit))).astype(np.float32)
    return {"user": user, "item": item, "domain": domain, "label": label, "logit": logit, "flips": flips,
            "weights": w / w.sum(), "item_taste": taste}


def generate_conflict(
    output_dir: str,
    num_rows: int = 8_000,
    scenario: str = "conflict",
    num_users: int = 200,
    num_items: int = 100,
    factor_dim: int = 4,
    shared_scale: float = 1.0,
    conflict_scale: float = 2.0,
    seed: int = 0,
    split_ratios: Sequence[float] = (0.6, 0.2, 0.2),
) -> dict:
    """Writes a conflicting-domains dataset (tests and docs/conflicting_domains.md only).

    The label model is

        logit = shared_scale · 2⟨u_user, v_item⟩ + conflict_scale · flip_d · t_item

    with one item taste ``t_item ~ N(0, 1)`` whose sign ``flip_d = ±1`` depends on the
    domain. ``scenario="conflict"``: 5 domains of weights 50/20/15/9/6 %, the two smallest
    with the taste reversed (``flip = -1``). ``scenario="many_small"``: 20 equal domains
    with random flips (seeded), so every domain has ~5 % of the rows.

    Why a shared model cannot fit every domain: any score ``g(user, item)`` that ignores
    the domain ranks the items of a ``flip = -1`` domain by the taste of the others, so
    on the taste part its AUC there is the mirror of its AUC in a ``flip = +1`` domain;
    the best such model follows the majority and ranks the minority domains backwards.
    The DNN sees the domain id only as one more embedded field of its input, so it can
    reverse the taste only through an item × domain interaction learnt from the few
    rows of the small domains.

    Args:
      output_dir: destination.
      num_rows: examples.
      scenario: "conflict" or "many_small" (``CONFLICT_PRESETS``).
      num_users, num_items: vocabulary sizes.
      factor_dim: latent dimension of the shared user-item affinity.
      shared_scale: weight of the shared affinity.
      conflict_scale: weight of the domain-signed item taste.
      seed: generator seed (also the split seed).
      split_ratios: train/valid/test fractions.
    """
    options = dict(num_rows=num_rows, scenario=scenario, num_users=num_users, num_items=num_items,
                   factor_dim=factor_dim, shared_scale=shared_scale, conflict_scale=conflict_scale, seed=seed,
                   split_ratios=list(split_ratios))
    fp = fingerprint({"synthetic_conflict": options})
    done = existing_output(output_dir, fp)
    if done is not None:
        return done
    a = conflict_arrays(num_rows, scenario, num_users, num_items, factor_dim, shared_scale, conflict_scale, seed)
    split = random_split(num_rows, split_ratios, seed)
    feats = [FeatureDef("user_id", "categorical", num_users + 1, "user", True),
             FeatureDef("item_id", "categorical", num_items + 1, "item", True)]
    vocabs = {"user_id": ["<OOV>"] + [f"u{i}" for i in range(1, num_users + 1)],
              "item_id": ["<OOV>"] + [f"i{i}" for i in range(1, num_items + 1)]}
    return write_dataset(
        output_dir, dataset="synthetic_conflict", features=feats,
        columns={"user_id": a["user"], "item_id": a["item"]}, domain=a["domain"],
        domain_names=[f"d{k}" for k in range(len(a["flips"]))], labels={"label": a["label"]}, split=split,
        vocabs=vocabs, fp=fp, num_shards=1,
        metadata={"options": options, "synthetic": True,
                  "effects": {"flips": a["flips"].tolist(), "weights": a["weights"].tolist()}},
        progress=lambda m: None)


FLAGS = flags.FLAGS


def main(argv: Sequence[str]) -> None:
    del argv
    generate(FLAGS.output_dir, num_rows=FLAGS.num_rows, num_domains=FLAGS.num_domains, seed=FLAGS.seed,
             domain_effect=FLAGS.domain_effect, num_shards=FLAGS.num_shards)


if __name__ == "__main__":
    flags.DEFINE_string("output_dir", None, "Output directory.", required=True)
    flags.DEFINE_integer("num_rows", 100_000, "Examples.")
    flags.DEFINE_integer("num_domains", 3, "Domains.")
    flags.DEFINE_integer("seed", 0, "Seed.")
    flags.DEFINE_float("domain_effect", 1.5, "Scale of the per-domain effects.")
    flags.DEFINE_integer("num_shards", 1, "Shards per (domain, split).")
    app.run(main)
