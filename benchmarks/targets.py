"""The targets the suite reports as PASS/FAIL lines, computed from the measurements of one run.

Speedup = median time of the baseline row (the research-code approach; torch eager for W5) over
the median time of bk.decompose with method="auto" (the method users get; bk.bilinear for W5),
both from the same run.

"At the same accuracy": a peer counts against a workload's speed only when its largest residual
is no worse than max(ours, ACCURACY_TOL), i.e. it reached our accuracy or the tolerance both are
asked for.
"""
from __future__ import annotations

ACCURACY_TOL = 1e-4
OURS = "ours-auto"

# (workload, least speedup, largest allowed residual of ours or None)
GPU_TARGETS = (("W2", 10.0, None), ("W3", 20.0, 1e-4), ("W4", 50.0, None), ("W1", 2.0, None))
CPU_TARGETS = (("W3", 10.0, None), ("W4", 10.0, None))


def _median(row: dict | None) -> float | None:
    if row is None or row.get("status") != "ok" or not row.get("seconds"):
        return None
    return row["seconds"]["median"]


def _residual(row: dict) -> float | None:
    acc = row.get("accuracy") or {}
    return acc.get("max_residual")


def baseline_row(workload: dict) -> dict | None:
    return next((r for r in workload["rows"] if r["family"] == "baseline"), None)


def speedup(workload: dict, row: dict) -> float | None:
    """Baseline median over this row's median, or None when either did not run."""
    base, mine = _median(baseline_row(workload)), _median(row)
    if base is None or mine is None or mine <= 0:
        return None
    return base / mine


def _find(results: dict, name: str) -> dict | None:
    return next((w for w in results.get("workloads", []) if w["name"] == name), None)


def _speed_target(results: dict, name: str, least: float, max_residual: float | None, note: str) -> dict:
    title = f"{name} ≥ {least:g}× over the research code" + (
        f" with residual ≤ {max_residual:g}" if max_residual is not None else "")
    workload = _find(results, name)
    if workload is None:
        return {"target": title, "passed": None, "detail": f"{name} was not run{note}"}
    ours = next((r for r in workload["rows"] if r["method"] == OURS), None)
    ratio = speedup(workload, ours) if ours else None
    if ratio is None:
        why = []
        for label, row in (("research code", baseline_row(workload)), ("ours (auto)", ours)):
            if row is None:
                why.append(f"{label} not run")
            elif row["status"] != "ok":
                why.append(f"{label}: {row['status']} ({row['reason']})")
        return {"target": title, "passed": None, "detail": "; ".join(why) + note}
    resid = _residual(ours)
    passed = ratio >= least
    detail = f"ours (auto → {ours['extra'].get('method_ran', '?')}) {ratio:.2f}×"
    if resid is not None:
        detail += f", max residual {resid:.1e}"
    if max_residual is not None:
        passed = passed and resid is not None and resid <= max_residual
    return {"target": title, "passed": passed, "detail": detail + note}


def _no_slower_target(results: dict) -> dict:
    title = "no workload slower than any peer at the same accuracy"
    offenders, checked = [], 0
    for workload in results.get("workloads", []):
        ours = next((r for r in workload["rows"] if r["method"] == OURS), None)
        mine = _median(ours)
        if mine is None:
            if ours is not None:
                offenders.append(f"{workload['name']}: ours (auto) {ours['status']}")
            continue
        bar = max(_residual(ours) or 0.0, ACCURACY_TOL)
        for row in workload["rows"]:
            theirs = _median(row)
            if row["family"] == "ours" or theirs is None:
                continue
            resid = _residual(row)
            if resid is None or resid > bar:
                continue
            checked += 1
            if theirs < mine:
                offenders.append(f"{workload['name']}: {row['method']} {mine / theirs:.2f}× faster")
    if not results.get("workloads"):
        return {"target": title, "passed": None, "detail": "no decomposition workload was run"}
    detail = "; ".join(offenders) if offenders else f"ours (auto) was fastest in all {checked} comparisons"
    return {"target": title, "passed": not offenders, "detail": detail}


def evaluate(results: dict) -> list[dict]:
    """PASS/FAIL lines for this run's device; `passed` is None when the run cannot tell."""
    scale = results["settings"]["scale"]
    on_gpu = results["settings"]["device"].startswith("cuda")
    if on_gpu:
        note = "" if scale == 1 else f" (target defined at full size; this run used scale {scale:g})"
        lines = [_speed_target(results, n, x, r, note) for n, x, r in GPU_TARGETS]
        lines.append(_no_slower_target(results))
    else:
        lines = [_speed_target(results, n, x, r, f" (at scale {scale:g})") for n, x, r in CPU_TARGETS]
        line = _no_slower_target(results)
        line["target"] += " (a GPU target; checked here too)"
        lines.append(line)
    return lines


def verdict(line: dict) -> str:
    return {True: "PASS", False: "FAIL", None: "NOT MEASURED"}[line["passed"]]
