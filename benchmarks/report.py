"""The run's record: a JSON results file, a Markdown report and two PNG plots, side by side in
benchmarks/results/ under one stem (<device>-<date>[-scale<s>][-<only>]).

  <stem>.json          environment (device, driver, CUDA, torch, triton, cupy versions), settings,
                       shapes, every row with its raw timings, the targets
  <stem>.md            PASS/FAIL targets, speedups over the peer, per-workload tables
  <stem>-speedup.png   speedup per workload and method (log scale)
  <stem>-sweep.png     time against d per method and the peer (log-log), each curve's fitted exponent
"""
from __future__ import annotations

import importlib
import json
import math
import os
import platform
import subprocess
import time
from pathlib import Path

import torch

import bilinear_kernels as bk
from bilinear_kernels.memory import format_bytes

from .measure import MEMORY_METHOD
from .targets import evaluate, peer_row, speedup, verdict

STATUS_TEXT = {"time_cap": "time cap", "out_of_memory": "out of memory",
               "not_applicable": "n/a", "error": "error"}


# -- environment ---------------------------------------------------------------------------------
def _version(module: str) -> str | None:
    try:
        return importlib.import_module(module).__version__
    except Exception:  # noqa: BLE001 - not installed or broken: recorded as absent
        return None


def _run(cmd: list[str], cwd=None) -> str | None:
    try:
        out = subprocess.run(cmd, capture_output=True, text=True, timeout=20, cwd=cwd)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else None


def cpu_model() -> str | None:
    """The processor's model name (from /proc/cpuinfo where there is one)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or None


def blas() -> dict:
    """The BLAS and LAPACK torch was built with, and its CPU parallel backend."""
    config = torch.__config__.show()
    info = {}
    for key in ("BLAS_INFO", "LAPACK_INFO"):
        at = config.find(key + "=")
        if at >= 0:
            info[key.split("_")[0].lower()] = config[at + len(key) + 1:].split(",")[0].strip()
    for line in torch.__config__.parallel_info().splitlines():
        if line.startswith("ATen parallel backend:"):
            info["parallel_backend"] = line.split(":", 1)[1].strip()
    return info


def load_average() -> list[float] | None:
    """The 1, 5 and 15 minute load averages (runnable processes), or None where unknown."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def cpu_usage() -> dict | None:
    """What the machine's CPUs and this process (its own threads, not its children) have run so far, in seconds,
    and a wall clock: two readings give the other processes' share (`other_cores_busy`). None
    where /proc/stat cannot be read."""
    try:
        with open("/proc/stat") as f:
            fields = f.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    ticks = [int(x) for x in fields[1:]]
    # user nice system idle iowait irq softirq steal ...: busy is all but idle and iowait
    busy = sum(ticks) - ticks[3] - (ticks[4] if len(ticks) > 4 else 0)
    own = os.times()
    return {"busy_seconds": busy / os.sysconf("SC_CLK_TCK"), "wall_seconds": time.monotonic(),
            "own_seconds": own.user + own.system}


def other_cores_busy(start: dict | None, end: dict | None) -> float | None:
    """The average number of cores that processes other than this one kept busy between two
    `cpu_usage` readings (a benchmark's own threads are not load on it)."""
    if not start or not end or end["wall_seconds"] <= start["wall_seconds"]:
        return None
    other = (end["busy_seconds"] - start["busy_seconds"]) - (end["own_seconds"] - start["own_seconds"])
    return round(max(0.0, other) / (end["wall_seconds"] - start["wall_seconds"]), 2)


def finish_environment(env: dict) -> dict:
    """At the end of a run: the load average then, and how busy other processes kept the machine."""
    env["load_average_end"] = load_average()
    env["other_cores_busy"] = other_cores_busy(env.get("cpu_usage_start"), cpu_usage())
    return env


