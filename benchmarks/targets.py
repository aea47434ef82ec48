"""The targets the suite reports as PASS/FAIL lines, computed from the measurements of one run.

The peer of a workload is the fastest of its "peer" rows (the published routes and the plain
per-direction route, benchmarks.peers) that ran, measured in the same run. Speedup = the peer's
median time over a row's median time. Ours is bk.decompose with method="auto", the method users get.

Targets (the same on every device):
  every workload    ours ≥ 1.0× the peer
  top-k, d ≥ 1024   ours ≥ 5× the peer, for 4 and for 64 directions (h = 4d, k = 16..64), on
                    gaussian and on decaying weights: checked on every workload of the run that has
                    that shape; a run without one says so (benchmarks.bench_core has them)
A row of ours counts only if its largest residual is at most ACCURACY_TOL: fast and wrong fails.
"""
from __future__ import annotations

ACCURACY_TOL = 1e-3
OURS = "ours-auto"
PARITY = 1.0
TOPK_SPEEDUP = 5.0
TOPK_MIN_D = 1024
TOPK_DIRECTIONS = (4, 64)
TOPK_K = (16, 64)


def _median(row: dict | None) -> float | None:
    if row is None or row.get("status") != "ok" or not row.get("seconds"):
        return None
    return row["seconds"]["median"]


def _residual(row: dict) -> float | None:
    acc = row.get("accuracy") or {}
    return acc.get("max_residual")


def peer_row(workload: dict) -> dict | None:
    """The fastest peer row that ran, or None."""
    ran = [r for r in workload["rows"] if r["family"] == "peer" and _median(r) is not None]
    return min(ran, key=_median, default=None)


def speedup(workload: dict, row: dict | None) -> float | None:
    """The peer's median over this row's median, or None when either did not run."""
    base, mine = _median(peer_row(workload)), _median(row)
    if base is None or mine is None or mine <= 0:
        return None
    return base / mine


def ours_row(workload: dict) -> dict | None:
    return next((r for r in workload["rows"] if r["method"] == OURS), None)


def is_topk_case(workload: dict) -> bool:
    s = workload["shapes"]
    return (not s["full_spectrum"] and s["d"] >= TOPK_MIN_D and s["h"] == 4 * s["d"]
            and s["directions"] in TOPK_DIRECTIONS and TOPK_K[0] <= s["k"] <= TOPK_K[1])


def _label(workload: dict) -> str:
    weights = workload.get("weights")
    return workload["name"] + (f" ({weights})" if weights else "")


def _compare(workload: dict, least: float) -> tuple[bool | None, str]:
    """(passed, detail) of ours against the peer on one workload."""
    ours, peer = ours_row(workload), peer_row(workload)
    if ours is None or _median(ours) is None or peer is None:
        why = []
        if ours is None:
            why.append("ours (auto) not run")
        elif _median(ours) is None:
            why.append(f"ours (auto): {ours['status']} ({ours['reason']})")
        if peer is None:
            why.append("no peer route ran")
        return (False if ours is not None and _median(ours) is None else None), "; ".join(why)
    ratio = speedup(workload, ours)
    resid = _residual(ours)
    accurate = resid is not None and resid <= ACCURACY_TOL
    detail = (f"ours (auto → {ours['extra'].get('method_ran', '?')}) {ratio:.2f}× {peer['method']}"
              + (f", max residual {resid:.1e}" if resid is not None else ""))
    if not accurate:
        detail += f" (above {ACCURACY_TOL:g}: does not count)"
    return ratio >= least and accurate, detail


def evaluate(results: dict) -> list[dict]:
    """PASS/FAIL lines for this run; `passed` is None when the run cannot tell."""
    scale = (results.get("settings") or {}).get("scale", 1)
    note = "" if scale == 1 else f" (at scale {scale:g})"
    workloads = list(results.get("workloads", []))
    lines = []
    for w in workloads:
        passed, detail = _compare(w, PARITY)
        lines.append({"target": f"{_label(w)} ≥ {PARITY:g}× the peer", "passed": passed, "detail": detail + note})
    if not workloads:
        lines.append({"target": f"every workload ≥ {PARITY:g}× the peer", "passed": None,
                      "detail": "no decomposition workload was run"})
    cases = [w for w in workloads if is_topk_case(w)]
    title = (f"top-k at d ≥ {TOPK_MIN_D} (h = 4d, k = {TOPK_K[0]}..{TOPK_K[1]}) ≥ {TOPK_SPEEDUP:g}× the peer "
             f"with {' and '.join(map(str, TOPK_DIRECTIONS))} directions")
    if not cases:
        lines.append({"target": title, "passed": None,
                      "detail": "no such workload in this run (the default cases of python -m benchmarks.bench_core have them)"})
        return lines
    details, verdicts = [], []
    for w in cases:
        passed, detail = _compare(w, TOPK_SPEEDUP)
        verdicts.append(passed)
        details.append(f"{_label(w)}: {detail}")
    missing = [n for n in TOPK_DIRECTIONS if n not in {w["shapes"]["directions"] for w in cases}]
    if missing:
        details.append(f"not measured with {', '.join(map(str, missing))} directions")
    passed = False if False in verdicts else (None if None in verdicts or missing else True)
    lines.append({"target": title, "passed": passed, "detail": "; ".join(details) + note})
    return lines


def verdict(line: dict) -> str:
    return {True: "PASS", False: "FAIL", None: "NOT MEASURED"}[line["passed"]]
