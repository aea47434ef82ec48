"""The engine's primitives against the einsum a user writes today: time and peak memory side by side.

Question: what do the primitives save over the hand-written way, and can the hand-written way run
at all at the shapes researchers meet (an SAE basis of F = 16384 features on a d = 1024 layer)?

  input-basis rows (d, h, F): a layer and a random basis of F unit columns, for each of
  `--directions` output indices; the peer forms Q in the layer's own d dimensions by einsum,
  symmetrized (the cheapest hand-written start: projecting the weights first costs h·F² per Q),
  then
      top_interactions   bk.top_interactions(k=64, basis=B)      vs  Bᵀ Q B, its triangle, topk
      entries            bk.interaction_entries(4096, basis=B)   vs  einsum('im,ij,jm->m') of the
                                                                     entries' basis columns and Q
      diagonal           bk.interaction_diagonal(basis=B)        vs  einsum('if,ij,jf->f', B, Q, B)
  (`project_input` itself is timed on its own row: what a projected layer costs up front.)
  output_svd (o = d, h): bk.output_svd(k=all)   vs  the (o, d, d) tensor by einsum, symmetrized,
      reshaped to (o, d²), torch.linalg.svd (what published code does), and vs the thriftier
      formed route: the tensor formed in chunks of outputs, S Sᵀ, eigvalsh; at o = d = 4096 the
      tensor (256 GiB) cannot be formed and only ours runs
  interaction_norms (d, h, b): bk.interaction_norms  vs  Q by einsum per direction, its norm

Rows run interleaved (ours, the peer, ours, ...) for `--repeats` rounds, fewer once a row's rounds
have taken `--budget` seconds (at least one); a row reports the median
seconds, its peak memory (measure.PeakMemory: CPU resident-set high-water mark, a lower bound)
and the ratio peer / ours. A peer whose up-front memory estimate exceeds half the available
memory is not run and says so (the estimate of the formed-tensor routes counts the (o, h, d)
intermediate that a three-operand einsum sharing the hidden index keeps for the published route: 16
GiB at o = d = 1024, h = 4096, on top of the 4 GiB tensor). Every row also reports the largest difference between ours and the
peer, relative to the peer's largest magnitude.

    python -m benchmarks.bench_primitives                  # the full shapes (minutes to hours on a CPU)
    python -m benchmarks.bench_primitives --scale 0.125    # every dimension × 0.125
    python -m benchmarks.bench_primitives --quick          # tiny shapes, a smoke test
"""
from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
import time
from datetime import date
from pathlib import Path

import torch

import bilinear_kernels as bk
from bilinear_kernels.memory import format_bytes

from . import report
from .measure import MEMORY_METHOD, PeakMemory, free_bytes

RESULTS = Path(__file__).resolve().parent / "results"
FULL = dict(d=1024, h=4096, features=(8192, 16384), svd=((1024, 4096), (4096, 16384)), norm_directions=64)
TOP_K = 64
N_ENTRIES = 4096
QUICK_SCALE = 1 / 64