def load_note(env: dict) -> str:
    """A sentence saying the machine was busy, timings from such a run being noisy: when other
    processes kept at least half its cores busy on average during the run, or, for results that
    lack that reading, when the load average at the start or end was at least half its cores."""
    cores = env.get("cpu_count") or 1
    other = env.get("other_cores_busy")
    if other is not None:
        if other >= cores / 2:
            return (f"Taken on a loaded machine (other processes kept {other:g} of {cores} cores busy on "
                    "average during the run): timings are noisy; rerun on a quiet machine for final numbers.")
        return ""
    loads = [x[0] for x in (env.get("load_average_start"), env.get("load_average_end")) if x]
    if loads and max(loads) >= cores / 2:
        return (f"Taken on a loaded machine (1-minute load average {', then '.join(f'{x:g}' for x in loads)} "
                f"on {cores} cores): timings are noisy; rerun on a quiet machine for final numbers.")
    return ""


def machine_header(env: dict, threads: int | None = None) -> list[str]:
    """The opening lines of every results file: the machine and software in one sentence, the load
    readings in another, and the loaded-machine warning when there is one (`load_note`)."""
    lib = env.get("blas") or {}
    threads = env.get("torch_threads") if threads is None else threads
    where = (f"{env['gpu']['name']}, CUDA {env.get('cuda')}, driver {env.get('driver')}, triton {env.get('triton')}, "
             f"cupy {env.get('cupy')}; host {env['cpu']}" if env.get("gpu") else env["cpu"])
    out = [f"{where} ({env['cpu_count']} cores, {threads} torch threads); BLAS {lib.get('blas')}, LAPACK "
           f"{lib.get('lapack')}, {lib.get('parallel_backend')} threads; torch {env['torch']}, NumPy {env.get('numpy')}, "
           f"SciPy {env.get('scipy')}, opt_einsum {env.get('opt_einsum')}; commit {str(env.get('git_commit'))[:10]}"
           f"{' (modified)' if env.get('git_dirty') else ''}.", ""]
    loads = []
    if env.get("load_average_start"):
        loads.append(f"1-minute load average {env['load_average_start'][0]:g} at the start")
    if env.get("load_average_end"):
        loads.append(f"{env['load_average_end'][0]:g} at the end (this run's own threads included)")
    if env.get("other_cores_busy") is not None:
        loads.append(f"other processes kept {env['other_cores_busy']:g} cores busy on average")
    if loads:
        out += ["; ".join(loads) + ".", ""]
    busy = load_note(env)
    if busy:
        out += [f"**{busy}**", ""]
    return out


def environment(device: str) -> dict:
    root = Path(__file__).resolve().parent.parent
    env = {
        "device": device,
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "blas": blas(),
        "load_average_start": load_average(),
        "cpu_usage_start": cpu_usage(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "triton": _version("triton"),
        "cupy": _version("cupy"),
        "opt_einsum": _version("opt_einsum"),
        "numpy": _version("numpy"),
        "scipy": _version("scipy"),
        "bilinear_kernels": bk.__version__,
        "bilinear_kernels_backends": bk.backends(),
        "git_commit": _run(["git", "rev-parse", "HEAD"], cwd=root),
        "git_dirty": bool(_run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=root)),
        "cuda": torch.version.cuda,
        "driver": None,
        "gpu": None,
    }
    if device.startswith("cuda"):
        props = torch.cuda.get_device_properties(torch.cuda.current_device())
        env["gpu"] = {"name": props.name, "memory_bytes": props.total_memory,
                      "capability": f"{props.major}.{props.minor}",
                      "multiprocessors": props.multi_processor_count}
        env["driver"] = _run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"])
        if env["driver"]:
            env["driver"] = env["driver"].splitlines()[0]
    return env


def device_slug(device: str) -> str:
    if not device.startswith("cuda"):
        return "cpu"
    name = torch.cuda.get_device_name(torch.cuda.current_device()).lower()
    return "cuda-" + "".join(ch if ch.isalnum() else "-" for ch in name).strip("-")


