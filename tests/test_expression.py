"""The expression language (parse, derivative, simplify, evaluate) against OpenMM's own Lepton.

OpenMM is the reference: a one-particle `CustomExternalForce` on the Reference platform has
energy (kJ/mol) equal to the expression's value at the particle's (x, y, z), and forces equal to
minus its derivatives, so every parser, function and derivative case below is compared with
what OpenMM itself computes. Simplifications and integer powers are also checked against numpy
and `torch.pow`, derivatives against autograd and finite differences.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass

import numpy as np
import openmm
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openmm import unit

from iwsm_md.energies import expression as ex
from iwsm_md.energies.expression import FUNCTIONS, Const, ExpressionError, Op, Var, derivative, evaluate, parse

F64 = torch.float64
KJ = unit.kilojoule_per_mole
RTOL = 1e-12  # torch evaluation vs OpenMM, relative to max(|value|, 1)
INTERNAL_OPS = {"add", "sub", "mul", "div", "pow", "neg"}  # tree nodes of the operators, not callable by name


class OpenMMExpression:
    """Values and gradients of an expression in x, y, z, computed by OpenMM's Reference platform.

    One Context is reused: a new expression is set on the force and the Context reinitialised.
    """

    def __init__(self):
        self.system = openmm.System()
        self.system.addParticle(1.0)
        self.force = openmm.CustomExternalForce("0")
        self.force.addParticle(0, [])
        self.system.addForce(self.force)
        self.context = openmm.Context(self.system, openmm.VerletIntegrator(1e-3),
                                      openmm.Platform.getPlatformByName("Reference"))

    def __call__(self, expression: str, points: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values `(m,)` and gradients `(m, 3)` (= minus OpenMM's forces) at points `(m, 3)`."""
        self.force.setEnergyFunction(expression)
        self.context.reinitialize()
        values, grads = [], []
        for p in np.asarray(points, dtype=np.float64):
            self.context.setPositions([openmm.Vec3(*map(float, p))])
            state = self.context.getState(getEnergy=True, getForces=True)
            values.append(state.getPotentialEnergy().value_in_unit(KJ))
            grads.append(-np.asarray(state.getForces(asNumpy=True).value_in_unit(KJ / unit.nanometer))[0])
        return np.array(values), np.array(grads)


@pytest.fixture(scope="module")
def omm() -> OpenMMExpression:
    return OpenMMExpression()


def env_of(points: np.ndarray, dtype=F64) -> dict[str, torch.Tensor]:
    t = torch.as_tensor(np.asarray(points, dtype=np.float64), dtype=dtype)
    return {"x": t[:, 0], "y": t[:, 1], "z": t[:, 2]}


def as_array(value, m: int) -> np.ndarray:
    """An evaluation result (tensor or constant float) as a float64 array `(m,)`."""
    return torch.broadcast_to(torch.as_tensor(value, dtype=F64), (m,)).detach().numpy().astype(np.float64)


def values_of(expression: str, points: np.ndarray) -> np.ndarray:
    return as_array(evaluate(parse(expression), env_of(points)), len(points))


def gradients_of(expression: str, points: np.ndarray) -> np.ndarray:
    """Symbolic gradients `(m, 3)` of an expression in x, y, z."""
    node, env = parse(expression), env_of(points)
    cache: dict = {}
    return np.stack([as_array(evaluate(derivative(node, v), env, cache), len(points)) for v in "xyz"], axis=1)


def assert_close(actual, expected, rtol, what=""):
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, what
    assert np.all(np.isfinite(expected)), f"{what}: non-finite reference {expected}"
    err = np.abs(actual - expected) / np.maximum(np.abs(expected), 1.0)
    assert np.all(err <= rtol), f"{what}: max relative error {err.max():.3g} > {rtol:g}\n{actual}\nvs\n{expected}"


# ------------------------------------------------------------------------------------ points
_RNG = np.random.default_rng(2024)
ANY = np.concatenate([_RNG.uniform(-2.0, 2.0, (6, 3)), [[0.0, 0.0, 0.0], [1.0, -1.0, 0.5]]])
POS = _RNG.uniform(0.1, 2.0, (6, 3))  # positive x, y, z (log, sqrt, recip, csc, cot)
UNIT = _RNG.uniform(-0.9, 0.9, (6, 3))  # |x| < 1 (asin, acos, sec, tan)
NONZERO = ANY[np.any(ANY != 0, axis=1)]  # atan2's derivative is undefined at the origin


