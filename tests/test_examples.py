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


def test_dw4_openmm_main_job_writes_every_output(tmp_path):
    import json

    import mdtraj

    out = subprocess.run([sys.executable, str(ROOT / "examples" / "dw4_openmm.py"), "--fast", "--out", str(tmp_path)],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "floor (reference vs reference)" in out
    for name in ("sampler.pt", "samples.npy", "samples.dcd", "samples.pdb", "metrics.json", "training.png",
                 "energy.png", "pair_distances.png"):
        assert (tmp_path / name).stat().st_size > 0, name
    traj = mdtraj.load(str(tmp_path / "samples.dcd"), top=str(tmp_path / "samples.pdb"))
    assert traj.n_frames == 200 and traj.n_atoms == 4
    rows = json.loads((tmp_path / "metrics.json").read_text())
    assert set(rows["sampler"]) >= {"W1", "W2", "E-TVD", "D-TVD"}
    assert rows["floor (reference vs reference)"]["E-TVD"] < 0.2  # two halves of the reference agree
    out = subprocess.run([sys.executable, str(ROOT / "examples" / "analyse_with_mdtraj.py"),
                          str(tmp_path / "samples.dcd"), str(tmp_path / "samples.pdb")],
                         capture_output=True, text=True, timeout=300, check=True).stdout
    assert "D-TVD" in out and (tmp_path / "rdf.png").exists()


def test_ase_and_custom_energy_examples_run(tmp_path):
    run = lambda *args: subprocess.run([sys.executable, *map(str, args)], capture_output=True, text=True,  # noqa: E731
                                       timeout=300, check=True).stdout
    assert "frames to" in run(ROOT / "examples" / "lj13_ase.py", "--fast", "--out", tmp_path / "lj")
    assert "mean radius" in run(ROOT / "examples" / "custom_energy.py", "--fast")
