"""scripts/gpu_check.sh --cpu end to end: every check but the CUDA ones runs and passes, figures in JSON."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_gpu_check_cpu_parts_run_end_to_end(tmp_path):
    env = dict(os.environ, OUT=str(tmp_path), PYTHON=sys.executable)
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), "--cpu"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    results = json.loads((tmp_path / "gpu_check.json").read_text())
    checks = results["checks"]
    assert checks["cuda tests"] == {"ok": None, "skipped": "--cpu", "seconds": checks["cuda tests"]["seconds"]}
    assert checks["capture"]["ok"] and checks["capture"]["rel_error_bf16_vs_cpu_float32"] < 5e-2
    assert checks["capture"]["capture_tok_s"] > 0 and checks["capture"]["decode_tok_s_transformers"] > 0
    assert checks["sae training"]["ok"] and 0 < checks["sae training"]["cpu float32"]["fvu"] < 0.9
    assert checks["sae step"]["step_ms"] > 0 and checks["sae step"]["naive_dense_step_ms"] > 0
    assert checks["process group"] == {"ok": True, "backend": "gloo", "seconds": checks["process group"]["seconds"]}
    assert proc.stdout.strip().splitlines()[-1].lstrip().startswith("process group")  # the table comes last
