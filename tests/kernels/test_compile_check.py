"""Every Triton kernel compiles for sm_80, sm_86, sm_89 and sm_90 at the kernel tests' shapes, clean (no spill
over 64 bytes, shared memory within each architecture's limit): `benchmarks/compile_check.py`, run in a
subprocess because it needs the real triton language while this suite runs the interpreter."""

import json
import os
import subprocess
import sys
from pathlib import Path

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "compile_check.py"
KERNELS = {"l2norm", "chunk_kkt", "kda_kkt", "chunk_solve", "chunk_wy", "chunk_state", "chunk_state (no h0)", "chunk_output",
           "chunk_checkpoint", "recurrent", "conv", "conv_states", "conv_update", "ssd_chunk", "ssd_chunk (no h0)",
           "ssd_recurrent", "selective_scan", "selective_scan (no h0)"}


def test_every_kernel_compiles_clean_for_every_arch():
    env = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run([sys.executable, str(SCRIPT), "--shapes", "test", "kda_test", "ssd_test", "scan_test", "--json"], capture_output=True, text=True,
                            env=env, timeout=900)
    rows = json.loads(result.stdout)
    assert {row["kernel"] for row in rows} == KERNELS
    assert {row["arch"] for row in rows} == {"sm_80", "sm_86", "sm_89", "sm_90"}
    broken = [row for row in rows if row["error"] is not None or row["spill_bytes"] > 64]
    assert not broken, json.dumps(broken, indent=1)
    assert result.returncode == 0, result.stderr[-2000:]  # shared memory within each limit too
