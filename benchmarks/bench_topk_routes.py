"""Which top-k route is fastest on this machine, against the plain per-direction route?

Question: for a top-k request at a given (d, h = 4d, directions, k), how long does each route of
`bk.decompose` take next to what a user writes by hand: for each direction, Q formed by einsum,
symmetrized, `torch.linalg.eigh`, the k largest |λ| selected ("plain")? Routes are given as
METHOD or METHOD:BLOCK, e.g. `lanczos:4 eigh auto`; `formed:BLOCK` and `mf:BLOCK` are
method="lanczos" with its products forced against formed Q or matrix-free; `floor:form`,
`floor:mf:BLOCK` and `floor:eigvalsh` time the least work of each route (see `Floors`).

Every round runs every route once on the same data, in turn (interleaved), so a load change on a
shared machine hits them alike; the table gives each route's median and min–max over the rounds
and the plain route's median over its median. With `--plain-directions n` the plain route runs on
the first n directions only and its time is scaled by b/n (it loops over directions one by one,
so its time is linear in b); the table says when it was.

    python -m benchmarks.bench_topk_routes --d 1024 --directions 4 --k 16 --routes auto mf:4 mf:16 formed:4
    python -m benchmarks.bench_topk_routes --quick      # tiny shapes, a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time

import torch

import bilinear_kernels as bk

from .report import cpu_model
from .workloads import WEIGHTS, random_weights


def plain_route(w, v, c, k):
    """The per-direction route a user writes: einsum Q, symmetrize, eigh, top-k by |λ|."""
    vals, vecs = [], []
    for ci in c:
        g = torch.einsum("k,ki,kj->ij", ci, w, v)
        q = 0.5 * (g + g.T)
        ev, evec = torch.linalg.eigh(q)
        idx = torch.argsort(ev.abs(), descending=True)[:k]
        vals.append(ev[idx])
        vecs.append(evec[:, idx])
    return torch.stack(vals), torch.stack(vecs)


# route names beside decompose's methods: method="lanczos" with its product route forced
KRYLOV_ROUTES = {"formed": "formed", "mf": "matrix-free"}


def parse_route(text: str):
    """METHOD[:BLOCK] -> decompose's keyword arguments."""
    name, _, block = text.partition(":")
    kwargs = dict(block_size=int(block) if block else None)
    if name in KRYLOV_ROUTES:
        return dict(method="lanczos", krylov_route=KRYLOV_ROUTES[name], **kwargs)
    return dict(method=name, **kwargs)


def run_route(route, layer, directions, k, tol):
    return bk.decompose(layer, directions, k=k, tol=tol, **parse_route(route))


