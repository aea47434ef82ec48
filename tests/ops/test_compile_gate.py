"""The compile gate: every Triton kernel compiles for sm_90 without a GPU, in every dtype, precision
and configuration the autotuner may pick, within shared memory and the pruner's estimate, with
int64 pointer offsets (bilinear_kernels/ops/compile_gate.py); and the committed table
(bilinear_kernels/ops/COMPILE_TABLE.md) was made from the kernel sources as they are."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("triton")

from bilinear_kernels.ops import compile_gate  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
TABLE = ROOT / "bilinear_kernels" / "ops" / "COMPILE_TABLE.md"
# Two cores compile the 41 cases in about 3 minutes; the result cache makes a rerun take seconds.
GATE_TIMEOUT_S = 900


def test_committed_table_was_made_from_the_current_kernels():
    assert compile_gate.committed_source_hash(TABLE) == compile_gate.source_hash(), (
        "the kernels changed since COMPILE_TABLE.md was written: run "
        "`python -m bilinear_kernels.ops.compile_gate --write bilinear_kernels/ops/COMPILE_TABLE.md`")


def test_cases_cover_every_kernel_and_mode():
    found = {(c.kernel, c.label) for c in compile_gate.cases()}
    modes = {"fp32-tf32x3", "fp32-tf32", "fp16", "bf16"}
    assert found == {(k, m) for k in ("forward", "backward", "interaction") for m in modes}


def test_int32_offset_pattern():
    pattern = compile_gate.I32_ADDPTR
    assert pattern.search("%3 = tt.addptr %1, %2 : tensor<32x64x!tt.ptr<f32>>, tensor<32x64xi32> loc(#loc1)")
    assert pattern.search("%3 = tt.addptr %arg0, %2 : !tt.ptr<bf16>, i32 loc(#loc2)")
    assert not pattern.search("%3 = tt.addptr %1, %2 : tensor<32x64x!tt.ptr<f32>>, tensor<32x64xi64> loc(#loc1)")
    assert not pattern.search("%3 = tt.addptr %arg0, %2 : !tt.ptr<bf16>, i64 loc(#loc2)")


def test_every_kernel_compiles_for_sm90(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    rows_file = tmp_path / "rows.json"
    done = subprocess.run([sys.executable, "-m", "bilinear_kernels.ops.compile_gate", "--json", str(rows_file)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=GATE_TIMEOUT_S)
    assert done.returncode == 0, done.stderr[-4000:]
    rows = json.loads(rows_file.read_text())
    assert len(rows) == len(compile_gate.cases())
    assert all(not r["problems"] and r["shared"] > 0 and r["registers"] for r in rows)
