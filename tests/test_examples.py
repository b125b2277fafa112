"""Every example runs as written (on a few rows) and prints what it promises."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_evaluate_reference_sets_runs():
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "evaluate_reference_sets.py"), "--rows", "2000"],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    rows = {line.split()[0]: line.split() for line in out.splitlines() if line.startswith(("DW-4", "LJ-13"))}
    assert abs(float(rows["DW-4"][2]) - (-22.47)) < 0.3
    assert abs(float(rows["LJ-13"][2]) - (-43.0)) < 0.6
    assert float(rows["LJ-13"][4]) < 1e-9  # ASE and OpenMM translations agree