class Floors:
    """The least work of each route, timed like the routes (rows named floor:...):
      floor:form        forming Q for every direction: what the formed route cannot go below
      floor:mf:P        the products alone that `mf:P` needed (its mean per direction, in steps of
                        P columns per direction, all directions in lockstep): no orthogonalization,
                        no Rayleigh–Ritz, no restarts
      floor:eigvalsh    eigenvalues alone of Q formed beforehand (not counted): the tridiagonal
                        reduction every dense solver starts with
    """

    def __init__(self, layer, directions, k, tol):
        self.layer, self.directions, self.k, self.tol = layer, directions, k, tol
        self.q = bk.interaction_matrices(layer, directions)
        self.products = {}

    def run(self, name):
        from bilinear_kernels.interaction import InteractionOperator
        from bilinear_kernels.directions import parse_directions

        kind = name.split(":")[1]
        if kind == "form":
            return bk.interaction_matrices(self.layer, self.directions)
        if kind == "eigvalsh":
            return torch.linalg.eigvalsh(self.q)
        if kind == "mf":
            p = int(name.split(":")[2])
            if p not in self.products:
                res = run_route(f"mf:{p}", self.layer, self.directions, self.k, self.tol)
                self.products[p] = res.metadata["products_mean"]
            w, v = self.layer.homogeneous(torch.float32)
            op = InteractionOperator(w, v)
            c = parse_directions(self.directions, self.layer.d_out).coefficients(self.layer, torch.float32)
            x = torch.randn(len(self.directions), p, self.layer.d_form)
            for _ in range(max(1, round(self.products[p] / p))):
                x = op.apply_rows(c, x)
                x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
            return x
        raise ValueError(f"unknown floor {name!r}")


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_topk_routes", description=__doc__.split("\n\n")[0])
    ap.add_argument("--d", type=int, default=1024)
    ap.add_argument("--h-over-d", type=int, default=4)
    ap.add_argument("--h", type=int, default=None, help="hidden width (default: h-over-d · d)")
    ap.add_argument("--directions", type=int, default=4)
    ap.add_argument("--k", type=lambda t: None if t == "full" else int(t), default=16,
                    help="eigenpairs per direction, or 'full' for the whole spectrum")
    ap.add_argument("--weights", choices=WEIGHTS, default="gaussian")
    ap.add_argument("--tol", type=float, default=None, help="decompose's tol (default: its own)")
    ap.add_argument("--routes", nargs="+", default=["auto", "lanczos:4", "lanczos:16"])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1, help="torch threads (default 1: less noise on a shared machine)")
    ap.add_argument("--plain-directions", type=int, default=None,
                    help="run the plain route on this many directions and scale its time (default: all)")
    ap.add_argument("--json", default=None, help="also write the rows to this JSON file")
    ap.add_argument("--quick", action="store_true", help="d = 128, 2 directions, k = 8, 2 rounds")
    args = ap.parse_args(argv)
    if args.quick:
        args.d, args.directions, args.k, args.repeats = 128, 2, 8, 2
    torch.set_num_threads(args.threads)

    d, h, b = args.d, args.h or args.h_over_d * args.d, args.directions
    w, v, p = random_weights("topk-routes", d, h, b, args.weights)
    layer = bk.BilinearLayer(w, v, p)
    directions = list(range(b))
    n_plain = min(b, args.plain_directions or b)
    plain_scale = b / n_plain

    times = {r: [] for r in ["plain", *args.routes]}
    notes = {}
    floors = Floors(layer, directions, args.k, args.tol) if any(r.startswith("floor:") for r in args.routes) else None
    timed = lambda route: floors.run(route) if route.startswith("floor:") else run_route(route, layer, directions, args.k, args.tol)  # noqa: E731
    for route in args.routes:  # warm-up, not timed
        if route.startswith("floor:"):
            floors.run(route)
        else:
            run_route(route, layer, directions[:1], args.k, args.tol)
    for _ in range(args.repeats):
        start = time.perf_counter()
        ref_vals, _ = plain_route(w, v, p[:n_plain], args.k or d)
        times["plain"].append((time.perf_counter() - start) * plain_scale)
        for route in args.routes:
            start = time.perf_counter()
            res = timed(route)
            times[route].append(time.perf_counter() - start)
            if route.startswith("floor:"):
                if route.startswith("floor:mf:"):
                    notes[route] = dict(products_mean=floors.products[int(route.split(":")[2])])
                continue
            err = (res.eigenvalues[:n_plain].abs().sort(-1).values - ref_vals.abs().sort(-1).values).abs().max()
            scale = ref_vals.abs().amax()
            notes[route] = dict(method=res.method, rel_eig_error=float(err / scale),
                                **{key: res.metadata[key] for key in ("krylov_route", "block_size", "products_mean")
                                   if key in res.metadata})

    plain = statistics.median(times["plain"])
    rows = []
    print(f"d={d} h={h} directions={b} k={args.k} weights={args.weights} threads={args.threads} "
          f"torch {torch.__version__} on {cpu_model()} ({os.cpu_count()} cores)"
          + (f"; plain route timed on {n_plain} directions, scaled by {plain_scale:g}" if n_plain < b else ""))
    for route, ts in times.items():
        med = statistics.median(ts)
        row = dict(route=route, median_s=med, min_s=min(ts), max_s=max(ts), speedup_vs_plain=plain / med,
                   **notes.get(route, {}))
        rows.append(row)
        extra = " ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in notes.get(route, {}).items())
        print(f"  {route:<18} {med:9.3f} s  [{min(ts):.3f}–{max(ts):.3f}]  {plain / med:6.2f}x  {extra}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(dict(command=" ".join(sys.argv), cpu=cpu_model(), cores=os.cpu_count(),
                           load_average=os.getloadavg(), d=d, h=h, directions=b, k=args.k,
                           weights=args.weights, threads=args.threads, torch=torch.__version__,
                           config=torch.__config__.show(), rows=rows), f, indent=1)


if __name__ == "__main__":
    main()
