"""The benchmark suite: a tiny end-to-end run writes well-formed results, and the pieces that turn
measurements into numbers (accuracy against the oracle, speedups, targets, scaling) are right."""
from __future__ import annotations

import dataclasses
import json

import pytest
import torch

import bilinear_kernels as bk
from benchmarks import measure, targets, workloads
from benchmarks.run import main

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
# W5's output error relative to its largest entry, by the precision the run used: bf16 keeps 8
# bits of mantissa (eps 7.8e-3), so a product of rounded inputs is off by a few of its ulps
FORWARD_TOL = {"float32": 1e-4, "bfloat16": 4 * torch.finfo(torch.bfloat16).eps}
STATUSES = {"ok", "time_cap", "out_of_memory", "not_applicable", "error"}


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    threads = torch.get_num_threads()
    try:  # one thread: tiny problems gain nothing from more, and a busy CI machine slows them a lot
        run = main(["--scale", "0.02", "--only", "W1,W4,W5,sweep", "--repeats", "1", "--time-cap", "5",
                    "--threads", "1", "--out", str(out), "--stem", "smoke", "--quiet"])
    finally:
        torch.set_num_threads(threads)
    return run, out


def test_smoke_run_writes_all_files(smoke):
    run, out = smoke
    names = {p.name for p in out.iterdir()}
    assert names == {"smoke.json", "smoke.md", "smoke-speedup.png", "smoke-sweep.png"}
    for name in ("smoke-speedup.png", "smoke-sweep.png"):
        data = (out / name).read_bytes()
        assert data.startswith(PNG_MAGIC)
        import matplotlib.image

        image = matplotlib.image.imread(out / name)
        assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_smoke_json_is_complete(smoke):
    _, out = smoke
    results = json.loads((out / "smoke.json").read_text())
    env = results["environment"]
    for key in ("device", "driver", "cuda", "torch", "triton", "cupy"):
        assert key in env
    assert env["torch"] == torch.__version__
    assert results["settings"]["scale"] == 0.02
    assert [w["name"] for w in results["workloads"]] == ["W1", "W4"]
    assert len(results["sweep"]) == len(workloads.SWEEP_D)
    for w in results["workloads"] + results["sweep"]:
        shapes = w["shapes"]
        assert {"d", "h", "o", "directions", "k"} <= set(shapes)
        for row in w["rows"]:
            assert row["status"] in STATUSES, row
            if row["status"] != "ok":
                assert row["reason"], row
                continue
            sec = row["seconds"]
            assert 0 < sec["min"] <= sec["median"] <= sec["max"]
            assert len(sec["samples"]) >= 1
            acc = row["accuracy"]
            # every method that ran found the right eigenpairs on these well-separated tiny spectra
            assert acc["max_rel_eig_error"] < 1e-3, (w["name"], row["method"], acc)
            assert acc["max_residual"] < 1e-3, (w["name"], row["method"], acc)
    assert {"blas", "lapack"} <= set(env["blas"]) and env["cpu_count"] >= 1
    rows = {r["method"]: r for r in results["workloads"][0]["rows"]}
    assert rows["ours-lowrank"]["status"] == "ok"  # W1 keeps 2h < d at every scale
    assert rows["ours-auto"]["extra"]["method_ran"] == "lowrank"
    assert rows["published-tensor"]["status"] == "ok"  # every class wanted: the image-model route
    assert "torch-lobpcg" not in rows  # the other tools run only when asked for
    w4 = {r["method"]: r for r in results["workloads"][1]["rows"]}
    assert w4["ours-lowrank"]["status"] == "not_applicable" and "2h < d" in w4["ours-lowrank"]["reason"]
    assert w4["published-tensor"]["status"] == "not_applicable"
    assert "only some outputs" in w4["published-tensor"]["reason"]
    forward = {r["method"]: r for r in results["forward"]["rows"]}
    tol = FORWARD_TOL[results["forward"]["dtype"]]  # the CPU probe may pick bf16
    for name in ("torch-eager", "bk-bilinear"):
        for pass_name in ("forward", "forward_backward"):
            p = forward[name]["passes"][pass_name]
            assert p["status"] == "ok"
            assert p["accuracy"]["max_rel_error_y"] < tol
    assert "bk-nn-bilinear" in forward


