"""EGNN and e3nn score nets: E(n)/permutation equivariance, translation invariance, centre-of-mass-free
output, shapes, gradients (float64, random untrained nets)."""
import pytest
import torch

from iwsm_md.nets import E3NNScore, EGNNScore

BATCH = 3
CASES = [  # (net class, n_particles, spatial_dim, kwargs)
    (EGNNScore, 4, 2, {"hidden": 32, "layers": 3}),
    (EGNNScore, 4, 3, {"hidden": 32, "layers": 3}),
    (EGNNScore, 13, 3, {"hidden": 32, "layers": 2}),
    (E3NNScore, 4, 3, {}),
    (E3NNScore, 13, 3, {"layers": 2}),
]
IDS = [f"{cls.__name__}-n{n}-d{d}" for cls, n, d, _ in CASES]


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).norm() / b.norm()).item()


@pytest.fixture(params=CASES, ids=IDS)
def case(request):
    """A random float64 net (every weight perturbed, so none is zero and the coordinate updates
    are not negligible), positions `(BATCH, n, d)` and times `(BATCH,)`."""
    cls, n, d, kwargs = request.param
    torch.manual_seed(0)
    net = cls(n, d, **kwargs).double()
    with torch.no_grad():
        for p in net.parameters():
            p.add_(0.1 * torch.randn_like(p))
    x = 1.5 * torch.randn(BATCH, n, d, dtype=torch.float64)
    t = torch.rand(BATCH, dtype=torch.float64)
    return net, x, t


def apply(net, x, t):
    """net on positions `(batch, n, d)` -> scores `(batch, n, d)`."""
    return net(x.reshape(x.shape[0], -1), t).reshape(x.shape)


def random_orthogonal(d: int, det: float) -> torch.Tensor:
    q, r = torch.linalg.qr(torch.randn(d, d, dtype=torch.float64))
    q = q * torch.sign(torch.diagonal(r))  # Haar-distributed
    if torch.det(q) * det < 0:
        q[:, 0] = -q[:, 0]
    return q


@pytest.mark.parametrize("det", [1.0, -1.0], ids=["rotation", "reflection"])
def test_orthogonal_equivariance(case, det):
    # e3nn's irreps carry parity, so E3NNScore is reflection-equivariant too
    net, x, t = case
    q = random_orthogonal(x.shape[-1], det)
    assert rel_err(apply(net, x @ q, t), apply(net, x, t) @ q) <= 1e-6


def test_translation_invariance(case):
    net, x, t = case
    shift = 10.0 * torch.randn(BATCH, 1, x.shape[-1], dtype=torch.float64)
    assert rel_err(apply(net, x + shift, t), apply(net, x, t)) <= 1e-6


def test_permutation_equivariance(case):
    net, x, t = case
    perm = torch.randperm(x.shape[1])
    assert rel_err(apply(net, x[:, perm], t), apply(net, x, t)[:, perm]) <= 1e-6


def test_output_is_com_free_with_shape_dtype_and_gradients(case):
    net, x, t = case
    flat = x.reshape(BATCH, -1)
    out = net(flat, t)
    assert out.shape == flat.shape and out.dtype == torch.float64
    assert out.reshape(x.shape).mean(1).abs().max() <= 1e-12 * out.abs().max()
    assert torch.isfinite(out).all() and out.abs().max() > 0
    out.pow(2).sum().backward()
    for name, p in net.named_parameters():
        assert p.grad is not None and torch.isfinite(p.grad).all() and p.grad.abs().max() > 0, name


def test_float32_forward():
    x, t = torch.randn(2, 12), torch.rand(2)
    for net in (EGNNScore(4, 3, hidden=16, layers=2), E3NNScore(4, layers=2)):
        assert net(x, t).dtype == torch.float32


@pytest.mark.parametrize("spatial_dim", [2, 4])
def test_e3nn_needs_3d(spatial_dim):
    with pytest.raises(ValueError, match="spatial_dim"):
        E3NNScore(4, spatial_dim)