# ----------------------------------------------------------------------- parser vs OpenMM
PRECEDENCE = [  # expression, points, independent value as a function of (x, y, z)
    ("-x^2", ANY, lambda x, y, z: -(x**2)),
    ("2^-x^2", ANY, lambda x, y, z: 2.0 ** (-(x**2))),
    ("2^3^2", ANY, lambda x, y, z: 512.0 + 0 * x),
    ("x-1-1", ANY, lambda x, y, z: x - 2),
    ("8/2/2", ANY, lambda x, y, z: 2.0 + 0 * x),
    ("2*-x", ANY, lambda x, y, z: -2 * x),
    ("--x", ANY, lambda x, y, z: x),
    ("-x*y", ANY, lambda x, y, z: -x * y),
    ("x^-y*z", POS, lambda x, y, z: x ** (-y) * z),
    ("x-y-z", ANY, lambda x, y, z: (x - y) - z),
    ("x/y/z", POS, lambda x, y, z: (x / y) / z),
    ("x/y*z", POS, lambda x, y, z: x / y * z),
    ("x+y*z^2", ANY, lambda x, y, z: x + y * z**2),
    ("-2^2", ANY, lambda x, y, z: -4.0 + 0 * x),
    ("(-2)^2", ANY, lambda x, y, z: 4.0 + 0 * x),
    ("x^y^z", POS, lambda x, y, z: x ** (y**z)),
    ("(x^y)^z", POS, lambda x, y, z: (x**y) ** z),
    ("x*--y", ANY, lambda x, y, z: x * y),
    ("x - -y", ANY, lambda x, y, z: x + y),
    ("((x))", ANY, lambda x, y, z: x),
]

NUMBERS = [  # scientific notation, leading and trailing dots
    ("1e-3*x", ANY, lambda x, y, z: 1e-3 * x),
    (".5*x", ANY, lambda x, y, z: 0.5 * x),
    ("2.*x", ANY, lambda x, y, z: 2.0 * x),
    ("1E+2*x", ANY, lambda x, y, z: 100.0 * x),
    ("2.5e1+x", ANY, lambda x, y, z: 25.0 + x),
    ("2.e-1*x", ANY, lambda x, y, z: 0.2 * x),
    (".25E2-x", ANY, lambda x, y, z: 25.0 - x),
    ("1e3", ANY, lambda x, y, z: 1000.0 + 0 * x),
    ("0.000123456789*x", ANY, lambda x, y, z: 0.000123456789 * x),
]

DEFINITIONS = [  # `;` definitions, each visible to the ones before it; whitespace anywhere
    ("a; a=b*2; b=x", ANY, lambda x, y, z: 2 * x),
    ("a*b; a=c+1; b=c*2; c=x", ANY, lambda x, y, z: (x + 1) * 2 * x),
    ("a ; a = x*2", ANY, lambda x, y, z: 2 * x),
    ("a+b; b=a*y; a=x^2", ANY, lambda x, y, z: x**2 + x**2 * y),
    ("u*v;\n v = u - z ;\t u = x + y ;", ANY, lambda x, y, z: (x + y) * (x + y - z)),
    ("  x *\t2 +\n 1  ", ANY, lambda x, y, z: 2 * x + 1),
    ("x; unused = y", ANY, lambda x, y, z: x),
    ("sin( x )*cos(y ) + atan2( y , z )", ANY, lambda x, y, z: np.sin(x) * np.cos(y) + np.arctan2(y, z)),
]


@pytest.mark.parametrize("expression,points,reference", PRECEDENCE + NUMBERS + DEFINITIONS,
                         ids=[c[0] for c in PRECEDENCE + NUMBERS + DEFINITIONS])
def test_parser_matches_openmm(omm, expression, points, reference):
    expected, _ = omm(expression, points)
    assert_close(values_of(expression, points), expected, RTOL, expression)
    # and the meaning we intend (an independent formula), so OpenMM and we cannot both be wrong
    x, y, z = points.T
    assert_close(expected, reference(x, y, z), 1e-13, f"OpenMM on {expression}")


def test_definitions_see_only_later_definitions(omm):
    """In "a+b; a=x^2; b=a*y" the `a` inside b's definition is not the a defined before it:
    definitions are read last first, so it stays a free variable, for OpenMM and for us."""
    text = "a+b; a=x^2; b=a*y"
    with pytest.raises(Exception, match="a"):
        omm(text, ANY)
    assert "a" in ex.variables(parse(text))
    with pytest.raises(ExpressionError, match="no value for variable 'a'"):
        values_of(text, ANY)