def test_smoke_markdown_has_tables_and_target_lines(smoke):
    run, out = smoke
    text = (out / "smoke.md").read_text()
    assert "| method | W1 | W4 | W5 fwd | W5 fwd+bwd |" in text
    lines = [ln for ln in text.splitlines() if ln.startswith("- **")]
    assert len(lines) == len(run["results"]["targets"]) >= 3
    for line, target in zip(lines, run["results"]["targets"]):
        assert line.startswith(f"- **{targets.verdict(target)}** {target['target']}")
    assert "![speedup per workload](smoke-speedup.png)" in text


# -- the pieces --------------------------------------------------------------------------------
def _tiny_layer(d=12, h=20, o=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    return bk.BilinearLayer(torch.randn(h, d, generator=g), torch.randn(h, d, generator=g),
                            torch.randn(o, h, generator=g))


def test_oracle_scores_exact_pairs_as_exact_and_errors_as_errors():
    layer = _tiny_layer()
    dirs = torch.arange(6)
    q = bk.interaction_matrices(layer.to(dtype=torch.float64), dirs)
    vals, vecs = torch.linalg.eigh(q)
    oracle = measure.Oracle(layer, dirs, k=12, count=3)
    exact = oracle.check(measure.Solution(vals.float(), vecs.float()))
    assert exact["max_rel_eig_error"] < 1e-6 and exact["max_residual"] < 1e-6
    assert exact["directions_checked"] == 3

    norm = vals.abs().amax(-1, keepdim=True)
    shifted = oracle.check(measure.Solution((vals + 0.01 * norm).float(), vecs.float()))
    assert shifted["max_rel_eig_error"] == pytest.approx(0.01, rel=1e-3)
    assert shifted["max_residual"] == pytest.approx(0.01, rel=1e-3)

    swapped = vecs.clone()
    swapped[:, :, [0, 1]] = swapped[:, :, [1, 0]]  # right values, wrong vectors
    bad = oracle.check(measure.Solution(vals.float(), swapped.float()))
    assert bad["max_rel_eig_error"] < 1e-6 and bad["max_residual"] > 1e-2


def test_measure_turns_failures_into_rows():
    def capped(_cap, _warmup):
        raise measure.TimeCapExceeded(3, 10, 1.5)

    def not_for_this(_cap, _warmup):
        raise measure.NotApplicable("needs k < d")

    row = measure.measure(capped, device="cpu", repeats=2, time_cap=1.0)
    assert row["status"] == "time_cap" and "3 of 10" in row["reason"] and row["seconds"] is None
    row = measure.measure(not_for_this, device="cpu", repeats=2, time_cap=1.0)
    assert row["status"] == "not_applicable" and row["reason"] == "needs k < d"


def test_measure_reports_median_of_timed_repeats():
    calls = []

    def run(_cap, warmup):
        calls.append(warmup)
        return measure.Solution(torch.zeros(1, 1), torch.ones(1, 1, 1), {"note": 1})

    row = measure.measure(run, device="cpu", repeats=3, time_cap=10.0)
    assert calls == [True, False, False, False]
    assert row["status"] == "ok" and len(row["seconds"]["samples"]) == 3
    assert row["seconds"]["warmup_counted"] is False and row["extra"] == {"note": 1}


def _row(method, family, median, resid=1e-7, status="ok"):
    return {"method": method, "label": method, "family": family, "status": status, "reason": None,
            "seconds": {"median": median}, "accuracy": {"max_residual": resid},
            "extra": {"method_ran": "eigh"}}


def _workload(name, rows, d=64, h=256, directions=8, k=None):
    return {"name": name, "weights": "gaussian", "rows": rows,
            "shapes": {"d": d, "h": h, "directions": directions, "k": d if k is None else k,
                       "full_spectrum": k is None}}


def test_the_peer_is_the_fastest_peer_route_that_ran():
    w = _workload("W", [_row("plain", "peer", 3.0), _row("published-batched", "peer", 2.0),
                        _row("published-tensor", "peer", 0.5, status="not_applicable"),
                        _row("scipy-eigsh", "tool", 0.1), _row("ours-auto", "ours", 1.0)])
    assert targets.peer_row(w)["method"] == "published-batched"  # not a tool, not a row that did not run
    assert targets.speedup(w, w["rows"][-1]) == pytest.approx(2.0)


def test_parity_targets_follow_the_measured_ratios():
    faster = _workload("W1", [_row("plain", "peer", 1.2), _row("ours-auto", "ours", 1.0)])
    slower = _workload("W2", [_row("plain", "peer", 0.9), _row("ours-auto", "ours", 1.0)])
    wrong = _workload("W3", [_row("plain", "peer", 9.0), _row("ours-auto", "ours", 1.0, resid=0.1)])
    lines = targets.evaluate({"settings": {"scale": 0.1}, "workloads": [faster, slower, wrong]})
    assert [line["passed"] for line in lines[:3]] == [True, False, False]  # fast but inaccurate fails
    assert "1.20× plain" in lines[0]["detail"] and "(at scale 0.1)" in lines[0]["detail"]
    assert lines[3]["passed"] is None and "no such workload" in lines[3]["detail"]


def test_topk_target_needs_five_times_with_4_and_64_directions():
    def case(n, ours):
        return _workload(f"b{n}", [_row("plain", "peer", 10.0), _row("ours-auto", "ours", ours)],
                         d=1024, h=4096, directions=n, k=16)

    line = targets.evaluate({"workloads": [case(4, 1.0), case(64, 1.9)]})[-1]
    assert line["passed"] is True and "b64" in line["detail"]
    assert targets.evaluate({"workloads": [case(4, 1.0), case(64, 2.1)]})[-1]["passed"] is False
    only_four = targets.evaluate({"workloads": [case(4, 1.0)]})[-1]
    assert only_four["passed"] is None and "not measured with 64" in only_four["detail"]
    small = _workload("s", [_row("plain", "peer", 10.0), _row("ours-auto", "ours", 1.0)], d=512, h=2048,
                      directions=4, k=16)
    assert not targets.is_topk_case(small)


def test_measure_interleaved_times_the_methods_in_rotating_rounds():
    calls = []

    def method(name):
        def run(_cap, warmup):
            calls.append((name, warmup))
            return measure.Solution(torch.zeros(1, 1), torch.ones(1, 1, 1))
        return run

    def broken(_cap, _warmup):
        raise measure.NotApplicable("not here")

    rows = measure.measure_interleaved({"a": method("a"), "b": method("b"), "c": broken}, device="cpu",
                                       repeats=3, time_caps={"a": 1.0, "b": 1.0, "c": 1.0}, repeat_budget=10.0)
    assert calls[:2] == [("a", True), ("b", True)]  # every warm-up first
    timed = [n for n, warm in calls if not warm]
    assert timed == ["a", "b", "b", "a", "a", "b"]  # one of each per round, the order rotating
    assert rows["a"]["status"] == "ok" and len(rows["a"]["seconds"]["samples"]) == 3
    assert rows["c"]["status"] == "not_applicable" and rows["c"]["reason"] == "not here"


def test_short_runs_take_more_samples_up_to_a_limit():
    def run(_cap, _warmup):
        return measure.Solution(torch.zeros(1, 1), torch.ones(1, 1, 1))

    plain = measure.measure_interleaved({"a": run}, device="cpu", repeats=3, time_caps={"a": 1.0},
                                        repeat_budget=10.0)
    assert len(plain["a"]["seconds"]["samples"]) == 3
    short = measure.measure_interleaved({"a": run}, device="cpu", repeats=3, time_caps={"a": 1.0},
                                        repeat_budget=10.0, short_seconds=5.0, max_repeats=12)
    assert len(short["a"]["seconds"]["samples"]) == 12  # microseconds each: the limit stops it


def test_fitted_exponent_recovers_a_power_law():
    from benchmarks import report

    points = [(d, 3e-9 * d**2.5) for d in (64, 128, 256, 512)]
    assert report.fitted_exponent(points) == pytest.approx(2.5)
    assert report.fitted_exponent(points[:1]) is None


@pytest.mark.parametrize("scale", [0.01, 0.05, 0.125, 0.5, 1.0])
def test_scaling_keeps_the_published_structure(scale):
    for full, small in zip(workloads.DECOMPOSITION, workloads.decomposition_workloads(scale)):
        assert (2 * full.h < full.d) == (2 * small.h < small.d)
        assert small.d <= full.d and small.h <= full.h and small.o <= full.o
        assert (small.k is None) == (full.k is None)
        if small.k is not None:
            assert 1 <= small.k <= small.d // 3
        if small.directions == "indices":
            assert small.n_directions <= small.o
    if scale == 1.0:
        assert workloads.decomposition_workloads(1.0) == [
            w.__class__(**{**w.__dict__, "full_d": w.d}) for w in workloads.DECOMPOSITION]


def test_random_weights_are_deterministic_and_scaled():
    w1, v1, p1 = workloads.random_weights("W3", 64, 256, 32)
    w2, _, _ = workloads.random_weights("W3", 64, 256, 32)
    assert torch.equal(w1, w2)
    # entries of variance 1/d (W, V) and 1/h (P): unit-scale activations
    assert w1.var().item() == pytest.approx(1 / 64, rel=0.1)
    assert p1.var().item() == pytest.approx(1 / 256, rel=0.1)


def _tiny_context(k=3):
    from benchmarks.peers import Context

    wl = workloads.Workload("T", "tiny", d=12, h=20, o=6, n_directions=4, directions="indices", k=k)
    return Context(workload=wl, layer=_tiny_layer(), directions=torch.arange(4), device="cpu")


def test_a_peer_that_cannot_fit_gets_an_out_of_memory_row(monkeypatch):
    from benchmarks import peers

    ctx = _tiny_context()
    monkeypatch.setattr(peers, "free_bytes", lambda device: 1)
    row = measure.measure(lambda cap, warmup: peers.TorchEigh()(ctx, cap, warmup), device="cpu",
                          repeats=1, time_cap=5.0)
    assert row["status"] == "out_of_memory" and "up-front estimate" in row["reason"]


def test_a_looping_peer_stops_at_the_time_cap():
    from benchmarks import peers

    ctx = _tiny_context()
    row = measure.measure(lambda cap, warmup: peers.ScipyEigsh()(ctx, cap, warmup), device="cpu",
                          repeats=1, time_cap=0.0)
    assert row["status"] == "time_cap" and "of 4 directions" in row["reason"]


def test_every_applicable_method_finds_the_oracle_pairs():
    from benchmarks import peers

    ctx = _tiny_context(k=3)
    oracle = measure.Oracle(ctx.layer, ctx.directions, k=3, count=4)
    ran = []
    for method in peers.all_methods():
        if method.skip_reason(ctx):
            continue
        acc = oracle.check(method(ctx, 30.0, warmup=False))
        assert acc["max_rel_eig_error"] < 1e-4 and acc["max_residual"] < 1e-3, (method.name, acc)
        ran.append(method.name)
    assert {"plain", "torch-eigh", "torch-lobpcg", "scipy-eigsh", "scipy-eigsh-mf",
            "ours-auto", "ours-eigh", "ours-lanczos"} <= set(ran)
    if peers.opt_einsum_available():
        assert "published-batched" in ran


def _vector_context(k=4, n=4, o=6):
    ctx = _tiny_context(k=k)
    g = torch.Generator().manual_seed(3)
    ctx.directions = torch.randn(n, o, generator=g)
    ctx.workload = dataclasses.replace(ctx.workload, directions="vectors", n_directions=n)
    return ctx


@pytest.mark.parametrize("kind", ["indices", "vectors"])
def test_peer_routes_find_the_oracle_pairs(kind):
    from benchmarks import peers

    ctx = _tiny_context(k=4) if kind == "indices" else _vector_context()
    if kind == "indices":  # all six outputs, so the whole-tensor route applies too
        ctx.directions = torch.arange(6)
        ctx.workload = dataclasses.replace(ctx.workload, n_directions=6)
    oracle = measure.Oracle(ctx.layer, ctx.directions, k=4, count=6)
    routes = [peers.PlainPerDirection(), peers.PublishedTensor()]
    if peers.opt_einsum_available():
        routes.append(peers.PublishedBatched())
    for route in routes:
        if kind == "vectors" and route.name == "published-tensor":
            continue  # 4 vectors through o = 6: not the cheaper route (next test)
        acc = oracle.check(route(ctx, 30.0))
        assert acc["max_rel_eig_error"] < 1e-5 and acc["max_residual"] < 1e-5, (kind, route.name, acc)


def test_the_whole_tensor_is_never_formed_when_only_some_outputs_are_wanted():
    from benchmarks import peers

    def wl(n, kind, o=512, h=2048):
        return workloads.Workload("T", "t", d=512, h=h, o=o, n_directions=n, directions=kind, k=16)

    assert peers.tensor_route_applies(wl(512, "indices"))        # every output: the image-model route
    assert not peers.tensor_route_applies(wl(64, "indices"))     # some outputs: Q per direction is less work
    assert peers.tensor_route_applies(wl(4096, "vectors"))       # o·h + b·o ≤ b·h
    assert not peers.tensor_route_applies(wl(64, "vectors"))
    ctx = _tiny_context()
    reason = peers.PublishedTensor().skip_reason(ctx)
    assert reason and "only some outputs" in reason
    row = measure.measure(lambda cap, warmup: peers.PublishedTensor()(ctx, cap, warmup), device="cpu",
                          repeats=1, time_cap=5.0)
    assert row["status"] == "not_applicable"


def test_the_batched_route_says_why_without_opt_einsum(monkeypatch):
    from benchmarks import peers

    monkeypatch.setattr(peers, "opt_einsum_available", lambda: False)
    ctx = _tiny_context()
    row = measure.measure(lambda cap, warmup: peers.PublishedBatched()(ctx, cap, warmup), device="cpu",
                          repeats=1, time_cap=5.0)
    assert row["status"] == "not_applicable" and "pip install opt-einsum" in row["reason"]


def test_forward_tolerance_follows_the_dtype_used():
    from benchmarks import forward

    wl = workloads.ForwardWorkload("W5", "t", tokens=16, d=32, h=64, o=16)
    for dtype in (torch.float32, torch.bfloat16):
        rows = forward.run_forward(wl, "cpu", 1, 5.0, dtype, log=lambda *_: None)
        eager = next(r for r in rows if r["method"] == "torch-eager")
        err = eager["passes"]["forward"]["accuracy"]["max_rel_error_y"]
        assert err < FORWARD_TOL[str(dtype).replace("torch.", "")], (dtype, err)


def test_a_run_s_own_threads_are_not_load_but_other_processes_are():
    from benchmarks import report

    start = {"busy_seconds": 100.0, "own_seconds": 5.0, "wall_seconds": 10.0}
    alone = {"busy_seconds": 120.0, "own_seconds": 24.5, "wall_seconds": 20.0}  # 2 cores, all ours
    shared = {"busy_seconds": 120.0, "own_seconds": 10.0, "wall_seconds": 20.0}  # 1.5 cores of others
    assert report.other_cores_busy(start, alone) == 0.05
    assert report.other_cores_busy(start, shared) == 1.5
    assert report.load_note({"cpu_count": 2, "other_cores_busy": 0.05, "load_average_end": [1.9]}) == ""
    assert "other processes kept 1.5 of 2 cores busy" in report.load_note({"cpu_count": 2, "other_cores_busy": 1.5})
    # results without the reading fall back to the load averages
    assert "load average 0.4, then 1.9" in report.load_note({"cpu_count": 2, "load_average_start": [0.4],
                                                              "load_average_end": [1.9]})
    reading = report.cpu_usage()
    if reading is not None:  # Linux: a real reading of the machine and of this process
        assert reading["busy_seconds"] > 0 and reading["own_seconds"] > 0


def test_every_results_header_names_the_machine_its_load_and_a_warning_when_busy():
    from benchmarks import report

    env = {"cpu": "Some CPU", "cpu_count": 2, "torch_threads": 2, "torch": "2.x", "numpy": "2.y",
           "blas": {"blas": "mkl", "lapack": "mkl", "parallel_backend": "OpenMP"}, "git_commit": "abcdef0123456",
           "git_dirty": False, "load_average_start": [0.5], "load_average_end": [1.9], "other_cores_busy": 0.1}
    quiet = "\n".join(report.machine_header(env, threads=1))
    assert "Some CPU (2 cores, 1 torch threads); BLAS mkl, LAPACK mkl, OpenMP threads" in quiet
    assert "commit abcdef0123." in quiet and "other processes kept 0.1 cores busy on average" in quiet
    assert "loaded machine" not in quiet
    busy = "\n".join(report.machine_header({**env, "other_cores_busy": 1.6}))
    assert "**Taken on a loaded machine (other processes kept 1.6 of 2 cores busy" in busy
