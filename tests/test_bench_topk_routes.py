"""The top-k route comparison runs end to end at its quick shapes and writes what it measured."""
import json

import torch

from benchmarks import bench_topk_routes


def test_quick_run_writes_every_route_against_the_plain_one(tmp_path):
    threads = torch.get_num_threads()
    out = tmp_path / "routes.json"
    try:
        bench_topk_routes.main(["--quick", "--routes", "auto", "lanczos:4", "--json", str(out)])
    finally:
        torch.set_num_threads(threads)  # the benchmark pins its own thread count
    data = json.loads(out.read_text())
    assert data["cpu"] and data["d"] == 128 and data["directions"] == 2
    routes = {row["route"]: row for row in data["rows"]}
    assert {"plain", "auto", "lanczos:4"} <= set(routes)
    for name in ("auto", "lanczos:4"):
        assert routes[name]["speedup_vs_plain"] > 0 and routes[name]["rel_eig_error"] < 1e-3