# -- formatting ----------------------------------------------------------------------------------
def _bytes(n) -> str:
    return "–" if n is None else format_bytes(int(n))


def _sci(x) -> str:
    return "–" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.1e}"


def _secs(x) -> str:
    if x is None:
        return "–"
    return f"{x:.3g}" if x < 100 else f"{x:.0f}"


def _ratio(x) -> str:
    return "–" if x is None else (f"{x:.2f}×" if x < 10 else f"{x:.1f}×" if x < 100 else f"{x:.0f}×")


def _cell(row: dict | None, ratio: float | None) -> str:
    if row is None:
        return "–"
    if row["status"] != "ok":
        return STATUS_TEXT.get(row["status"], row["status"])
    return _ratio(ratio)


def _escape(text: str) -> str:
    return str(text).replace("|", "\\|").replace("\n", " ")


def shape_line(shapes: dict) -> str:
    k = "full spectrum" if shapes["full_spectrum"] else f"top-{shapes['k']} by |λ|"
    return (f"d = {shapes['d']}, h = {shapes['h']}, o = {shapes['o']}, {shapes['directions']} "
            f"{'output indices' if shapes['direction_kind'] == 'indices' else 'direction vectors'}, {k}")


def _notes(row: dict) -> str:
    parts = []
    if row.get("reason"):
        parts.append(row["reason"])
    extra = row.get("extra") or {}
    if "method_ran" in extra:
        parts.append(f"ran {extra['method_ran']}")
    if "products_mean" in extra:
        parts.append(f"{extra['products_mean']} products/direction")
    if extra.get("warnings"):
        parts.append("warned: " + extra["warnings"][0])
    if extra.get("repeats_stopped"):
        parts.append("repeats stopped: " + extra["repeats_stopped"])
    sec = row.get("seconds") or {}
    if sec.get("samples") is not None and len(sec["samples"]) == 1:
        parts.append("1 sample")
    return _escape("; ".join(parts))


def markdown(results: dict, plot_names: dict) -> str:
    env, st = results["environment"], results["settings"]
    out = [f"# bilinear_kernels benchmarks: {st['device']}, {results['date']}", "", *machine_header(env)]
    out.append(f"Scale {st['scale']:g} of the published shapes; {st['weights']} random weights; "
               f"{st['threads']} torch thread(s); median of up to {st['repeats']} timed runs after a warm-up"
               + (f" (more, up to {st['short_runs']['max_repeats']}, while a method's runs add up to less than "
                  f"{st['short_runs']['seconds']:g} s)" if st.get("short_runs") else "")
               + f", the methods of a workload interleaved round by round ({st['forward_repeats']} runs for W5); "
               f"time cap {st['time_cap']:g} s per method ({st['peer_cap_factor']:g}× for the peer's routes and ours). "
               f"Command: `{results['command']}`.")
    out.append("")
    out.append("The peer of each workload is the fastest of the published routes and the plain "
               "per-direction route that ran (benchmarks/peers.py); every speedup is its median time "
               "over the row's, from this run.")
    out.append("")
    out.append(f"Peak memory: {st['memory_method']}. Accuracy, on {st['oracle_directions']} directions per "
               "workload against float64: the largest eigenvalue error relative to ‖Q‖₂ and the largest "
               "residual ‖Q v − λ v‖ / ‖Q‖₂ of the returned pairs.")
    out.append("")

    out += ["## Targets", ""]
    for line in results["targets"]:
        out.append(f"- **{verdict(line)}** {line['target']}: {line['detail']}")
    out.append("")

    out += _speedup_table(results)
    for workload in results["workloads"]:
        out += workload_table(workload)
    if results.get("forward"):
        out += _forward_table(results["forward"])
    if results.get("sweep"):
        out += sweep_table(results["sweep"])
    if plot_names:
        out += ["## Plots", ""]
        for title, name in plot_names.items():
            out += [f"![{title}]({name})", ""]
    return "\n".join(out).rstrip() + "\n"


