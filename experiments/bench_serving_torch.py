"""PyTorch reference forward of the DNN, MMoE and STAR (bench-only; needs torch, numpy).

Run by ``experiments/bench_serving.py`` as a worker subprocess under a separate
interpreter that has torch (e.g. ``.torchvenv``; see docs/benchmarks.md): this module
imports only the standard library, numpy and torch, never TensorFlow or mdr_tf. The
weights and the architecture come from the Keras model (``bench_serving.export_reference``
writes ``<model>.npz`` + ``<model>.json``), so the outputs must equal the SavedModel's:
the benchmark is also a cross-framework parity check.

Each model is a ``torch.nn.Module`` in ``eval()``, called under ``torch.no_grad()`` with
a dict of 1-D per-feature tensors (the SavedModel's inputs), written the way a careful
PyTorch user would: one fused embedding table and one gather for all fields (ids outside
``[0, vocab)`` read row 0, the domain id clamped to ``[0, D)``), ``nn.Linear`` layers for
shared weights, and per-domain parts run on each domain's rows (one stable argsort by
domain, contiguous per-domain slices, results scattered back) — no compute-all-then-select.

The worker protocol (shared with the TensorFlow worker of ``bench_serving``): one JSON
command per stdin line, one JSON reply per stdout line; see ``serve_forever``.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from typing import Any

import numpy as np


def serve_forever(load: Callable[[str, str], Any], to_inputs: Callable[[dict[str, np.ndarray]], Any],
                  forward: Callable[[Any, Any], np.ndarray], out=None) -> None:
    """The worker loop. Commands (JSON lines on stdin):

    - ``{"cmd": "load", "model": m, "path": p}``: ``load(m, p)`` → ``{"ok": true}``;
    - ``{"cmd": "predict", "model": m, "inputs": npz, "output": npy}``: writes the
      probabilities of the arrays in ``npz`` to ``npy``;
    - ``{"cmd": "time", "model": m, "inputs": npz, "batch": B, "calls": n}``: ``n`` timed
      calls on the first B rows (arrays repeated with ``np.resize``), each including the
      fetch of the result to NumPy → ``{"seconds": [...]}``;
    - ``{"cmd": "quit"}``.

    Errors are replied as ``{"error": "..."}`` (the worker keeps running).
    """
    out = out or sys.stdout
    models: dict[str, Any] = {}
    batches: dict[tuple[str, int], Any] = {}
    for line in sys.stdin:
        if not line.strip():
            continue
        msg = json.loads(line)
        try:
            cmd = msg["cmd"]
            if cmd == "quit":
                break
            if cmd == "load":
                models[msg["model"]] = load(msg["model"], msg["path"])
                reply: dict[str, Any] = {"ok": True}
            elif cmd == "predict":
                arrays = dict(np.load(msg["inputs"]))
                np.save(msg["output"], np.asarray(forward(models[msg["model"]], to_inputs(arrays))).reshape(-1))
                reply = {"ok": True}
            elif cmd == "time":
                key = (msg["inputs"], int(msg["batch"]))
                if key not in batches:
                    arrays = dict(np.load(msg["inputs"]))
                    batches[key] = to_inputs({k: np.resize(v, (key[1],) + v.shape[1:]) for k, v in arrays.items()})
                model, x = models[msg["model"]], batches[key]
                seconds = []
                for _ in range(int(msg["calls"])):
                    t = time.perf_counter()
                    forward(model, x)
                    seconds.append(time.perf_counter() - t)
                reply = {"seconds": seconds}
            else:
                reply = {"error": f"unknown command {cmd!r}"}
        except Exception as e:  # noqa: BLE001 — reported to the driver, which stops the benchmark
            reply = {"error": f"{type(e).__name__}: {e}"}
        out.write(json.dumps(reply) + "\n")
        out.flush()


# --------------------------------------------------------------------------- torch models

def _build_modules():
    import torch
    from torch import nn

    class Embed(nn.Module):
        """Fused table, one gather: ``(domain [B], gathered [B, F+1, d], dense [B, n_dense], all)``."""

        def __init__(self, arch: dict, w: dict):
            super().__init__()
            self.cat, self.dense, self.dkey = arch["categorical"], arch["dense"], arch["domain_key"]
            self.num_domains = arch["num_domains"]
            self.table = nn.Parameter(torch.from_numpy(w["embedding/table"]))
            self.register_buffer("sizes", torch.tensor(arch["vocab_sizes"] + [self.num_domains], dtype=torch.int64))
            self.register_buffer("offsets", torch.tensor(arch["offsets"], dtype=torch.int64))

        def forward(self, x: dict):
            domain = x[self.dkey].clamp(0, self.num_domains - 1)
            ids = torch.stack([x[n] for n in self.cat] + [domain], 1)
            ids = torch.where((ids < 0) | (ids >= self.sizes), 0, ids) + self.offsets
            g = nn.functional.embedding(ids, self.table)
            dense = torch.stack([x[n] for n in self.dense], 1) if self.dense else g.new_zeros((g.shape[0], 0))
            return domain, g, dense, torch.cat([g.flatten(1), dense], 1)

    def linear(w: dict, prefix: str) -> nn.Linear:
        k, b = w[prefix + "/kernel"], w[prefix + "/bias"]
        lin = nn.Linear(k.shape[0], k.shape[1])
        with torch.no_grad():
            lin.weight.copy_(torch.from_numpy(k.T.copy()))
            lin.bias.copy_(torch.from_numpy(b))
        return lin

    def by_domain(domain, num_domains: int):
        """(order, counts): a stable sort of the rows by domain and the rows per domain."""
        order = torch.argsort(domain, stable=True)
        return order, torch.bincount(domain, minlength=num_domains).tolist()

    def unsort(sorted_rows, order):
        out = torch.empty_like(sorted_rows)
        out[order] = sorted_rows
        return out

    class DNN(nn.Module):
        def __init__(self, arch: dict, w: dict):
            super().__init__()
            self.embed = Embed(arch, w)
            self.mlp = nn.Sequential(*[m for i in range(arch["layers"]) for m in (linear(w, f"deep/{i}"), nn.ReLU())])
            self.head = linear(w, "head")

        def forward(self, x):
            return torch.sigmoid(self.head(self.mlp(self.embed(x)[3]))).reshape(-1)

    class MMoE(nn.Module):
        """Experts as one matmul [n, E·u]; per-domain gate + tower on the domain's rows."""

        def __init__(self, arch: dict, w: dict):
            super().__init__()
            self.embed = Embed(arch, w)
            k = torch.from_numpy(w["experts/kernel_0"])  # [E, n, u]
            self.num_experts, self.expert_units = k.shape[0], k.shape[2]
            self.experts = nn.Linear(k.shape[1], k.shape[0] * k.shape[2])
            with torch.no_grad():
                self.experts.weight.copy_(k.permute(0, 2, 1).reshape(-1, k.shape[1]))
                self.experts.bias.copy_(torch.from_numpy(w["experts/bias_0"]).reshape(-1))

            def p(name):
                return nn.Parameter(torch.from_numpy(w[name]))
            self.gate_k, self.gate_b = p("gates/kernel_0"), p("gates/bias_0")
            self.tower = nn.ParameterList([p(f"towers/kernel_{i}") for i in range(arch["tower_layers"])])
            self.tower_b = nn.ParameterList([p(f"towers/bias_{i}") for i in range(arch["tower_layers"])])

        def forward(self, x):
            domain, _, _, e = self.embed(x)
            ex = torch.relu(self.experts(e)).view(-1, self.num_experts, self.expert_units)  # [B, E, u]
            order, counts = by_domain(domain, self.gate_k.shape[0])
            outs, start = [], 0
            e_s, ex_s = e[order], ex[order]
            for d, c in enumerate(counts):
                if c == 0:
                    continue
                ed, xd = e_s[start:start + c], ex_s[start:start + c]
                g = torch.softmax(ed @ self.gate_k[d] + self.gate_b[d], dim=-1)
                h = torch.bmm(g.unsqueeze(1), xd).squeeze(1)
                for i, (k, b) in enumerate(zip(self.tower, self.tower_b)):
                    h = h @ k[d] + b[d]
                    if i < len(self.tower) - 1:
                        h = torch.relu(h)
                outs.append(h)
                start += c
            return torch.sigmoid(unsort(torch.cat(outs), order)).reshape(-1)

    class STAR(nn.Module):
        """PN + star FCN (``W ⊙ W_d``, ``b + b_d``, formed per call as in the Keras model) on
        each domain's rows; auxiliary network on the domain-side view."""

        def __init__(self, arch: dict, w: dict):
            super().__init__()
            self.embed = Embed(arch, w)

            def p(name):
                return nn.Parameter(torch.from_numpy(w[name]))
            self.gamma, self.beta, self.gamma_d, self.beta_d = (p("pn/gamma"), p("pn/beta"), p("pn/gamma_d"),
                                                                p("pn/beta_d"))
            self.register_buffer("mean", torch.from_numpy(w["pn/moving_mean"]))
            self.register_buffer("var", torch.from_numpy(w["pn/moving_variance"]))
            self.eps = arch["pn_epsilon"]
            names = [f"star_fcn/{i}" for i in range(arch["layers"])] + ["star_out"]
            self.k = nn.ParameterList([p(n + "/kernel") for n in names])
            self.b = nn.ParameterList([p(n + "/bias") for n in names])
            self.kd = nn.ParameterList([p(n + "/kernel_d") for n in names])
            self.bd = nn.ParameterList([p(n + "/bias_d") for n in names])
            self.aux = nn.Sequential(*[m for i in range(arch["aux_layers"])
                                       for m in (linear(w, f"aux/{i}"), nn.ReLU())],
                                     linear(w, "aux_out"))
            self.side_fields, self.side_dense = arch["side_fields"], arch["side_dense"]

        def forward(self, x):
            domain, g, dense, e = self.embed(x)
            order, counts = by_domain(domain, self.gamma_d.shape[0])
            e_s, outs, start = e[order], [], 0
            for d, c in enumerate(counts):
                if c == 0:
                    continue
                z = e_s[start:start + c]
                z = (self.gamma * self.gamma_d[d]) * (z - self.mean[d]) * torch.rsqrt(self.var[d] + self.eps) \
                    + (self.beta + self.beta_d[d])
                for i in range(len(self.k)):
                    z = z @ (self.k[i] * self.kd[i][d]) + (self.b[i] + self.bd[i][d])
                    if i < len(self.k) - 1:
                        z = torch.relu(z)
                outs.append(z)
                start += c
            s_m = unsort(torch.cat(outs), order)
            side = torch.cat([g[:, i] for i in self.side_fields] + [dense[:, j:j + 1] for j in self.side_dense], 1)
            return torch.sigmoid(s_m + self.aux(side)).reshape(-1)

    return {"dnn": DNN, "mmoe": MMoE, "star": STAR}


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, required=True, help="torch intra-op and inter-op threads")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    torch.set_num_interop_threads(args.threads)
    modules = _build_modules()

    def load(name: str, path: str):
        with open(path + ".json") as f:
            arch = json.load(f)
        w = dict(np.load(path + ".npz"))
        model = modules[arch["kind"]](arch, w)
        model.eval()
        return model

    def to_inputs(arrays):
        return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in arrays.items()}

    def forward(model, x):
        with torch.no_grad():
            return model(x).numpy()

    sys.stdout.write(json.dumps({"ready": True, "torch": torch.__version__, "threads": torch.get_num_threads(),
                                 "interop_threads": torch.get_num_interop_threads()}) + "\n")
    sys.stdout.flush()
    serve_forever(load, to_inputs, forward)


if __name__ == "__main__":
    main(sys.argv[1:])
