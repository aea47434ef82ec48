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
    rows = {r["method"]: r for r in results["workloads"][0]["rows"]}
    assert rows["ours-lowrank"]["status"] == "ok"  # W1 keeps 2h < d at every scale
    assert rows["ours-auto"]["extra"]["method_ran"] == "lowrank"
    assert rows["torch-lobpcg"]["status"] == "not_applicable"  # full spectrum
    w4 = {r["method"]: r for r in results["workloads"][1]["rows"]}
    assert w4["ours-lowrank"]["status"] == "not_applicable" and "2h < d" in w4["ours-lowrank"]["reason"]
    forward = {r["method"]: r for r in results["forward"]["rows"]}
    for name in ("torch-eager", "bk-bilinear"):
        for pass_name in ("forward", "forward_backward"):
            p = forward[name]["passes"][pass_name]
            assert p["status"] == "ok"
            assert p["accuracy"]["max_rel_error_y"] < 1e-4
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


def _results(device, scale, base, ours, ours_residual, peer=None):
    def row(method, family, median, resid):
        return {"method": method, "label": method, "family": family, "status": "ok", "reason": None,
                "seconds": {"median": median}, "accuracy": {"max_residual": resid},
                "extra": {"method_ran": "eigh"}}

    rows = [row("research", "baseline", base, 1e-7), row("ours-auto", "ours", ours, ours_residual)]
    if peer is not None:
        rows.append(row("scipy-eigsh", "peer", peer, 1e-5))
    return {"settings": {"device": device, "scale": scale},
            "workloads": [{"name": "W3", "rows": rows}]}


def test_targets_follow_the_measured_ratios():
    passing = targets.evaluate(_results("cpu", 0.1, base=12.0, ours=1.0, ours_residual=1e-6))
    w3 = next(t for t in passing if t["target"].startswith("W3"))
    assert w3["passed"] is True and "12.00×" in w3["detail"]
    w4 = next(t for t in passing if t["target"].startswith("W4"))
    assert w4["passed"] is None  # not run

    failing = targets.evaluate(_results("cpu", 0.1, base=9.0, ours=1.0, ours_residual=1e-6))
    assert next(t for t in failing if t["target"].startswith("W3"))["passed"] is False

    # on a GPU, W3 also needs residual ≤ 1e-4: a fast but inaccurate answer fails
    gpu = targets.evaluate(_results("cuda", 1.0, base=30.0, ours=1.0, ours_residual=1e-3))
    assert next(t for t in gpu if t["target"].startswith("W3"))["passed"] is False
    gpu = targets.evaluate(_results("cuda", 1.0, base=30.0, ours=1.0, ours_residual=1e-5))
    assert next(t for t in gpu if t["target"].startswith("W3"))["passed"] is True


def test_no_slower_target_compares_only_peers_at_our_accuracy():
    slower = targets.evaluate(_results("cuda", 1.0, base=30.0, ours=1.0, ours_residual=1e-6, peer=0.5))
    line = next(t for t in slower if t["target"].startswith("no workload"))
    assert line["passed"] is False and "scipy-eigsh" in line["detail"]
    faster = targets.evaluate(_results("cuda", 1.0, base=30.0, ours=1.0, ours_residual=1e-6, peer=2.0))
    assert next(t for t in faster if t["target"].startswith("no workload"))["passed"] is True


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
    assert {"research", "torch-eigh", "torch-lobpcg", "scipy-eigsh", "scipy-eigsh-mf",
            "ours-auto", "ours-eigh", "ours-lanczos"} <= set(ran)


def test_research_code_without_room_for_the_tensor_goes_per_direction(monkeypatch):
    from benchmarks import peers

    for direction_kind in ("indices", "vectors"):
        ctx = _tiny_context(k=4)
        if direction_kind == "vectors":
            g = torch.Generator().manual_seed(3)
            ctx.directions = torch.randn(4, 6, generator=g)
            ctx.workload = dataclasses.replace(ctx.workload, directions="vectors")
        oracle = measure.Oracle(ctx.layer, ctx.directions, k=4, count=4)
        for fits in (True, False):
            monkeypatch.setattr(peers.ResearchCode, "materializes", lambda self, ctx, fits=fits: fits)
            sol = peers.ResearchCode()(ctx, 30.0)
            assert sol.extra["materialized_tensor"] is fits
            acc = oracle.check(sol)
            assert acc["max_rel_eig_error"] < 1e-5 and acc["max_residual"] < 1e-5, (direction_kind, fits, acc)