def parse_args(argv):
    ap = argparse.ArgumentParser(prog="python -m benchmarks.bench_primitives", description=__doc__.split("\n\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every dimension (default 1: the full shapes)")
    ap.add_argument("--directions", type=int, default=2, help="output indices for the input-basis rows (default 2)")
    ap.add_argument("--repeats", type=int, default=3, help="timed rounds after the warm-up (default 3)")
    ap.add_argument("--budget", type=float, default=120.0,
                    help="seconds of timed rounds after which a row stops repeating (default 120)")
    ap.add_argument("--quick", action="store_true", help=f"scale {QUICK_SCALE:g} and 1 round: a smoke test")
    ap.add_argument("--note", default="", help="a sentence recorded with the results (e.g. what else the machine ran)")
    ap.add_argument("--out", type=Path, default=RESULTS)
    args = ap.parse_args(argv)
    if args.quick:
        args.scale, args.repeats = QUICK_SCALE, 1
    for name in ("repeats", "directions"):
        if getattr(args, name) < 1:
            ap.error(f"--{name} must be at least 1, got {getattr(args, name)}")
    for name in ("scale", "budget"):
        if not getattr(args, name) > 0:
            ap.error(f"--{name} must be positive, got {getattr(args, name):g}")
    return args


def scaled(n: int, scale: float) -> int:
    return max(4, round(n * scale))


def random_layer(d: int, h: int, o: int, seed: int = 0) -> bk.BilinearLayer:
    g = torch.Generator().manual_seed(seed)
    return bk.BilinearLayer(torch.randn(h, d, generator=g) / d**0.5, torch.randn(h, d, generator=g) / d**0.5,
                            torch.randn(o, h, generator=g) / h**0.5)


# -- the hand-written way --------------------------------------------------------------------
def einsum_q(layer: bk.BilinearLayer, direction: int) -> torch.Tensor:
    """What analysis code writes: the symmetrized Q of one output index by einsum."""
    c = layer.p[direction]
    q = torch.einsum("k,ki,kj->ij", c, layer.w, layer.v)
    return (q + q.T) / 2


def peer_top(layer, dirs, k, basis):
    out = []
    for a in dirs:
        q = basis.T @ einsum_q(layer, a) @ basis
        upper = torch.triu(q).abs() + torch.tril(torch.full_like(q, -1.0), -1)  # i > j never chosen
        out.append(torch.topk(upper.flatten(), k).values)
    return torch.stack(out)


def peer_entries(layer, dirs, rows, cols, basis):
    left, right = basis[:, rows], basis[:, cols]
    return torch.stack([torch.einsum("im,ij,jm->m", left, einsum_q(layer, a), right) for a in dirs])


def peer_diagonal(layer, dirs, basis):
    return torch.stack([torch.einsum("if,ij,jf->f", basis, einsum_q(layer, a), basis) for a in dirs])


def peer_svd(layer):
    t = torch.einsum("ak,ki,kj->aij", layer.p, layer.w, layer.v)
    t = (t + t.mT) / 2
    u, s, _ = torch.linalg.svd(t.reshape(t.shape[0], -1), full_matrices=False)
    return s


GRAM_CHUNK = 64  # outputs formed per einsum: its (chunk, h, d) intermediate stays small


def peer_gram(layer):
    """The thriftier hand-written route: the tensor formed in chunks of outputs (no (o, h, d)
    intermediate), symmetrized, its Gram matrix S Sᵀ and eigvalsh."""
    o, d = layer.p.shape[0], layer.w.shape[1]
    t = torch.empty(o, d, d)
    for a in range(0, o, GRAM_CHUNK):
        t[a:a + GRAM_CHUNK] = torch.einsum("ak,ki,kj->aij", layer.p[a:a + GRAM_CHUNK], layer.w, layer.v)
    t.add_(t.mT.contiguous()).mul_(0.5)
    flat = t.reshape(t.shape[0], -1)
    values = torch.linalg.eigvalsh(flat @ flat.T).flip(0)
    return values.clamp_min(0).sqrt()


def peer_norms(layer, dirs):
    return torch.stack([torch.linalg.matrix_norm(einsum_q(layer, a)) for a in dirs])


# -- measuring -------------------------------------------------------------------------------
def run_pair(name: str, shape: dict, ours, peer, peer_bytes: int | None, repeats: int, compare,
             budget: float = float("inf"), same_ours: dict | None = None) -> dict:
    """Warm-up (peak memory, results), then up to `repeats` interleaved rounds of ours and the peer,
    fewer once the rounds have taken `budget` seconds (at least one). `same_ours`: the row of the
    same call of ours measured just before, reused when this row's peer cannot run (nothing to
    interleave with)."""
    row = {"name": name, "shape": shape, "ours": {}, "peer": {}}
    available = free_bytes("cpu")
    run_peer = peer is not None and (peer_bytes is None or peer_bytes <= available // 2)
    if peer is not None and not run_peer:
        row["peer"]["status"] = (f"not run: needs about {format_bytes(peer_bytes)}, over half the "
                                 f"{format_bytes(available)} available")
    elif peer is None:
        row["peer"]["status"] = "no peer"
    if not run_peer and same_ours is not None:
        row["ours"] = {**same_ours["ours"], "reused_from": same_ours["name"]}
        return row
    results = {}
    contenders = [("ours", ours)] + ([("peer", peer)] if run_peer else [])
    for who, fn in contenders:
        with PeakMemory("cpu") as mem:
            started = time.perf_counter()
            results[who] = fn()
            first = time.perf_counter() - started
        row[who].update(status="ok", peak_bytes=mem.bytes, samples=[], warmup_seconds=first)
    rounds_started = time.perf_counter()
    for _ in range(repeats):
        if row["ours"]["samples"] and time.perf_counter() - rounds_started > budget:
            break
        for who, fn in contenders:
            started = time.perf_counter()
            fn()
            row[who]["samples"].append(time.perf_counter() - started)
    for who, _ in contenders:
        row[who]["median"] = statistics.median(row[who]["samples"])
    if run_peer:
        row["ratio"] = row["peer"]["median"] / row["ours"]["median"]
        row["max_relative_difference"] = compare(results["ours"], results["peer"])
    return row


def relative_difference(ours: torch.Tensor, peer: torch.Tensor) -> float:
    ours, peer = ours.double(), peer.double()
    return float((ours - peer).abs().max() / peer.abs().max().clamp_min(1e-300))


def main(argv=None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    env = report.environment("cpu")
    s = args.scale
    d, h = scaled(FULL["d"], s), scaled(FULL["h"], s)
    layer = random_layer(d, h, d)
    dirs = list(range(args.directions))
    rows = []
    g = torch.Generator().manual_seed(1)
    for f_full in FULL["features"]:
        f = scaled(f_full, s)
        basis = torch.randn(d, f, generator=g)
        basis /= torch.linalg.vector_norm(basis, dim=0)
        shape = dict(d=d, h=h, F=f, directions=len(dirs))
        started = time.perf_counter()
        layer.project_input(basis)
        rows.append({"name": "project_input", "shape": shape, "ours": {"status": "ok", "median": time.perf_counter() - started}})
        q_bytes = (h * d + 2 * d * d + 3 * f * f) * 4  # forming Q, Bᵀ Q B, its masked magnitudes
        k = min(TOP_K, f * (f + 1) // 2)
        rows.append(run_pair("top_interactions", dict(shape, k=k),
                             lambda: bk.top_interactions(layer, dirs, k, basis=basis)[0],
                             lambda: peer_top(layer, dirs, k, basis), q_bytes, args.repeats,
                             lambda a, b: relative_difference(a.abs(), b), args.budget))
        ent_r = torch.randint(0, f, (N_ENTRIES,), generator=g)
        ent_c = torch.randint(0, f, (N_ENTRIES,), generator=g)
        small_bytes = (h * d + 2 * d * d + 3 * d * max(f, N_ENTRIES)) * 4
        rows.append(run_pair("interaction_entries", dict(shape, entries=N_ENTRIES),
                             lambda: bk.interaction_entries(layer, dirs, ent_r, ent_c, basis=basis),
                             lambda: peer_entries(layer, dirs, ent_r, ent_c, basis), small_bytes, args.repeats,
                             relative_difference, args.budget))
        rows.append(run_pair("interaction_diagonal", shape,
                             lambda: bk.interaction_diagonal(layer, dirs, basis=basis),
                             lambda: peer_diagonal(layer, dirs, basis), small_bytes, args.repeats,
                             relative_difference, args.budget))
    for o_full, h_full in FULL["svd"]:
        o, hh = scaled(o_full, s), scaled(h_full, s)
        svd_layer = random_layer(o, hh, o, seed=2)
        tensor_bytes = o * o * o * 4
        # the published route's three-operand einsum sharing k keeps an (o, h, d) intermediate
        einsum_bytes = o * hh * o * 4 + tensor_bytes
        chunk_bytes = min(o, GRAM_CHUNK) * hh * o * 4
        rows.append(run_pair("output_svd", dict(o=o, d=o, h=hh, tensor_bytes=tensor_bytes),
                             lambda: bk.output_svd(svd_layer)[0], lambda: peer_svd(svd_layer),
                             einsum_bytes + 2 * tensor_bytes, args.repeats, relative_difference, args.budget))
        rows.append(run_pair("output_svd vs formed S Sᵀ", dict(o=o, d=o, h=hh, tensor_bytes=tensor_bytes),
                             lambda: bk.output_svd(svd_layer)[0], lambda: peer_gram(svd_layer),
                             chunk_bytes + tensor_bytes + 2 * o * o * 4, args.repeats, relative_difference,
                             args.budget, same_ours=rows[-1]))
        del svd_layer
    b = scaled(FULL["norm_directions"], s) if s < 1 else FULL["norm_directions"]
    rows.append(run_pair("interaction_norms", dict(d=d, h=h, directions=b),
                         lambda: bk.interaction_norms(layer, range(b)),
                         lambda: peer_norms(layer, range(b)), (h * d + 3 * d * d) * 4, args.repeats,
                         relative_difference, args.budget))

    results = {
        "question": "the primitives against the hand-written einsum: time and peak memory",
        "command": "python -m benchmarks.bench_primitives " + shlex.join(argv),
        "machine": report.finish_environment(env),
        "note": args.note,
        "settings": {"scale": s, "repeats": args.repeats, "budget_seconds": args.budget, "dtype": "float32",
                     "memory_method": MEMORY_METHOD["cpu"]},
        "rows": rows,
    }
    stem = f"primitives-cpu-{date.today().isoformat()}" + ("-quick" if args.quick else "" if s == 1 else f"-scale{s:g}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(results, indent=1) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(results))
    return results


def _seconds(part: dict) -> str:
    return f"{part['median']:.3g}" if part.get("status") == "ok" else "–"


def _peak(part: dict) -> str:
    return format_bytes(part["peak_bytes"]) if part.get("peak_bytes") is not None else "–"


def markdown(r: dict) -> str:
    m = r["machine"]
    lines = [
        "# Primitives against the hand-written einsum", "",
        f"Command: `{r['command']}`", "",
        *report.machine_header(m),
        f"Float32; up to {r['settings']['repeats']} interleaved rounds after a warm-up (fewer once a row's rounds "
        f"took {r['settings'].get('budget_seconds', float('inf')):g} s); peak memory: {r['settings']['memory_method']}.",
        "",
        *([f"Note: {r['note']}", ""] if r.get("note") else []),
        "| primitive | shape | ours (s) | peer (s) | peer / ours | ours peak | peer peak | max rel. difference | peer |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for row in r["rows"]:
        shape = ", ".join(f"{k}={v}" for k, v in row["shape"].items() if k != "tensor_bytes")
        ours, peer = row["ours"], row.get("peer", {})
        ratio = f"{row['ratio']:.2f}×" if "ratio" in row else "–"
        diff = f"{row['max_relative_difference']:.1e}" if "max_relative_difference" in row else "–"
        note = "" if peer.get("status") in ("ok", None) else peer["status"]
        if ours.get("reused_from"):
            note += f"; ours: the {ours['reused_from']} row's timing (the same call)"
        if row["name"] == "project_input":
            note = "the layer's weights on the basis, once (the rows below take the basis instead)"
        lines.append(f"| {row['name']} | {shape} | {_seconds(ours)} | {_seconds(peer)} | {ratio} | {_peak(ours)} | "
                     f"{_peak(peer)} | {diff} | {note} |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
