"""The forms-comparison benchmark runs end to end at tiny shapes and records what it measured."""
import json

import pytest

from benchmarks import forms_comparison


def test_forms_comparison_tiny_run_writes_results(tmp_path):
    data = forms_comparison.main(["--scale", "0.01", "--repeats", "1", "--max-samples", "8192", "--note", "a test",
                                  "--out", str(tmp_path)])
    (js,) = tmp_path.glob("forms-comparison-cpu-*-scale0.01.json")
    assert json.loads(js.read_text())["command"].endswith("--out " + str(tmp_path))
    names = [row["name"] for row in data["rows"]]
    assert names == ["similarity, classes", "similarity, two models", "gaussian moments, classes",
                     "gaussian moments, two models"] * 2
    for row in data["rows"]:
        assert row["ours"]["status"] == "ok" and row["peer"]["status"] == "ok" and row["ratio"] > 0
        if "monte_carlo" in row:
            count = row["monte_carlo"]
            # a cap of 8192 samples cannot reach 1%: the count is extrapolated and says so
            assert not count["measured"] and count["samples"] == 8192 and count["extrapolated_samples"] > 8192
            assert 0 < row["max_relative_difference"] < 1  # sampling error at the cap, well under 100%
        else:
            assert row["max_relative_difference"] < 1e-4  # ours and the formed route agree (float32)
    md = js.with_suffix(".md").read_text()
    assert "Note: a test" in md and "| similarity, classes |" in md and "1% not reached by the cap" in md


def test_bad_arguments_are_refused_in_one_line_naming_them(capsys):
    for argv in (["--budget", "0"], ["--repeats", "0"], ["--max-samples", "0"], ["--scale", "-1"]):
        with pytest.raises(SystemExit) as exit_info:
            forms_comparison.parse_args(argv)
        assert exit_info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()[-1]
        assert err.startswith(f"python -m benchmarks.forms_comparison: error: {argv[0]} must be") and argv[1] in err
