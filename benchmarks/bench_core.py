"""Core engine against the research-code approach and SciPy, on one CPU, in one run.

Question: how much faster is `decompose` than what researchers run today, at matched accuracy?
Peers, all on the same random layer and directions:
  research      Q per direction with einsum (or the whole tensor when it fits), symmetrize,
                full torch.linalg.eigh, select top-k
  eigsh-formed  scipy.sparse.linalg.eigsh on a Q formed by our GEMM (solver only, plus forming)
  eigsh-free    scipy.sparse.linalg.eigsh on a matrix-free LinearOperator (two GEMVs per product)
  ours-*        bk.decompose with each applicable method
Accuracy, for every row, on a subsample of directions against a float64 oracle: max relative
eigenvalue error (relative to the direction's largest |λ|) and max relative residual
‖Q v − λ v‖ / ‖Q‖ recomputed in float64.

    python -m benchmarks.bench_core            # both cases, writes benchmarks/results/core-cpu-*.{json,md}
    python -m benchmarks.bench_core --quick    # tiny shapes, a smoke test
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from datetime import date
from pathlib import Path

import numpy as np
import scipy
import scipy.sparse.linalg as sla
import torch

import bilinear_kernels as bk
from .report import cpu_model

RESULTS = Path(__file__).resolve().parent / "results"

# (name, d, h, o, directions, k, which): k None means the full spectrum
CASES = [
    ("full-spectrum d=512", 512, 2048, 512, 64, None, "LM"),
    ("top-16 d=2048", 2048, 8192, 2048, 32, 16, "LM"),
]
QUICK = [
    ("full-spectrum d=64", 64, 256, 64, 8, None, "LM"),
    ("top-8 d=256", 256, 1024, 256, 8, 8, "LM"),
]
ORACLE_DIRECTIONS = 4


def random_layer(d, h, o, seed=0):
    """Random weights scaled like a trained layer's (unit-variance activations)."""
    g = torch.Generator().manual_seed(seed)
    w = torch.randn(h, d, generator=g) / d**0.5
    v = torch.randn(h, d, generator=g) / d**0.5
    p = torch.randn(o, h, generator=g) / h**0.5
    return w, v, p


def select_lm(vals, vecs, k):
    order = np.argsort(-np.abs(vals), kind="stable")[:k]
    return vals[order], vecs[:, order]


# -- peers ---------------------------------------------------------------------------------
def research(w, v, p, dirs, k):
    """The published pipeline: materialize (whole tensor if it fits in 4 GiB, else Q per
    direction) with einsum, symmetrize, dense eigh, keep the top k by |λ|."""
    o, h = p.shape
    d = w.shape[1]
    out = []
    if o * d * d * 4 <= 4 * 2**30:
        b = torch.einsum("ak,ki,kj->aij", p, w, v)
        b = 0.5 * (b + b.mT)
        qs = (b[i] for i in dirs)
    else:
        qs = (0.5 * (q + q.T) for q in (torch.einsum("k,ki,kj->ij", p[i], w, v) for i in dirs))
    for q in qs:
        vals, vecs = torch.linalg.eigh(q)
        out.append(select_lm(vals.numpy(), vecs.numpy(), k or d))
    return out


def start_vector(direction: int, d: int) -> np.ndarray:
    """ARPACK's starting vector for a direction, from a fixed seed: without one ARPACK draws its
    own, and a run (and whether it converges to the right pairs at a loose tol) is not repeatable."""
    return np.random.default_rng(direction).standard_normal(d).astype(np.float32)


def eigsh_formed(layer, dirs, k, tol):
    out = []
    for i in dirs:
        q = bk.interaction_matrices(layer, [i])[0].numpy()
        vals, vecs = sla.eigsh(q, k=k, which="LM", tol=tol, v0=start_vector(int(i), q.shape[0]))
        out.append(select_lm(vals, vecs, k))
    return out