FUNCTION_CASES = [  # every function of FUNCTIONS, with arguments inside their domains
    ("sqrt(x)", POS), ("exp(x)", ANY), ("log(x)", POS), ("sin(x)", ANY), ("cos(x)", ANY),
    ("sec(x)", UNIT), ("csc(x)", POS), ("tan(x)", UNIT), ("cot(x)", POS), ("asin(x)", UNIT),
    ("acos(x)", UNIT), ("atan(x)", ANY), ("atan2(x, y)", NONZERO), ("atan2(-x, y-3)", POS), ("sinh(x)", ANY),
    ("cosh(x)", ANY), ("tanh(x)", ANY), ("erf(x)", ANY), ("erfc(x)", ANY), ("step(x)", ANY),
    ("step(x-y)", ANY), ("delta(x)", ANY), ("delta(x-y)", ANY), ("square(x)", ANY), ("cube(x)", ANY),
    ("recip(x)", POS), ("min(x, y)", ANY), ("max(x, y)", ANY), ("abs(x)", ANY), ("floor(3*x)", ANY),
    ("ceil(3*x)", ANY), ("floor(x)", ANY), ("ceil(x)", ANY), ("select(x, y, z)", ANY),
    ("select(step(x), y^2, z)", ANY), ("x^y", POS), ("x^2.5", POS), ("(x-3)^3", ANY), ("(y-5)^-2", ANY),
    ("x^0", ANY), ("x^1", ANY), ("0*x + y", ANY),
]


def test_every_function_is_tested():
    tested = {name for text, _ in FUNCTION_CASES for name in FUNCTIONS if f"{name}(" in text}
    assert tested == set(FUNCTIONS) - INTERNAL_OPS


@pytest.mark.parametrize("expression,points", FUNCTION_CASES, ids=[c[0] for c in FUNCTION_CASES])
def test_functions_and_derivatives_match_openmm(omm, expression, points):
    expected, expected_grad = omm(expression, points)
    assert_close(values_of(expression, points), expected, RTOL, expression)
    # OpenMM's forces are minus its own symbolic derivatives of the expression
    assert_close(gradients_of(expression, points), expected_grad, 1e-11, f"d/d(x,y,z) {expression}")


def test_step_delta_select_at_zero(omm):
    """Lepton's conventions at the boundary: step(0) = 1, delta(0) = 1, select(0, a, b) = b."""
    points = np.array([[0.0, 2.0, 3.0], [-0.0, 2.0, 3.0], [1e-300, 2.0, 3.0], [-1e-300, 2.0, 3.0]])
    for expression, want in [("step(x)", [1, 1, 1, 0]), ("delta(x)", [1, 1, 0, 0]),
                             ("select(x, y, z)", [3, 3, 2, 2])]:
        expected, _ = omm(expression, points)
        np.testing.assert_array_equal(expected, want)
        np.testing.assert_array_equal(values_of(expression, points), want)


def test_division_by_zero_is_inf_as_in_openmm(omm):
    points = np.array([[1.0, 0.0, 0.0], [-2.0, 0.0, 0.0]])
    for expression in ["x/0", "x/y", "1/y", "recip(y)*x", "x*y^-2"]:
        expected, _ = omm(expression, points)
        np.testing.assert_array_equal(values_of(expression, points), expected, err_msg=expression)


def test_numbers_for_variables_evaluate_like_tensors():
    """Plain numbers in `env` work with every function, and as the tensors they stand for."""
    node = parse("sqrt(x) + step(y) + exp(-x) + x^-2 + y/x + select(y, 1, 2) + min(x, y)")
    value = evaluate(node, {"x": 4.0, "y": 0})
    tensor = evaluate(node, {"x": torch.tensor(4.0, dtype=F64), "y": torch.tensor(0.0, dtype=F64)})
    assert float(value) == pytest.approx(float(tensor), rel=1e-15)
    assert float(evaluate(parse("1/x"), {"x": 0.0})) == math.inf
    # a float32 tensor among the values sets the precision of the numbers
    out = evaluate(parse("x*k + sqrt(k)"), {"x": torch.ones(3), "k": 2.0})
    assert out.dtype == torch.float32


# ------------------------------------------------------------------ random expression trees
@dataclass(frozen=True)
class Gen:
    """Rendered text of a random expression, a bound on |value| for |x|,|y|,|z| <= R, and the
    precedence of its top operator (for the minimal parenthesisation)."""

    text: str
    bound: float
    prec: int
    low: float = 0.0  # a lower bound of the value, for the positive forms (else 0)


ATOM, POW, NEG, MUL, ADD = 4, 3, 2, 1, 0
R = 1.5  # |coordinates|
SQUASH = 10.0  # operands are kept within +-SQUASH, so rounding errors stay ~1e-14 absolute


def _paren(g: Gen, needed: bool) -> str:
    return f"({g.text})" if needed else g.text