def _speedup_table(results: dict) -> list[str]:
    workloads = results["workloads"]
    forward = results.get("forward")
    cols = [w["name"] for w in workloads] + (["W5 fwd", "W5 fwd+bwd"] if forward else [])
    if not cols:
        return []
    out = ["## Speedup over the peer", "",
           "Median time of the workload's peer (torch eager for W5) over each method's, measured in "
           "this run. The peer row of each workload is its fastest peer route.", "",
           "| method | " + " | ".join(cols) + " |", "|---|" + "---|" * len(cols)]
    labels = {}
    for w in workloads:
        for r in w["rows"]:
            labels.setdefault(r["method"], r["label"])
    for method, label in labels.items():
        cells = []
        for w in workloads:
            row = next((r for r in w["rows"] if r["method"] == method), None)
            cells.append(_cell(row, speedup(w, row) if row else None))
        if forward:
            cells += ["–", "–"]
        out.append(f"| {_escape(label)} | " + " | ".join(cells) + " |")
    if forward:
        for row in forward["rows"]:
            cells = ["–"] * len(workloads)
            for name in ("forward", "forward_backward"):
                cells.append(_cell(row if row["status"] != "ok" else row["passes"][name],
                                   forward_speedup(forward, row, name)))
            out.append(f"| {_escape(row['label'])} | " + " | ".join(cells) + " |")
    return out + [""]


def workload_table(w: dict) -> list[str]:
    out = [f"## {w['name']}: {w['title']}", "", shape_line(w["shapes"]) + ".", "",
           "| method | status | median s | min–max s | speedup | peak memory | max eig. error | max residual | notes |",
           "|---|---|---|---|---|---|---|---|---|"]
    for r in w["rows"]:
        sec = r.get("seconds") or {}
        acc = r.get("accuracy") or {}
        span = f"{_secs(sec.get('min'))}–{_secs(sec.get('max'))}" if sec else "–"
        out.append(f"| {_escape(r['label'])} | {STATUS_TEXT.get(r['status'], r['status'])} | "
                   f"{_secs(sec.get('median'))} | {span} | {_ratio(speedup(w, r))} | {_bytes(r.get('peak_bytes'))} | "
                   f"{_sci(acc.get('max_rel_eig_error'))} | {_sci(acc.get('max_residual'))} | {_notes(r)} |")
    return out + [""]


def forward_speedup(forward: dict, row: dict, name: str) -> float | None:
    base = next((r for r in forward["rows"] if r["family"] == "baseline"), None)
    try:
        b = base["passes"][name]["seconds"]["median"]
        m = row["passes"][name]["seconds"]["median"]
    except (KeyError, TypeError):
        return None
    return b / m if m > 0 else None


def _forward_table(forward: dict) -> list[str]:
    s = forward["shapes"]
    out = [f"## W5: {forward['title']}", "",
           f"tokens = {s['tokens']}, d = {s['d']}, h = {s['h']}, o = {s['o']}; precision {forward['dtype_note']}.", "",
           "| method | pass | status | median s | min–max s | speedup | peak memory | max error y | max error of gradients | notes |",
           "|---|---|---|---|---|---|---|---|---|---|"]
    for row in forward["rows"]:
        if not row.get("passes"):
            out.append(f"| {_escape(row['label'])} | – | {STATUS_TEXT.get(row['status'], row['status'])} | – | – | – | – | – | – | {_escape(row['reason'])} |")
            continue
        for name, p in row["passes"].items():
            sec = p.get("seconds") or {}
            acc = p.get("accuracy") or {}
            grads = [v for k, v in acc.items() if k.startswith("max_rel_error_d")]
            span = f"{_secs(sec.get('min'))}–{_secs(sec.get('max'))}" if sec else "–"
            out.append(f"| {_escape(row['label'])} | {name.replace('_', '+')} | {STATUS_TEXT.get(p['status'], p['status'])} | "
                       f"{_secs(sec.get('median'))} | {span} | {_ratio(forward_speedup(forward, row, name))} | "
                       f"{_bytes(p.get('peak_bytes'))} | {_sci(acc.get('max_rel_error_y'))} | "
                       f"{_sci(max(grads)) if grads else '–'} | {_escape(p.get('reason') or '')} |")
    return out + ["", "Errors: largest absolute difference from a float64 evaluation, relative to its largest entry.", ""]