def eigsh_free(w, v, p, dirs, k, tol):
    d = w.shape[1]
    out = []
    for i in dirs:
        c = p[i]

        def matvec(x, c=c):
            x = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).reshape(d, -1)
            y = 0.5 * (w.T @ (c[:, None] * (v @ x)) + v.T @ (c[:, None] * (w @ x)))
            return y.numpy()

        op = sla.LinearOperator((d, d), matvec=matvec, matmat=matvec, dtype=np.float32)
        vals, vecs = sla.eigsh(op, k=k, which="LM", tol=tol, v0=start_vector(int(i), d))
        out.append(select_lm(vals, vecs, k))
    return out


def ours(layer, dirs, k, method, tol):
    res = bk.decompose(layer, dirs, k=k, method=method, tol=tol)
    pairs = [(res.eigenvalues[j].numpy(), res.eigenvectors[j].numpy()) for j in range(len(dirs))]
    return pairs, res


# -- accuracy ------------------------------------------------------------------------------
def oracle(w, v, p, dirs):
    """float64 Q and its full spectrum for the first ORACLE_DIRECTIONS directions."""
    w64, v64, p64 = (t.double().numpy() for t in (w, v, p))
    refs = []
    for i in dirs[:ORACLE_DIRECTIONS]:
        g = (w64 * p64[i][:, None]).T @ v64
        q = 0.5 * (g + g.T)
        refs.append((q, np.linalg.eigvalsh(q)))
    return refs


def accuracy(pairs, refs, k):
    err, res = 0.0, 0.0
    for (vals, vecs), (q, spectrum) in zip(pairs, refs):
        top = spectrum[np.argsort(-np.abs(spectrum), kind="stable")[: k or len(spectrum)]]
        scale = np.abs(spectrum).max()
        # compare as sorted sets: ± pairs of near-equal magnitude may swap places
        err = max(err, np.abs(np.sort(vals.astype(np.float64)) - np.sort(top)).max() / scale)
        vecs = vecs.astype(np.float64)
        r = np.linalg.norm(q @ vecs - vecs * vals.astype(np.float64), axis=0) / scale
        res = max(res, r.max())
    return float(err), float(res)


def timed(fn):
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def run_case(name, d, h, o, n_dirs, k, which, tol, skip_slow_peers):
    torch.manual_seed(0)
    w, v, p = random_layer(d, h, o)
    layer = bk.BilinearLayer(w, v, p)
    dirs = list(range(n_dirs))
    refs = oracle(w, v, p, dirs)
    rows = []

    def add(label, fn, note=""):
        seconds, out = timed(fn)
        pairs, res = out if isinstance(out, tuple) else (out, None)
        err, resid = accuracy(pairs, refs, k)
        row = {"peer": label, "seconds": seconds, "per_direction": seconds / n_dirs,
               "max_rel_eig_error": err, "max_residual": resid, "note": note}
        if res is not None:
            row["method"] = res.method
            row["metadata"] = res.metadata
        rows.append(row)
        print(f"  {label:<18} {seconds:8.2f} s   err {err:.1e}   residual {resid:.1e}", flush=True)

    print(f"{name}: d={d} h={h} o={o} directions={n_dirs} k={k or 'all'}", flush=True)
    add("research", lambda: research(w, v, p, dirs, k))
    if k is not None and not skip_slow_peers:
        add("eigsh-formed", lambda: eigsh_formed(layer, dirs, k, tol), f"ARPACK tol={tol:g}")
        add("eigsh-free", lambda: eigsh_free(w, v, p, dirs, k, tol), f"ARPACK tol={tol:g}")
    methods = ["auto", "eigh", "lanczos"] + (["lowrank"] if 2 * h < d else [])
    for method in methods:
        add(f"ours-{method}", lambda m=method: ours(layer, dirs, k, m, tol if k is not None else None),
            f"tol={tol:g}" if k is not None else "")
    base = rows[0]["seconds"]
    scipy_best = min((r["seconds"] for r in rows if r["peer"].startswith("eigsh")), default=None)
    for r in rows:
        r["speedup_vs_research"] = base / r["seconds"]
        r["speedup_vs_best_scipy"] = scipy_best / r["seconds"] if scipy_best else None
    return {"case": name, "d": d, "h": h, "o": o, "directions": n_dirs, "k": k, "which": which,
            "tol": tol, "oracle_directions": min(ORACLE_DIRECTIONS, n_dirs), "rows": rows}


