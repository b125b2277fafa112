"""iwsm_md: diffusion samplers of Boltzmann distributions trained with Importance Weighted Score Matching."""
__version__ = "0.1.0"