PEER_SERIES = "the peer (fastest peer route at each d)"


def sweep_series(sweep: list[dict]) -> dict:
    """label -> [(d, median seconds)] for every method that ran, and the peer's own series."""
    series = {}
    for w in sweep:
        for r in w["rows"]:
            if r["status"] == "ok" and r.get("seconds"):
                series.setdefault(r["label"], []).append((w["shapes"]["d"], r["seconds"]["median"]))
        peer = peer_row(w)
        if peer is not None:
            series.setdefault(PEER_SERIES, []).append((w["shapes"]["d"], peer["seconds"]["median"]))
    return series


def fitted_exponent(points: list[tuple[float, float]]) -> float | None:
    """The slope of log(time) against log(d) by least squares: time grows like d^slope.
    None with fewer than two distinct d."""
    pts = [(math.log(x), math.log(y)) for x, y in points if x > 0 and y > 0]
    if len({x for x, _ in pts}) < 2:
        return None
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    return sum((x - mx) * (y - my) for x, y in pts) / sum((x - mx) ** 2 for x, _ in pts)


def sweep_table(sweep: list[dict]) -> list[str]:
    ds = [w["shapes"]["d"] for w in sweep]
    first = sweep[0]["shapes"]
    out = ["## Time against d", "",
           f"h = {first['h'] // first['d']}d, o = d, {first['directions']} direction vectors, top-{first['k']} by |λ|. "
           "Median seconds (speedup over the peer in brackets); the exponent is the slope of a "
           "least-squares line through log(time) against log(d).", "",
           "| method | " + " | ".join(f"d = {d}" for d in ds) + " | exponent |", "|---|" + "---|" * (len(ds) + 1)]
    labels = {}
    for w in sweep:
        for r in w["rows"]:
            labels.setdefault(r["method"], r["label"])
    series = sweep_series(sweep)
    for method, label in labels.items():
        cells = []
        for w in sweep:
            row = next((r for r in w["rows"] if r["method"] == method), None)
            if row is None or row["status"] != "ok":
                cells.append(_cell(row, None))
            else:
                cells.append(f"{_secs(row['seconds']['median'])} ({_ratio(speedup(w, row))})")
        slope = fitted_exponent(series.get(label, []))
        cells.append("–" if slope is None else f"{slope:.2f}")
        out.append(f"| {_escape(label)} | " + " | ".join(cells) + " |")
    peer = dict(series.get(PEER_SERIES, []))
    slope = fitted_exponent(series.get(PEER_SERIES, []))
    out.append(f"| **{PEER_SERIES}** | " + " | ".join(_secs(peer.get(d)) for d in ds)
               + f" | {'–' if slope is None else f'{slope:.2f}'} |")
    return out + [""]


# -- plots ---------------------------------------------------------------------------------------
def _styles(results: dict) -> dict:
    """label -> (color, linestyle): one color per method across both plots, ours drawn solid and
    the peers dashed."""
    import matplotlib.pyplot as plt

    rows = [r for w in results["workloads"] + (results.get("sweep") or []) for r in w["rows"]]
    rows += (results.get("forward") or {}).get("rows", [])
    cmap = plt.get_cmap("tab20")
    styles = {}
    for r in rows:
        if r["label"] not in styles:
            styles[r["label"]] = (cmap(len(styles) % 20), "-" if r["family"] == "ours" else "--")
    return styles


