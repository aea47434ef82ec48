"""The core benchmark runs end to end at tiny shapes and writes well-formed results against the peer."""
import json

import torch

from benchmarks import bench_core, targets


def test_bench_core_quick_writes_results(tmp_path):
    threads = torch.get_num_threads()
    try:
        bench_core.main(["--quick", "--threads", "1", "--out", str(tmp_path)])
    finally:
        torch.set_num_threads(threads)
    (js,) = tmp_path.glob("core-cpu-*-quick.json")
    data = json.loads(js.read_text())
    env = data["environment"]
    assert env["torch"] == torch.__version__ and env["cpu_count"] >= 1 and "blas" in env
    names = [w["name"] for w in data["workloads"]]
    # the top-k case gives one record per k, on both kinds of weights
    assert names.count("topk-d128-b4-k4") == 2 and names.count("topk-d128-b4-k8") == 2
    for w in data["workloads"]:
        rows = {r["method"]: r for r in w["rows"]}
        assert {"plain", "published-tensor", "ours-auto"} <= set(rows)
        assert targets.peer_row(w) is not None
        for row in rows.values():
            if row["status"] != "ok":
                assert row["reason"], row
                continue
            assert row["seconds"]["median"] > 0
            # every row must actually solve the problem it is timed on
            assert row["accuracy"]["max_rel_eig_error"] < 1e-3, (w["name"], row)
    image = next(w for w in data["workloads"] if w["name"] == "image-full")
    assert {r["method"]: r for r in image["rows"]}["published-tensor"]["status"] == "ok"
    k4 = next(w for w in data["workloads"] if w["name"] == "topk-d128-b4-k4")
    assert {r["method"]: r for r in k4["rows"]}["plain"]["timed_with_k"] == 8
    assert len(data["targets"]) == len(data["workloads"]) + 1
    md = js.with_suffix(".md").read_text()
    assert "## Targets" in md and "| plain: einsum Q per direction + eigh |" in md