def _number(draw) -> Gen:
    if draw(st.booleans()):
        k = draw(st.integers(0, 9))
        text = draw(st.sampled_from([f"{k}", f"{k}.", f"{k}.0"]))
    else:
        v = draw(st.floats(0.01, 5.0))
        forms = [repr(v), f"{v:.6e}", f"{v:.4E}", f"{v * 1e3:.3f}e-3", f"{v / 1e2:.8f}E+2"]
        if v < 1:
            forms.append(f"{v:.7f}"[1:])  # ".1234567"
        text = draw(st.sampled_from(forms))
    return Gen(text, abs(float(text)), ATOM)


def _leaf(draw) -> Gen:
    if draw(st.integers(0, 2)):
        return Gen(draw(st.sampled_from("xyz")), R, ATOM)
    return _number(draw)


def _squash(draw, g: Gen) -> Gen:
    """Keep operands bounded: wrap a large-range expression in a bounded function."""
    if g.bound <= SQUASH:
        return g
    f = draw(st.sampled_from(["tanh", "atan", "erf", "sin", "cos"]))
    return Gen(f"{f}(({g.text})*{1.0 / g.bound!r})", 2.0, ATOM)


def _positive(draw, b: Gen) -> Gen:
    """A positive expression built on b, with known lower and upper bounds."""
    c = draw(st.sampled_from([0.5, 0.75, 1.0, 2.0]))
    kind = draw(st.integers(0, 3))
    if kind == 0:
        return Gen(f"(abs({b.text})+{c})", b.bound + c, ATOM, c)
    if kind == 1:
        return Gen(f"(square({b.text})+{c})", b.bound**2 + c, ATOM, c)
    if kind == 2:
        return Gen(f"({c}+exp({b.text}))", c + math.exp(b.bound), ATOM, c)
    return Gen(f"cosh({b.text})", math.cosh(b.bound), ATOM, 1.0)