def plot_speedup(results: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = []  # (workload label, {method label: ratio})
    for w in results["workloads"]:
        groups.append((w["name"], {r["label"]: speedup(w, r) for r in w["rows"] if r["family"] != "peer"}))
    if results.get("forward"):
        fw = results["forward"]
        for name, title in (("forward", "W5 fwd"), ("forward_backward", "W5 fwd+bwd")):
            groups.append((title, {r["label"]: forward_speedup(fw, r, name) for r in fw["rows"] if r["family"] != "baseline"}))
    methods = []
    for _, ratios in groups:
        methods += [m for m, x in ratios.items() if x is not None and m not in methods]
    if not methods:
        return False
    styles = _styles(results)
    fig, ax = plt.subplots(figsize=(max(6.0, 1.6 * len(groups) + 2), 4.5))
    width = 0.8 / len(methods)
    for i, method in enumerate(methods):
        xs = [g for g, (_, ratios) in enumerate(groups) if ratios.get(method) is not None]
        ys = [groups[g][1][method] for g in xs]
        ax.bar([x - 0.4 + width * (i + 0.5) for x in xs], ys, width, label=method, color=styles[method][0])
    ax.axhline(1.0, color="black", linewidth=0.8)
    ax.set_yscale("log")
    ax.set_xticks(range(len(groups)), [g for g, _ in groups])
    ax.set_ylabel("speedup over the peer (×)")
    ax.set_title(f"{results['settings']['device']}, scale {results['settings']['scale']:g}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


def plot_sweep(results: dict, path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    series = sweep_series(results.get("sweep") or [])
    if not series:
        return False
    styles = _styles(results)
    styles[PEER_SERIES] = ("black", "-")
    fig, ax = plt.subplots(figsize=(9.5, 4.5))
    for label, points in series.items():
        xs, ys = zip(*points)
        color, line = styles[label]
        slope = fitted_exponent(points)
        name = label + ("" if slope is None else f"  (∝ d^{slope:.2f})")
        ax.plot(xs, ys, marker="o", label=name, color=color, linestyle=line,
                linewidth=2.5 if label == PEER_SERIES else 1.5)
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ds = sorted({w["shapes"]["d"] for w in results["sweep"]})
    ax.set_xticks(ds, [str(d) for d in ds])
    ax.minorticks_off()
    ax.set_xlabel("d (h = 4d)")
    ax.set_ylabel("seconds (median)")
    ax.set_title(f"time against d, {results['settings']['device']}, scale {results['settings']['scale']:g}")
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True


# -- writing -------------------------------------------------------------------------------------
def json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {str(k): json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [json_safe(v) for v in x]
    if isinstance(x, (str, int, float, bool)) or x is None:
        return x
    return str(x)


def write(results: dict, out_dir: Path, stem: str) -> dict:
    """Evaluate the targets, then write the JSON, the plots and the Markdown; returns their paths."""
    out_dir.mkdir(parents=True, exist_ok=True)
    results["settings"]["memory_method"] = MEMORY_METHOD["cuda" if results["settings"]["device"].startswith("cuda") else "cpu"]
    results["targets"] = evaluate(results)
    paths = {"json": out_dir / f"{stem}.json", "markdown": out_dir / f"{stem}.md"}
    plots = {}
    if plot_speedup(results, out_dir / f"{stem}-speedup.png"):
        paths["speedup_png"] = out_dir / f"{stem}-speedup.png"
        plots["speedup per workload"] = paths["speedup_png"].name
    if plot_sweep(results, out_dir / f"{stem}-sweep.png"):
        paths["sweep_png"] = out_dir / f"{stem}-sweep.png"
        plots["time against d"] = paths["sweep_png"].name
    results["files"] = {k: p.name for k, p in paths.items()}
    paths["json"].write_text(json.dumps(json_safe(results), indent=1) + "\n")
    paths["markdown"].write_text(markdown(results, plots))
    return paths
