"""The published-shape check runs end to end at a tiny size and records what it claims."""
import json

from benchmarks import network_published_shape


def test_network_published_shape_quick_writes_results(tmp_path):
    network_published_shape.main(["--quick", "--out", str(tmp_path)])
    (js,) = tmp_path.glob("network-shape-cpu-*-quick.json")
    data = json.loads(js.read_text())
    assert data["shape"] == {"d_in": 16, "d": 8, "layers": 3, "classes": 10}
    assert set(data["rows"]) == {"top-16", "full"}
    for row in data["rows"].values():
        assert row["median"] > 0 and row["peak_rss_bytes"] >= data["baseline_rss_bytes"]
    assert data["full_relative_error"] < 1e-4 and len(data["ranks"]) == 2
    assert "| top-16 |" in js.with_suffix(".md").read_text()