def _gen(draw, depth: int) -> Gen:
    if depth == 0 or draw(st.integers(0, 4)) == 0:
        return _leaf(draw)

    def sub() -> Gen:
        return _squash(draw, _gen(draw, depth - 1))

    sp = draw(st.sampled_from(["", " ", "  "]))
    kind = draw(st.sampled_from([
        "neg", "add", "sub", "mul", "div", "pow_int", "pow_int_any", "pow_real", "pow_var", "unary",
        "bounded", "trig", "inverse_trig", "atan2", "discontinuous", "minmax", "select",
    ]))
    if kind == "neg":
        a = sub()
        return Gen("-" + _paren(a, a.prec < NEG), a.bound, NEG)
    if kind in ("add", "sub"):
        a, b = sub(), sub()
        text = f"{_paren(a, a.prec < ADD)}{sp}{'+' if kind == 'add' else '-'}{sp}{_paren(b, b.prec <= ADD)}"
        return Gen(text, a.bound + b.bound, ADD)
    if kind == "mul":
        a, b = sub(), sub()
        return Gen(f"{_paren(a, a.prec < MUL)}{sp}*{sp}{_paren(b, b.prec <= MUL)}", a.bound * b.bound, MUL)
    if kind == "div":
        a, d = sub(), _positive(draw, sub())
        return Gen(f"{_paren(a, a.prec < MUL)}{sp}/{sp}{d.text}", a.bound / d.low, MUL)
    if kind == "pow_int":  # integer powers, negative ones too, of a positive base
        p, k = _positive(draw, sub()), draw(st.sampled_from([-4, -3, -2, -1, 2, 3, 4, 5]))
        return Gen(f"{p.text}^{k}", p.bound**k if k > 0 else p.low**k, POW)
    if kind == "pow_int_any":  # positive integer powers of a base of any sign
        b, k = sub(), draw(st.integers(2, 4))
        return Gen(f"{_paren(b, b.prec <= POW)}^{k}", b.bound**k, POW)
    if kind == "pow_real":
        p, r = _positive(draw, sub()), draw(st.sampled_from([0.5, 1.5, 2.5, -0.5, -1.5, 0.25, 3.7]))
        return Gen(f"{p.text}^{r}", max(p.bound**r, p.low**r), POW)
    if kind == "pow_var":
        p, e = _positive(draw, sub()), sub()
        return Gen(f"{p.text}^{_paren(e, e.prec < NEG)}", max(p.bound**e.bound, p.low**-e.bound, 1.0), POW)
    if kind == "unary":
        b = sub()
        name = draw(st.sampled_from(["sqrt", "exp", "log", "sinh", "cosh", "square", "cube", "recip", "abs"]))
        if name in ("sqrt", "log", "recip"):
            p = _positive(draw, b)
            bound = {"sqrt": math.sqrt(p.bound), "log": max(abs(math.log(p.low)), abs(math.log(p.bound))),
                     "recip": 1.0 / p.low}[name]
            return Gen(f"{name}({p.text})", bound, ATOM)
        bound = {"exp": math.exp(b.bound), "sinh": math.sinh(b.bound), "cosh": math.cosh(b.bound),
                 "square": b.bound**2, "cube": b.bound**3, "abs": b.bound}[name]
        return Gen(f"{name}({b.text})", bound, ATOM)
    if kind == "bounded":
        b = sub()
        name = draw(st.sampled_from(["sin", "cos", "tanh", "erf", "erfc", "atan"]))
        return Gen(f"{name}({sp}{b.text}{sp})", 2.0, ATOM)
    if kind == "trig":  # arguments kept away from the poles
        b = sub()
        name = draw(st.sampled_from(["tan", "sec", "csc", "cot"]))
        if name in ("tan", "sec"):
            return Gen(f"{name}(1.2*tanh({b.text}))", 3.0, ATOM)
        c = draw(st.sampled_from([0.3, 0.5]))
        return Gen(f"{name}({c}+square(sin({b.text})))", 1.0 / math.sin(c), ATOM)
    if kind == "inverse_trig":
        b = sub()
        name, inner = draw(st.sampled_from(["asin", "acos"])), draw(st.sampled_from(["sin", "tanh"]))
        return Gen(f"{name}(0.9*{inner}({b.text}))", math.pi, ATOM)
    if kind == "atan2":  # one argument kept positive: no branch cut
        b, p = sub(), _positive(draw, sub())
        args = (b.text, p.text) if draw(st.booleans()) else (p.text, b.text)
        return Gen(f"atan2({args[0]},{sp}{args[1]})", math.pi, ATOM)
    if kind == "discontinuous":
        b = sub()
        name = draw(st.sampled_from(["step", "delta", "floor", "ceil", "delta_floor"]))
        if name == "delta_floor":  # delta of an integer-valued argument is often 1
            return Gen(f"delta(floor({b.text}))", 1.0, ATOM)
        return Gen(f"{name}({b.text})", b.bound + 1.0 if name in ("floor", "ceil") else 1.0, ATOM)
    if kind == "minmax":
        a, b = sub(), sub()
        return Gen(f"{draw(st.sampled_from(['min', 'max']))}({a.text},{sp}{b.text})", max(a.bound, b.bound), ATOM)
    # select
    c, a, b = sub(), sub(), sub()
    cond = draw(st.sampled_from([c.text, f"step({c.text})", f"floor({c.text})"]))
    return Gen(f"select({cond}, {a.text}, {b.text})", max(a.bound, b.bound), ATOM)


@st.composite
def expression_texts(draw, depth: int = 4) -> str:
    return _gen(draw, depth).text


coordinates = st.floats(-R, R, allow_nan=False, allow_infinity=False)
points_strategy = st.lists(st.tuples(coordinates, coordinates, coordinates), min_size=1, max_size=3)


@settings(max_examples=50, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])
@given(text=expression_texts(), points=points_strategy)
def test_random_expressions_match_openmm(omm, text, points):
    points = np.array(points, dtype=np.float64)
    expected, expected_grad = omm(text, points)
    assert_close(values_of(text, points), expected, RTOL, text)
    assert_close(gradients_of(text, points), expected_grad, 1e-9, f"gradient of {text}")


# ----------------------------------------------------------------------------- derivatives
DERIVATIVE_CASES = [  # expression in x (and y), points in its domain, away from kinks and ties
    ("sqrt(x)", POS), ("exp(x)", NONZERO), ("log(x)", POS), ("sin(x)", NONZERO), ("cos(x)", NONZERO), ("sec(x)", UNIT),
    ("csc(x)", POS), ("tan(x)", UNIT), ("cot(x)", POS), ("asin(x)", UNIT), ("acos(x)", UNIT), ("atan(x)", NONZERO),
    ("atan2(x, y)", POS), ("atan2(y, x)", POS), ("sinh(x)", NONZERO), ("cosh(x)", NONZERO), ("tanh(x)", NONZERO),
    ("erf(x)", NONZERO), ("erfc(x)", NONZERO), ("square(x)", NONZERO), ("cube(x)", NONZERO), ("recip(x)", POS),
    ("min(x, y)", NONZERO), ("max(x, y)", NONZERO), ("min(x^2, y)", NONZERO), ("abs(x)", NONZERO),
    ("select(step(x-y), x^2, y*x)", NONZERO), ("step(x-0.123)*x^2", NONZERO), ("x^y", POS), ("y^x", POS),
    ("x^x", POS), ("(x-3)^2", NONZERO), ("(x-3)^3", NONZERO), ("(x-3)^-2", NONZERO), ("x^2.5", POS), ("x^-0.5", POS),
    ("x/y", POS), ("y/x", POS), ("x*x*x", NONZERO), ("(1/x)^12", POS), ("-x^2", NONZERO), ("2^-x^2", NONZERO),
    ("sqrt(x)^4", POS), ("(x^2)^3", NONZERO), ("1/x^3", POS), ("3/x", POS), ("x/3", NONZERO), ("--x", NONZERO),
    ("a; a=b*2; b=x^2", NONZERO), ("exp(-x^2)*sin(3*x)/(1+y*x)", POS), ("log(1+x*y)*cosh(x-y)", POS),
    ("4*((0.9/x)^12-(0.9/x)^6)", POS), ("x^12 - x^-6 + x^11", POS), ("tanh(x)^3*sec(x)^2", UNIT),
]


