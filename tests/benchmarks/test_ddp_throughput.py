"""benchmarks/ddp_throughput.py end to end on a quick setting: both runs train, the report holds both rates."""

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_quick_run_writes_both_throughputs(tmp_path):
    run = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "ddp_throughput.py"), "--steps", "2", "--rounds",
                          "1", "--set", "data.num_workers=0", "--set", "data.img_size=16", "--set",
                          "student.kwargs.img_size=16", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr[-2000:]
    result = json.loads((tmp_path / "ddp_throughput.json").read_text())
    assert result["images_per_s_1"] > 0 and result["images_per_s_2"] > 0
    assert result["throughput_ratio_2_over_1"] == result["rounds"][0]["ratio_2_over_1"]
    assert "| 2 | 16 |" in (tmp_path / "ddp_throughput.md").read_text()