def machine():
    cpu = cpu_model()
    return {"device": "cpu", "cpu": cpu, "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "python": platform.python_version(), "torch": torch.__version__, "numpy": np.__version__,
            "scipy": scipy.__version__, "bilinear_kernels": bk.__version__, "date": date.today().isoformat()}


def targets(cases):
    """The core engine's targets at d=2048, k=16, computed from the measurements."""
    lines = []
    for case in cases:
        if case["k"] is None:
            continue
        rows = {r["peer"]: r for r in case["rows"]}
        lz = rows["ours-lanczos"]
        acc = lz["max_rel_eig_error"] <= 1e-4
        lines.append(f"- {case['case']}: lanczos {lz['speedup_vs_research']:.1f}x the research approach "
                     f"(target 4x): {'PASS' if lz['speedup_vs_research'] >= 4 and acc else 'FAIL'}")
        if lz.get("speedup_vs_best_scipy"):
            lines.append(f"- {case['case']}: lanczos {lz['speedup_vs_best_scipy']:.1f}x the better SciPy eigsh "
                         f"(target 2x): {'PASS' if lz['speedup_vs_best_scipy'] >= 2 and acc else 'FAIL'}")
        lines.append(f"- {case['case']}: lanczos max relative eigenvalue error {lz['max_rel_eig_error']:.1e} "
                     f"(target ≤ 1e-4): {'PASS' if acc else 'FAIL'}")
    return lines


def markdown(info, cases):
    out = [f"# Core engine on CPU ({info['date']})", "",
           f"{info['cpu']}, {info['cores']} cores, torch {info['torch']} ({info['torch_threads']} threads), "
           f"SciPy {info['scipy']}, NumPy {info['numpy']}. Random layers (weights ~ N(0, 1/d), "
           "P ~ N(0, 1/h)), float32. Accuracy on the first "
           f"{ORACLE_DIRECTIONS} directions against a float64 oracle.", "",
           "Command: `python -m benchmarks.bench_core`", ""]
    for case in cases:
        out += [f"## {case['case']}: d={case['d']}, h={case['h']}, o={case['o']}, "
                f"{case['directions']} directions, k={case['k'] or 'all'}", "",
                "| peer | seconds | s/direction | vs research | vs best SciPy | max rel. eig. error | max residual | note |",
                "|---|---:|---:|---:|---:|---:|---:|---|"]
        for r in case["rows"]:
            vs_scipy = f"{r['speedup_vs_best_scipy']:.2f}x" if r["speedup_vs_best_scipy"] else "–"
            note = r["note"]
            if r.get("metadata", {}).get("products_mean"):
                note += f" products/direction {r['metadata']['products_mean']}"
            if r.get("method") and r["peer"] == "ours-auto":
                note += f" (chose {r['method']})"
            out.append(f"| {r['peer']} | {r['seconds']:.2f} | {r['per_direction']:.3f} | "
                       f"{r['speedup_vs_research']:.2f}x | {vs_scipy} | {r['max_rel_eig_error']:.1e} | "
                       f"{r['max_residual']:.1e} | {note.strip()} |")
        out.append("")
    out += ["## Targets", ""] + targets(cases) + [""]
    return "\n".join(out)


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="tiny shapes (smoke test)")
    ap.add_argument("--tol", type=float, default=1e-3,
                    help="residual tolerance for lanczos and ARPACK (default 1e-3: eigenvalue error "
                         "≈ residual²/gap stays under 1e-4)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    info = machine()
    cases = [run_case(*c, tol=args.tol, skip_slow_peers=False) for c in (QUICK if args.quick else CASES)]
    args.out.mkdir(parents=True, exist_ok=True)
    stem = args.out / f"core-cpu-{info['date']}{'-quick' if args.quick else ''}"
    stem.with_suffix(".json").write_text(json.dumps({"machine": info, "cases": cases}, indent=2))
    stem.with_suffix(".md").write_text(markdown(info, cases))
    print(f"wrote {stem}.json and {stem}.md")


if __name__ == "__main__":
    main()
