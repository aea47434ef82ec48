"""The core benchmark runs end to end at tiny shapes and writes well-formed results."""
import json

from benchmarks import bench_core


def test_bench_core_quick_writes_results(tmp_path):
    bench_core.main(["--quick", "--out", str(tmp_path)])
    (js,) = tmp_path.glob("core-cpu-*-quick.json")
    data = json.loads(js.read_text())
    assert data["machine"]["torch"] and data["machine"]["cores"] >= 1
    for case in data["cases"]:
        peers = {r["peer"] for r in case["rows"]}
        assert {"research", "ours-auto", "ours-eigh", "ours-lanczos"} <= peers
        for row in case["rows"]:
            assert row["seconds"] > 0
            # every peer must actually solve the problem it is timed on
            assert row["max_rel_eig_error"] < 1e-3, row
    md = js.with_suffix(".md").read_text()
    assert "| research |" in md and "## Targets" in md
