"""The `iwsm-md` command line, run in-process through `iwsm_md.cli.main` (and once as a process)."""
import json
import subprocess
import sys
import tomllib

import mdtraj
import numpy as np
import openmm
import pytest

from iwsm_md import io
from iwsm_md.cli import main
from iwsm_md.potentials import ASE_REDUCED_TEMPERATURE, REDUCED_TEMPERATURE, double_well, lj_cluster_atoms

TINY = ["--set", "epochs=2", "--set", "steps_per_epoch=3", "--set", "n_mc=8", "--set", "batch_size=40",
        "--set", "samples_per_epoch=50", "--set", "sample_steps=5"]
TINY_NET = ["--hidden", "16", "--layers", "1"]


def run(capsys, *argv):
    """(exit status, stdout, stderr) of `iwsm-md argv`."""
    code = main([str(a) for a in argv])
    out = capsys.readouterr()
    return code, out.out, out.err


def bad(capsys, *argv) -> str:
    """Run a command that must fail as bad input: status 2, one line on stderr, no traceback."""
    code, _, err = run(capsys, *argv)
    assert code == 2, err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err and "error:" in lines[0], err
    return lines[0]


@pytest.fixture(scope="module")
def gmm_run(tmp_path_factory):
    """A tiny GMM-40 run: a TOML file overridden by --set."""
    d = tmp_path_factory.mktemp("gmm")
    (d / "gmm.toml").write_text('epochs = 5\n[train]\nn_mc = 16\nmode = "iwsm"\nsigma_max = 2\n')
    code = main(["train", "--system", "gmm40", "--config", str(d / "gmm.toml"), *TINY, "--out", str(d / "run"),
                 "--checkpoint-every", "2", "--no-progress"])
    assert code == 0
    return d / "run"


@pytest.fixture(scope="module")
def dw4_xml(tmp_path_factory):
    path = tmp_path_factory.mktemp("dw4") / "dw4.xml"
    path.write_text(openmm.XmlSerializer.serialize(double_well()))
    return path


@pytest.fixture(scope="module")
def dw4_run(dw4_xml):
    out = dw4_xml.parent / "run"
    code = main(["train", "--openmm-xml", str(dw4_xml), "--temperature", str(REDUCED_TEMPERATURE), "--spatial-dim", "2",
                 *TINY, *TINY_NET, "--out", str(out), "--no-progress"])
    assert code == 0
    return out