@pytest.mark.parametrize("expression,points", DERIVATIVE_CASES, ids=[c[0] for c in DERIVATIVE_CASES])
def test_derivative_matches_autograd_and_finite_differences(expression, points):
    node, env = parse(expression), env_of(points)
    m = len(points)
    symbolic = as_array(evaluate(derivative(node, "x"), env), m)
    x = env["x"].clone().requires_grad_(True)
    value = evaluate(node, {**env, "x": x})
    if isinstance(value, torch.Tensor) and value.requires_grad:
        (auto,) = torch.autograd.grad(value.sum(), x)
    else:
        auto = torch.zeros(m, dtype=F64)
    assert_close(symbolic, auto.numpy(), 1e-13, f"autograd of {expression}")
    h = 1e-6
    fd = (as_array(evaluate(node, {**env, "x": env["x"] + h}), m)
          - as_array(evaluate(node, {**env, "x": env["x"] - h}), m)) / (2 * h)
    assert_close(symbolic, fd, 1e-7, f"finite differences of {expression}")


@pytest.mark.parametrize("expression", ["step(x)", "delta(x)", "floor(x)", "ceil(x)", "step(x^2-1)*3",
                                        "floor(sin(x))+ceil(x*y)", "delta(x-y)"])
def test_derivative_of_piecewise_constant_is_zero(expression):
    assert derivative(parse(expression), "x") == Const(0.0)


def test_derivative_of_constant_power_of_negative_base_is_finite():
    x = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    for text, exact in [("(x-3)^2", 2 * (x - 3)), ("(x-3)^3", 3 * (x - 3) ** 2), ("(x-3)^-2", -2 * (x - 3) ** -3),
                        ("x^4", 4 * x**3), ("(-x)^5", -5 * x**4)]:
        d = evaluate(derivative(parse(text), "x"), {"x": x})
        assert torch.all(torch.isfinite(d)), text
        torch.testing.assert_close(d, exact, rtol=1e-14, atol=0, msg=text)
    assert float(evaluate(derivative(parse("(x-3)^2"), "x"), {"x": 1.0})) == -4.0


def test_derivative_of_absent_variable_is_zero_and_geometry_is_refused():
    assert derivative(parse("x^2+sin(y)"), "z") == Const(0.0)
    with pytest.raises(ExpressionError, match="distance"):
        derivative(parse("distance(p1, p2)^2"), "p1")


# ----------------------------------------------------------------------------- simplifier
def r(x):
    return Var(x)


def c(v):
    return Const(v)


