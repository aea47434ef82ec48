"""The floor benchmark runs end to end at tiny shapes, and its floors do the work they claim."""
import json

import torch

from benchmarks import bench_floor


def test_krylov_products_multiplies_whole_blocks():
    q = torch.eye(6).expand(3, 6, 6)
    assert bench_floor.krylov_products(q, 9.5, 4) == 12
    assert bench_floor.krylov_products(q, 8, 4) == 8


def test_bench_floor_quick_writes_results(tmp_path):
    bench_floor.main(["--quick", "--out", str(tmp_path)])
    (js,) = tmp_path.glob("floor-cpu-*-quick.json")
    data = json.loads(js.read_text())
    assert data["machine"]["torch"] and data["workload"]["name"] == "W3"
    assert {"plain", "ours (auto)", "form Q", "dense floor", "krylov floor"} <= set(data["rows"])
    assert data["peer"] in data["rows"] and data["rows"][data["peer"]]["speedup"] == 1.0
    for row in data["rows"].values():
        assert len(row["samples"]) == 2 and row["median"] > 0
    # the dense floor computes the peer's eigenvalues, not something cheaper
    assert data["floor_eigenvalue_error"] < 1e-4
    krylov = data["krylov"]
    assert krylov["method_ran"] == "lanczos" and 0 < krylov["products_per_direction"] <= 2 * krylov["d"]
    md = js.with_suffix(".md").read_text()
    assert "| dense floor |" in md and f"The peer is {data['peer']}" in md


def test_bench_floor_records_its_own_command_and_names_other_shapes(tmp_path):
    bench_floor.main(["--scale", "0.03", "--repeats", "1", "--out", str(tmp_path)])
    (js,) = tmp_path.glob("floor-cpu-*-W3-scale0.03.json")
    data = json.loads(js.read_text())
    assert data["command"] == "python -m benchmarks.bench_floor --scale 0.03 --repeats 1 --out " + str(tmp_path)
    assert data["workload"]["scale"] == 0.03
