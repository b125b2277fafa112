"""Score networks `s_θ(x, t)`: `(batch, dim)` positions and `(batch,)` times -> `(batch, dim)` scores.

`E3NNScore` is imported on first use (e3nn's import costs about two seconds).
"""
from iwsm_md.nets.egnn import EGNNScore
from iwsm_md.nets.mlp import MLPScore, NoiseScaled, sinusoidal_embedding

__all__ = ["E3NNScore", "EGNNScore", "MLPScore", "NoiseScaled", "sinusoidal_embedding"]


def __getattr__(name: str):
    if name == "E3NNScore":
        from iwsm_md.nets.e3nn_score import E3NNScore

        return E3NNScore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