SIMPLIFICATIONS = [  # text, the simplified tree, an independent numpy value of the text
    ("(1/x)^12", Op("pow", (r("x"), c(-12))), lambda x, y: (1 / x) ** 12),
    ("(1/x)^0.5", Op("pow", (r("x"), c(-0.5))), lambda x, y: (1 / x) ** 0.5),
    ("recip(x)^3", Op("pow", (r("x"), c(-3))), lambda x, y: x**-3.0),
    ("sqrt(x)^4", Op("pow", (r("x"), c(2))), lambda x, y: np.sqrt(x) ** 4),
    ("sqrt(x)^2", r("x"), lambda x, y: np.sqrt(x) ** 2),
    ("sqrt(x)^-6", Op("pow", (r("x"), c(-3))), lambda x, y: np.sqrt(x) ** -6),
    ("(x^2)^3", Op("pow", (r("x"), c(6))), lambda x, y: (x**2) ** 3),
    ("(x^1.5)^2", Op("pow", (r("x"), c(3))), lambda x, y: (x**1.5) ** 2),
    ("(x^-2)^-3", Op("pow", (r("x"), c(6))), lambda x, y: (x**-2.0) ** -3),
    ("2*(3*x)", Op("mul", (c(6), r("x"))), lambda x, y: 2 * (3 * x)),
    ("(x*2)*3", Op("mul", (c(6), r("x"))), lambda x, y: x * 2 * 3),
    ("(2*x)*y", Op("mul", (c(2), Op("mul", (r("x"), r("y"))))), lambda x, y: 2 * x * y),
    ("x*(2*y)", Op("mul", (c(2), Op("mul", (r("y"), r("x"))))), lambda x, y: x * 2 * y),
    ("x*x", Op("pow", (r("x"), c(2))), lambda x, y: x * x),
    ("1/x^3", Op("pow", (r("x"), c(-3))), lambda x, y: 1 / x**3),
    ("3/x", Op("mul", (c(3), Op("div", (c(1), r("x"))))), lambda x, y: 3 / x),
    ("x/4", Op("mul", (c(0.25), r("x"))), lambda x, y: x / 4),
    ("x/3", Op("mul", (c(1 / 3), r("x"))), lambda x, y: x / 3),
    ("--x", r("x"), lambda x, y: x),
    ("-(-(x+y))", Op("add", (r("x"), r("y"))), lambda x, y: x + y),
    ("2*-x", Op("mul", (c(-2), r("x"))), lambda x, y: -2 * x),
    ("-x*y", Op("neg", (Op("mul", (r("x"), r("y"))),)), lambda x, y: -x * y),
    ("x*-y", Op("neg", (Op("mul", (r("x"), r("y"))),)), lambda x, y: -x * y),
    ("0*x", c(0), lambda x, y: 0 * x),
    ("x*0", c(0), lambda x, y: 0 * x),
    ("0/x", c(0), lambda x, y: 0 / x),
    ("x^0", c(1), lambda x, y: x**0),
    ("x^1", r("x"), lambda x, y: x),
    ("x*1+0", r("x"), lambda x, y: x),
    ("0+x-0", r("x"), lambda x, y: x),
    ("0-x", Op("neg", (r("x"),)), lambda x, y: -x),
    ("x/1", r("x"), lambda x, y: x),
    ("2*3+1", c(7), lambda x, y: 7 + 0 * x),
    ("sqrt(4)*x", Op("mul", (c(2), r("x"))), lambda x, y: 2 * x),
    ("4*(((0.9/x)^12)-((0.9/x)^6))", None, lambda x, y: 4 * ((0.9 / x) ** 12 - (0.9 / x) ** 6)),
    ("x^2*x^3/(x*y)^2", None, lambda x, y: x**2 * x**3 / (x * y) ** 2),
]


@pytest.mark.parametrize("text,tree,reference", SIMPLIFICATIONS, ids=[s[0] for s in SIMPLIFICATIONS])
def test_simplifications_preserve_values(monkeypatch, text, tree, reference):
    simplified = parse(text)
    if tree is not None:
        assert simplified == tree, f"{text} -> {simplified!r}, expected {tree!r}"
    rng = np.random.default_rng(7)
    x, y = rng.uniform(0.2, 3.0, (2, 9))  # positive: sqrt and real powers inside their domains
    env = {"x": torch.tensor(x), "y": torch.tensor(y)}
    after = as_array(evaluate(simplified, env), 9)
    assert_close(after, reference(x, y), 1e-13, f"{text} vs numpy")
    with monkeypatch.context() as m:  # the same text parsed without any simplification
        m.setattr(ex, "op", lambda name, *args: Op(name, args))
        raw = parse(text)
    before = as_array(evaluate(raw, env), 9)
    assert_close(after, before, 1e-13, f"{text}: simplified vs unsimplified")


def test_integer_powers_of_negative_bases_keep_their_sign(omm):
    points = np.array([[-1.3, -0.7, 2.0], [-2.0, 0.9, -0.4]])
    for text in ["x^3", "x^-3", "(x^3)^3", "(x^-1)^5", "x^2*x^3", "x*x*x*x*x", "y^7-x^-5"]:
        expected, _ = omm(text, points)
        assert_close(values_of(text, points), expected, RTOL, text)