def test_help_as_a_process_and_errors_without_traceback():
    cmd = [sys.executable, "-m", "iwsm_md.cli"]
    done = subprocess.run(cmd + ["--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0
    for command in ("train", "sample", "evaluate", "export", "mcmc"):
        assert command in done.stdout
    done = subprocess.run(cmd + ["train", "--system", "nope", "--dry-run"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "unknown system 'nope'" in done.stderr and "gmm40" in done.stderr


def test_each_subcommand_lists_its_options(capsys):
    expected = {"train": ["--system", "--openmm-xml", "--config", "--set", "--resume", "--n-mc", "--epochs",
                          "--checkpoint-every", "--no-progress"],
                "sample": ["--sampler", "-n", "--method", "--out"],
                "evaluate": ["--reference", "--samples", "--out"],
                "export": ["--samples", "--out", "--ase-structure"],
                "mcmc": ["--chains", "--method", "--out"]}
    for command, options in expected.items():
        code, out, _ = run(capsys, command, "--help")
        assert code == 0
        for option in options:
            assert option in out, (command, option)


def test_train_writes_the_run_directory(gmm_run):
    for name in ("checkpoint.pt", "sampler.pt", "config.toml", "history.json", "training.png"):
        assert (gmm_run / name).is_file(), name
    config = tomllib.loads((gmm_run / "config.toml").read_text())["train"]
    # published GMM-40 settings < TOML file < --set
    assert config["scale"] == 50.0 and config["sigma_max"] == 2.0 and config["mode"] == "iwsm"
    assert config["n_mc"] == 8 and config["epochs"] == 2
    history = json.loads((gmm_run / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1]
    assert {"loss", "weight_ess", "inner_ess"} <= set(history[0])


def test_config_precedence_and_round_trip(capsys, tmp_path):
    toml = tmp_path / "c.toml"
    toml.write_text('lr = 0.01\n[train]\nn_mc = 16\nepochs = 7\nmode = "idem"\n')
    base = ["train", "--system", "gmm40", "--config", toml, "--dry-run"]
    code, out, _ = run(capsys, *base, "--set", "n_mc=8", "--n-mc", "12", "--set", "target_clip=none")
    assert code == 0
    config = tomllib.loads(out)["train"]
    assert (config["n_mc"], config["epochs"], config["mode"], config["lr"]) == (12, 7, "idem", 0.01)
    assert config["scale"] == 50.0 and config["target_clip"] == "none"
    code, out, _ = run(capsys, *base, "--n_mc", "12", "--set", "n_mc=8", "--set", "mode=iwsm")
    config = tomllib.loads(out)["train"]
    assert (config["n_mc"], config["mode"]) == (8, "iwsm")
    # the resolved config reads back to itself, None included
    (tmp_path / "resolved.toml").write_text(run(capsys, *base, "--set", "target_clip=none")[1])
    code, again, _ = run(capsys, "train", "--system", "gmm40", "--config", tmp_path / "resolved.toml", "--dry-run")
    assert code == 0 and again.splitlines()[1:] == (tmp_path / "resolved.toml").read_text().splitlines()[1:]


def test_resume_continues_the_history(capsys, tmp_path):
    out = tmp_path / "run"
    assert main(["train", "--system", "gmm40", *TINY, "--out", str(out), "--no-progress"]) == 0
    line = bad(capsys, "train", "--system", "gmm40", *TINY, "--out", out, "--no-progress")
    assert "--resume" in line  # an existing run is not overwritten silently
    code, _, err = run(capsys, "train", "--system", "gmm40", "--out", out, "--resume", "--epochs", "3", "--progress")
    assert code == 0, err
    assert "3/3" in err  # the tqdm bar
    history = json.loads((out / "history.json").read_text())
    assert [h["epoch"] for h in history] == [0, 1, 2]
    assert tomllib.loads((out / "config.toml").read_text())["train"]["epochs"] == 3
    line = bad(capsys, "train", "--system", "gmm40", "--out", tmp_path / "empty", "--resume")
    assert "no checkpoint" in line


def test_gmm_sample_and_evaluate_against_exact_samples(capsys, gmm_run, tmp_path):
    code, _, err = run(capsys, "sample", "--sampler", gmm_run / "sampler.pt", "-n", 64, "--steps", 5, "--seed", 1,
                       "--out", tmp_path / "x.npy")
    assert code == 0, err
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (64, 2) and x.dtype == np.float32
    assert main(["sample", "--sampler", str(gmm_run), "-n", "16", "--steps", "5", "--method", "ode",
                 "--out", str(tmp_path / "x.npz")]) == 0
    with np.load(tmp_path / "x.npz") as data:
        assert data["samples"].shape == (16, 2) and data["energies"].shape == (16,)
    code, out, err = run(capsys, "evaluate", "--sampler", gmm_run, "--samples", tmp_path / "x.npy",
                         "--out", tmp_path / "eval")
    assert code == 0, err
    assert "W1" in out and "S-TVD" in out
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"W1", "W2", "E-TVD", "S-TVD"} <= set(report["metrics"]) and report["n_samples"] == 64
    for png in ("energy.png", "samples.png"):
        assert (tmp_path / "eval" / png).stat().st_size > 0


def test_dw4_from_openmm_xml_to_dcd_mcmc_and_evaluate(capsys, dw4_run, tmp_path):
    for name in ("sampler.pt", "config.toml", "history.json", "training.png"):
        assert (dw4_run / name).is_file()
    dcd = tmp_path / "dw4.dcd"
    code, _, err = run(capsys, "sample", "--sampler", dw4_run / "sampler.pt", "-n", 20, "--steps", 5, "--out", dcd)
    assert code == 0, err
    traj = mdtraj.load(str(dcd), top=str(dcd.with_suffix(".pdb")))
    assert traj.n_frames == 20 and traj.n_atoms == 4

    ref = tmp_path / "ref.npz"
    code, out, err = run(capsys, "mcmc", "--system", "dw4", "-n", 48, "--chains", 16, "--burn-in", 40, "--out", ref)
    assert code == 0, err
    assert "tau" in out and "n_effective" in out
    with np.load(ref) as data:
        assert data["samples"].shape == (48, 8) and data["energies"].shape == (48,)
        assert float(data["autocorrelation_time"]) > 0

    code, out, err = run(capsys, "evaluate", "--sampler", dw4_run, "--reference", ref, "-n", 30, "--steps", 5,
                         "--out", tmp_path / "eval")
    assert code == 0, err
    report = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert {"W1", "W2", "E-TVD", "D-TVD"} <= set(report["metrics"]) and report["centred"]
    for png in ("energy.png", "pair_distances.png", "rdf.png"):
        assert (tmp_path / "eval" / png).stat().st_size > 0

    # export: reference samples of the same system (given by its XML) to extended XYZ with energies
    code, _, err = run(capsys, "export", "--samples", ref, "--openmm-xml", dw4_run.parent / "dw4.xml",
                       "--temperature", REDUCED_TEMPERATURE, "--spatial-dim", 2, "--out", tmp_path / "ref.extxyz")
    assert code == 0, err
    back = io.read(tmp_path / "ref.extxyz", spatial_dim=2, length_unit="nm")
    with np.load(ref) as data:
        np.testing.assert_allclose(back.positions, data["samples"], atol=1e-6)
        np.testing.assert_allclose(back.energies, data["energies"], rtol=1e-6)


def test_ase_structure_with_a_calculator_from_a_file(capsys, tmp_path):
    atoms = lj_cluster_atoms(4, symbol="Ne")
    atoms.calc = None
    atoms.write(tmp_path / "lj4.xyz")
    (tmp_path / "mycalc.py").write_text(
        "from ase.calculators.lj import LennardJones\n"
        "from ase.calculators.mixing import SumCalculator\n"
        "from iwsm_md.energies.ase_calculators import HarmonicCentroidRestraint\n"
        "def lj_cluster(k=1.0):\n"
        "    return SumCalculator([LennardJones(sigma=2 ** (-1 / 6), epsilon=2.0, rc=1e3), HarmonicCentroidRestraint(k=k)])\n")
    system = ["--ase-structure", tmp_path / "lj4.xyz", "--calculator", f"{tmp_path / 'mycalc.py'}:lj_cluster",
              "--calculator-args", '{"k": 1.0}', "--temperature", ASE_REDUCED_TEMPERATURE]
    out = tmp_path / "lj.extxyz"
    code, _, err = run(capsys, "mcmc", *system, "-n", 16, "--chains", 8, "--burn-in", 40, "--out", out)
    assert code == 0, err
    back = io.read(out, length_unit="Å")
    assert back.elements == ("Ne",) * 4 and back.positions.shape == (16, 12) and back.energies is not None
    code, _, err = run(capsys, "export", "--samples", out, *system, "--out", tmp_path / "lj.pdb")
    assert code == 0, err
    assert [a.element.symbol for a in mdtraj.load(str(tmp_path / "lj.pdb")).topology.atoms] == ["Ne"] * 4


@pytest.mark.parametrize("argv, message", [
    (["train", "--system", "nope"], "unknown system 'nope'"),
    (["train"], "no system given"),
    (["train", "--system", "gmm40", "--set", "n_cm=1", "--dry-run"], "did you mean 'n_mc'"),
    (["train", "--system", "gmm40", "--set", "foo=1", "--dry-run"], "valid keys"),
    (["train", "--system", "gmm40", "--set", "epochs=two", "--dry-run"], "'epochs' must be an integer"),
    (["train", "--system", "gmm40", "--epochs", "2.5", "--dry-run"], "'epochs' must be an integer"),
    (["train", "--system", "gmm40", "--mode", "bogus", "--dry-run"], "mode must be one of"),
    (["train", "--system", "gmm40", "--set", "epochs", "--dry-run"], "--set expects key=value"),
    (["train", "--system", "gmm40", "--config", "{tmp}/missing.toml", "--dry-run"], "does not exist"),
    (["train", "--system", "gmm40", "--config", "{tmp}/broken.toml", "--dry-run"], "cannot parse config file"),
    (["train", "--system", "dw4", "--temperature", "300"], "does not apply to built-in"),
    (["train", "--openmm-xml", "{xml}", "--dry-run"], "needs --temperature"),
    (["train", "--openmm-xml", "{tmp}/broken.toml", "--temperature", "300"], "cannot read"),
    (["train", "--ase-structure", "{xml}", "--temperature", "300"], "needs --calculator"),
    (["mcmc", "--ase-structure", "{tmp}/x.xyz", "--temperature", "3", "--calculator", "nomodule:X", "-n", "2",
      "--out", "{tmp}/o.npz"], "cannot import module 'nomodule'"),
    (["sample", "--sampler", "{tmp}/missing.pt", "-n", "3", "--out", "{tmp}/x.npy"], "does not exist"),
    (["sample", "--sampler", "{tmp}/broken.toml", "-n", "3", "--out", "{tmp}/x.npy"], "cannot read sampler"),
    (["sample", "--sampler", "{tmp}/missing.pt", "-n", "3", "--out", "{tmp}/x.xtc"], "unknown format '.xtc'"),
    (["sample", "-n", "3"], "required"),
    (["export", "--samples", "{tmp}/x.npy", "--system", "dw4", "--out", "{tmp}/y.pdb"], "system needs (n, 8)"),
    (["evaluate", "--samples", "{tmp}/x.npy", "--system", "dw4"], "--reference FILE is required"),
    (["train", "--system", "gmm40", "--set", "lr=-1", "--dry-run"], "lr must be positive and finite"),
    (["train", "--system", "gmm40", "--sigma-min", "2", "--dry-run"], "need 0 < sigma_min < sigma_max"),
    (["train", "--system", "gmm40", "--device", "tpu", "--dry-run"], "device must name a torch device"),
    (["train", "--system", "gmm40", "--out", "{tmp}", "--checkpoint-every", "0"], "--checkpoint-every must be a positive"),
    (["train", "--system", "gmm40", "--out", "{tmp}/damaged", "--resume"], "cannot read sampler checkpoint"),
    (["train", "--openmm-xml", "{tmp}/barostat.xml", "--temperature", "300"], "need a periodic box"),
    (["sample", "--sampler", "{tmp}/broken.toml", "-n", "0", "--out", "{tmp}/x.npy"], "-n must be a positive"),
])
def test_bad_input_exits_2_with_one_line(capsys, tmp_path, dw4_xml, argv, message):
    (tmp_path / "broken.toml").write_text("n_mc = = 3\n")
    (tmp_path / "x.xyz").write_text("1\n\nAr 0 0 0\n")
    np.save(tmp_path / "x.npy", np.zeros((4, 2), np.float32))
    (tmp_path / "damaged").mkdir()
    (tmp_path / "damaged" / "checkpoint.pt").write_bytes(b"PK\x03\x04 cut short")
    barostat = double_well()
    barostat.addForce(openmm.MonteCarloBarostat(1.0, 300.0))
    (tmp_path / "barostat.xml").write_text(openmm.XmlSerializer.serialize(barostat))
    argv = [a.format(tmp=tmp_path, xml=dw4_xml) for a in argv]
    assert message in bad(capsys, *argv)
