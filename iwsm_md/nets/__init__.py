"""Score networks `s_θ(x, t)`: `(batch, dim)` positions and `(batch,)` times -> `(batch, dim)` scores."""
from iwsm_md.nets.mlp import MLPScore, NoiseScaled, sinusoidal_embedding

__all__ = ["MLPScore", "NoiseScaled", "sinusoidal_embedding"]