# ------------------------------------------------------------------------- integer powers
def test_integer_powers_equal_torch_pow_with_shared_tables():
    rng = np.random.default_rng(3)
    base = np.concatenate([rng.uniform(0.05, 3.0, 20), -rng.uniform(0.05, 3.0, 20), [1.0, -1.0, 0.5]])
    x = torch.tensor(base, dtype=F64)
    cache: dict = {}
    exponents = [k for k in range(-20, 21) if k != 0]
    order = rng.permutation(exponents)  # any order of evaluation within one cache
    results = {}
    for k in order:
        node = parse(f"x^{k}")
        assert node == Op("pow", (Var("x"), Const(float(k)))) or (k == 1 and node == Var("x"))
        results[int(k)] = evaluate(node, {"x": x}, cache)
    for k in exponents:
        torch.testing.assert_close(results[k], torch.pow(x, k), rtol=1e-13, atol=0, msg=f"x^{k}")
        fresh = evaluate(parse(f"x^{k}"), {"x": x})  # a cache of its own
        torch.testing.assert_close(fresh, torch.pow(x, k), rtol=1e-13, atol=0, msg=f"x^{k} alone")
    # one table per base, shared: positive powers of x, negative ones as powers of 1/x
    assert set(cache[("powers", Var("x"))]) >= set(range(1, 21))
    assert set(cache[("powers", Op("recip", (Var("x"),)))]) >= set(range(1, 21))
    table = cache[("powers", Var("x"))]
    assert results[12] is table[12] and results[6] is table[6]


def test_integer_powers_share_work_between_energy_and_derivative():
    """x^12 and x^6 of an energy and x^11, x^5 of its derivative reuse one table."""
    node = parse("x^-12 - x^-6")
    cache: dict = {}
    x = torch.linspace(0.8, 2.0, 7, dtype=F64)
    e = evaluate(node, {"x": x}, cache)
    d = evaluate(derivative(node, "x"), {"x": x}, cache)
    torch.testing.assert_close(e, x**-12 - x**-6, rtol=1e-13, atol=0)
    torch.testing.assert_close(d, -12 * x**-13 + 6 * x**-7, rtol=1e-13, atol=0)
    assert len(cache[("powers", Op("recip", (Var("x"),)))]) <= 10


@pytest.mark.parametrize("k", [-64, -33, 23, 64, 65, -65, 100])
def test_large_integer_powers(k):
    x = torch.tensor([0.9, -1.05, 1.1, -0.97], dtype=F64)
    torch.testing.assert_close(evaluate(parse(f"x^{k}" if k > 0 else f"x^({k})"), {"x": x}), torch.pow(x, k),
                               rtol=1e-13, atol=0)


def test_integer_powers_in_float32():
    x = torch.tensor([0.7, -1.3, 2.1], dtype=torch.float32)
    for k in (-12, -6, 2, 3, 12):
        out = evaluate(parse(f"x^{k}" if k > 0 else f"x^({k})"), {"x": x})
        assert out.dtype == torch.float32
        torch.testing.assert_close(out, torch.pow(x.double(), k).float(), rtol=1e-5, atol=0)


# ---------------------------------------------------------------------------------- errors
@pytest.mark.parametrize("text,message", [
    ("foo(x)", "unknown function 'foo'"),
    ("add(x, y)", "unknown function 'add'"),
    ("sin(x, y)", "sin takes 1 arguments, got 2"),
    ("atan2(x)", "atan2 takes 2 arguments, got 1"),
    ("select(x, y)", "select takes 3 arguments, got 2"),
    ("min(x, y, z)", "min takes 2 arguments, got 3"),
    ("(x+1", "expected ')'"),
    ("sin(x", "expected ')'"),
    ("x+1)", "unexpected ')'"),
    ("((x)", "expected ')'"),
    ("x +", "got the end"),
    ("x * * y", "unexpected '*'"),
    ("x $ y", "unexpected '$'"),
    ("x y", "unexpected 'y'"),
    ("2*²", "unexpected '²'"),
    ("", "empty expression"),
    ("   ", "empty expression"),
    (" ; a = x", "empty expression"),
    ("a; a = ", "empty expression in the definition of 'a'"),
    ("a; a", "malformed definition 'a'"),
    ("x; 2a = 3", "malformed definition '2a = 3'"),
    ("x; a b = 3", "malformed definition"),
    ("x; a = y = 3", "unexpected '='"),
])
def test_malformed_expressions_raise_expression_error(text, message):
    with pytest.raises(ExpressionError, match=re.escape(message)):
        parse(text)


def test_expression_error_is_a_value_error_and_names_the_expression():
    with pytest.raises(ValueError, match=r"'1 \+ foo\(x\)'"):
        parse("1 + foo(x)")
    with pytest.raises(TypeError, match="string"):
        parse(None)


def test_unknown_variable_at_evaluation():
    node = parse("x + y*z")
    with pytest.raises(ExpressionError, match=r"no value for variable 'y'.*\['x', 'z'\]"):
        evaluate(node, {"x": torch.ones(2), "z": torch.ones(2)})
