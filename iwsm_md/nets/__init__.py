"""Score networks `s_θ(x, t)`: `(batch, dim)` positions and `(batch,)` times -> `(batch, dim)` scores."""
from iwsm_md.nets.mlp import MLPScore, sinusoidal_embedding

__all__ = ["MLPScore", "sinusoidal_embedding"]
