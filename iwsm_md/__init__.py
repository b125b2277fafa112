"""iwsm_md: diffusion samplers of Boltzmann distributions trained with Importance Weighted Score Matching.

    sampler = iwsm_md.train(system="gmm40")          # or an openmm.System / ase.Atoms / Energy
    x = sampler.sample(10_000)
    sampler.save("gmm40.pt"); sampler = iwsm_md.load("gmm40.pt")
"""
from iwsm_md.api import load, train
from iwsm_md.training import Sampler, TrainConfig

__version__ = "0.1.0"
__all__ = ["Sampler", "TrainConfig", "load", "train"]
