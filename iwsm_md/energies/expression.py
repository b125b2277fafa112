"""OpenMM's custom-force expression language: parsing, symbolic derivatives, torch evaluation.

Grammar and semantics follow OpenMM's Lepton parser: `+ - * / ^`, unary minus binding looser
than `^` (`-x^2 == -(x^2)`), `^` right-associative, the functions listed in `FUNCTIONS`, and
sub-expression definitions after semicolons (`"a*b; a=r^2; b=2"`, each definition visible to
the ones before it). Expressions are immutable trees of `Const`, `Var` and `Op` nodes with
structural equality, so repeated sub-trees are evaluated once per call.
"""
from __future__ import annotations

import math
import re
from typing import Callable, Mapping

import torch
from torch import Tensor


class ExpressionError(ValueError):
    """An expression that cannot be parsed, differentiated or evaluated."""


class Node:
    """An immutable expression node with a cached structural hash."""

    __slots__ = ("_key", "_hash")

    def __init__(self, key: tuple):
        self._key = key
        self._hash = hash(key)

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other) -> bool:
        return isinstance(other, Node) and self._hash == other._hash and self._key == other._key


class Const(Node):
    __slots__ = ("value",)

    def __init__(self, value: float):
        self.value = float(value)
        super().__init__(("const", self.value))

    def __repr__(self) -> str:
        return repr(self.value)


class Var(Node):
    __slots__ = ("name",)

    def __init__(self, name: str):
        self.name = name
        super().__init__(("var", name))

    def __repr__(self) -> str:
        return self.name


class Op(Node):
    __slots__ = ("name", "args")

    def __init__(self, name: str, args: tuple[Node, ...]):
        self.name = name
        self.args = tuple(args)
        super().__init__(("op", name, self.args))

    def __repr__(self) -> str:
        return f"{self.name}({', '.join(map(repr, self.args))})"


def _where(cond: Tensor, a, b) -> Tensor:
    return torch.where(cond, a, b)


def _as_tensor(v, like: Tensor) -> Tensor:
    return v if isinstance(v, Tensor) else torch.as_tensor(v, dtype=like.dtype, device=like.device)


def _first_tensor(args) -> Tensor:
    for a in args:
        if isinstance(a, Tensor):
            return a
    return torch.tensor(0.0, dtype=torch.float64)


def _binary_tensor(fn: Callable) -> Callable:
    def apply(a, b):
        like = _first_tensor((a, b))
        return fn(_as_tensor(a, like), _as_tensor(b, like))

    return apply


# name -> (number of arguments, torch implementation on tensors or floats)
FUNCTIONS: dict[str, tuple[int, Callable]] = {
    "add": (2, lambda a, b: a + b),
    "sub": (2, lambda a, b: a - b),
    "mul": (2, lambda a, b: a * b),
    "div": (2, lambda a, b: a / b),
    "pow": (2, _binary_tensor(torch.pow)),
    "neg": (1, lambda a: -a),
    "sqrt": (1, torch.sqrt),
    "exp": (1, torch.exp),
    "log": (1, torch.log),
    "sin": (1, torch.sin),
    "cos": (1, torch.cos),
    "sec": (1, lambda a: 1.0 / torch.cos(a)),
    "csc": (1, lambda a: 1.0 / torch.sin(a)),
    "tan": (1, torch.tan),
    "cot": (1, lambda a: 1.0 / torch.tan(a)),
    "asin": (1, torch.asin),
    "acos": (1, torch.acos),
    "atan": (1, torch.atan),
    "atan2": (2, _binary_tensor(torch.atan2)),
    "sinh": (1, torch.sinh),
    "cosh": (1, torch.cosh),
    "tanh": (1, torch.tanh),
    "erf": (1, torch.erf),
    "erfc": (1, torch.erfc),
    "step": (1, lambda a: (a >= 0).to(a.dtype)),
    "delta": (1, lambda a: (a == 0).to(a.dtype)),
    "square": (1, lambda a: a * a),
    "cube": (1, lambda a: a * a * a),
    "recip": (1, lambda a: 1.0 / a),
    "min": (2, _binary_tensor(torch.minimum)),
    "max": (2, _binary_tensor(torch.maximum)),
    "abs": (1, torch.abs),
    "floor": (1, torch.floor),
    "ceil": (1, torch.ceil),
    "select": (3, lambda c, a, b: _where(_as_tensor(c, _first_tensor((c, a, b))) != 0,
                                         _as_tensor(a, _first_tensor((c, a, b))),
                                         _as_tensor(b, _first_tensor((c, a, b))))),
}

# Geometric functions of point or group names (CustomCompoundBondForce, CustomCentroidBondForce).
# The parser keeps them as Op nodes; `geometry_calls` lists them so a term can compute them.
GEOMETRY_FUNCTIONS = {"distance": 2, "angle": 3, "dihedral": 4}


# ----------------------------------------------------------------------------- construction
def _fold(name: str, args: tuple[Node, ...]) -> Node | None:
    if all(isinstance(a, Const) for a in args):
        values = [torch.tensor(a.value, dtype=torch.float64) for a in args]
        return Const(float(FUNCTIONS[name][1](*values)))
    return None


def _scaled(node: Node) -> bool:
    """A constant, or a constant times something: absorbs a constant factor for free."""
    return isinstance(node, Const) or (isinstance(node, Op) and node.name == "mul" and isinstance(node.args[0], Const))


def op(name: str, *args: Node) -> Node:
    """Build an operation node, folding constants and trivial identities (x+0, x*1, x^1)."""
    if name in GEOMETRY_FUNCTIONS:
        return Op(name, args)
    folded = _fold(name, args)
    if folded is not None:
        return folded
    a = args[0]
    b = args[1] if len(args) > 1 else None
    zero, one = Const(0.0), Const(1.0)
    if name == "add":
        if a == zero:
            return b
        if b == zero:
            return a
    elif name == "sub":
        if b == zero:
            return a
        if a == zero:
            return op("neg", b)
    elif name == "mul":
        if isinstance(b, Const):  # constants first, then merged: c1*(c2*x) -> (c1*c2)*x
            a, b = b, a
        if a == zero:
            return zero
        if a == one:
            return b
        if isinstance(a, Const) and isinstance(b, Op):
            if b.name == "mul" and isinstance(b.args[0], Const):
                return op("mul", Const(a.value * b.args[0].value), b.args[1])
            if b.name == "neg":
                return op("mul", Const(-a.value), b.args[0])
            if b.name in ("add", "sub") and all(_scaled(arg) for arg in b.args):
                # c*(c1*x ± c2*y) -> (c*c1)*x ± (c*c2)*y: one multiplication fewer
                return op(b.name, op("mul", a, b.args[0]), op("mul", a, b.args[1]))
        if isinstance(a, Op) and a.name == "neg":
            return op("neg", op("mul", a.args[0], b))
        for x, y in ((a, b), (b, a)):  # pull constants out: (c*x)*y -> c*(x*y)
            if isinstance(x, Op) and x.name == "mul" and isinstance(x.args[0], Const):
                return op("mul", x.args[0], op("mul", x.args[1], y))
        if isinstance(b, Op) and b.name == "neg":
            return op("neg", op("mul", a, b.args[0]))
        if a == b:
            return op("pow", a, Const(2.0))
        args = (a, b)  # the constant first
    elif name == "div":
        if a == zero:
            return zero
        if b == one:
            return a
        if isinstance(a, Const) and a.value != 1.0:  # c/x -> c*(1/x)
            return op("mul", a, op("div", one, b))
        if isinstance(b, Const) and b.value != 0.0:  # x/0 stays a division (inf or nan, as in OpenMM)
            return op("mul", Const(1.0 / b.value), a)
        if a == one and isinstance(b, Op) and b.name == "pow" and isinstance(b.args[1], Const):
            return op("pow", b.args[0], Const(-b.args[1].value))
    elif name == "pow":
        if b == one:
            return a
        if b == zero:
            return one
        if isinstance(b, Const) and isinstance(a, Op):
            if a.name == "sqrt" and b.value % 2 == 0:  # sqrt(u)^(2k) -> u^k
                return op("pow", a.args[0], Const(b.value / 2))
            if a.name == "div" and a.args[0] == one:  # (1/u)^k -> u^-k
                return op("pow", a.args[1], Const(-b.value))
            if a.name == "recip":
                return op("pow", a.args[0], Const(-b.value))
            if a.name == "pow" and isinstance(a.args[1], Const) and b.value.is_integer():  # (u^j)^k -> u^(jk)
                return op("pow", a.args[0], Const(a.args[1].value * b.value))
    elif name == "neg" and isinstance(a, Op) and a.name == "neg":
        return a.args[0]
    return Op(name, args)


# ----------------------------------------------------------------------------- parsing
_NUMBER = r"\d+\.?\d*(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?"
_NAME = r"[A-Za-z_][A-Za-z0-9_]*"
_TOKEN = re.compile(rf"\s*(?:({_NUMBER})|({_NAME})|(.))", re.ASCII)


def _tokenize(text: str) -> list[str]:
    tokens, pos = [], 0
    text = text.strip()
    while pos < len(text):
        m = _TOKEN.match(text, pos)
        if m is None:
            break
        tokens.append(m.group(0).strip())
        pos = m.end()
    return [t for t in tokens if t]


class _Parser:
    def __init__(self, text: str, where: str | None = None):
        self.text = text
        self.where = where or repr(text)  # for error messages
        self.tokens = _tokenize(text)
        self.i = 0

    def peek(self) -> str | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            want = f"'{expected}'" if expected else "more input"
            got = "the end" if tok is None else repr(tok)
            raise ExpressionError(f"expected {want} at token {self.i} of {self.where}, got {got}")
        self.i += 1
        return tok

    def parse(self) -> Node:
        if not self.tokens:
            raise ExpressionError(f"empty expression in {self.where}")
        node = self.expr()
        if self.peek() is not None:
            raise ExpressionError(f"unexpected {self.peek()!r} in {self.where}")
        return node

    def expr(self) -> Node:
        node = self.term()
        while self.peek() in ("+", "-"):
            node = op("add" if self.take() == "+" else "sub", node, self.term())
        return node

    def term(self) -> Node:
        node = self.unary()
        while self.peek() in ("*", "/"):
            node = op("mul" if self.take() == "*" else "div", node, self.unary())
        return node

    def unary(self) -> Node:
        if self.peek() == "-":
            self.take()
            return op("neg", self.unary())
        return self.power()

    def power(self) -> Node:
        base = self.atom()
        if self.peek() == "^":
            self.take()
            return op("pow", base, self.unary())
        return base

    def atom(self) -> Node:
        tok = self.take()
        if tok == "(":
            node = self.expr()
            self.take(")")
            return node
        if re.fullmatch(_NUMBER, tok, re.ASCII):
            return Const(float(tok))
        if re.fullmatch(_NAME, tok, re.ASCII):
            if self.peek() == "(":
                return self.call(tok)
            return Var(tok)
        raise ExpressionError(f"unexpected {tok!r} in {self.where}")

    def call(self, name: str) -> Node:
        self.take("(")
        args = [self.expr()]
        while self.peek() == ",":
            self.take()
            args.append(self.expr())
        self.take(")")
        arity = GEOMETRY_FUNCTIONS.get(name, FUNCTIONS.get(name, (None,))[0] if name in FUNCTIONS else None)
        if arity is None or name in ("add", "sub", "mul", "div", "pow", "neg"):
            raise ExpressionError(f"unknown function {name!r} in {self.where}")
        if len(args) != arity:
            raise ExpressionError(f"{name} takes {arity} arguments, got {len(args)} in {self.where}")
        return op(name, *args)


def substitute(node: Node, values: Mapping[str, Node]) -> Node:
    """Replace variables by expressions (or constants), re-folding constants on the way up."""
    memo: dict[Node, Node] = {}

    def visit(n: Node) -> Node:
        if n in memo:
            return memo[n]
        if isinstance(n, Var):
            out = values.get(n.name, n)
        elif isinstance(n, Op):
            out = op(n.name, *(visit(a) for a in n.args))
        else:
            out = n
        memo[n] = out
        return out

    return visit(node)


def parse(expression: str) -> Node:
    """Parse an OpenMM energy expression, with `;`-separated definitions, into a tree."""
    if not isinstance(expression, str):
        raise TypeError(f"an expression must be a string, got {type(expression).__name__}")
    primary, *parts = expression.split(";")
    if not primary.strip():
        raise ExpressionError(f"empty expression in {expression!r}" if parts else "empty expression")
    definitions: dict[str, Node] = {}
    for part in reversed([p.strip() for p in parts if p.strip()]):
        name, sep, body = part.partition("=")
        name = name.strip()
        if not sep or not re.fullmatch(_NAME, name, re.ASCII):
            raise ExpressionError(f"malformed definition {part!r} in {expression!r}: expected 'name = expression'")
        where = f"the definition of {name!r} in {expression!r}"
        definitions[name] = substitute(_Parser(body, where).parse(), definitions)
    return substitute(_Parser(primary, repr(expression)).parse(), definitions)


def variables(node: Node) -> set[str]:
    """Names of the free variables of an expression (arguments of geometry calls included)."""
    out: set[str] = set()
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Var):
            out.add(n.name)
        elif isinstance(n, Op):
            stack.extend(n.args)
    return out


def geometry_calls(node: Node) -> list[Op]:
    """The distinct `distance(...)`, `angle(...)`, `dihedral(...)` calls in an expression."""
    seen: dict[Node, None] = {}
    stack = [node]
    while stack:
        n = stack.pop()
        if isinstance(n, Op):
            if n.name in GEOMETRY_FUNCTIONS:
                seen[n] = None
            else:
                stack.extend(n.args)
    return list(seen)


# ----------------------------------------------------------------------------- derivatives
def derivative(node: Node, var: str) -> Node:
    """Symbolic derivative d(node)/d(var); steps, deltas, floor and ceil have derivative 0."""
    memo: dict[Node, Node] = {}

    def d(n: Node) -> Node:
        if n in memo:
            return memo[n]
        memo[n] = out = _derivative(n, var, d)
        return out

    return d(node)


def _derivative(n: Node, var: str, d: Callable[[Node], Node]) -> Node:
    if isinstance(n, Const):
        return Const(0.0)
    if isinstance(n, Var):
        return Const(1.0 if n.name == var else 0.0)
    assert isinstance(n, Op)
    if n.name in GEOMETRY_FUNCTIONS:
        raise ExpressionError(f"no symbolic derivative of {n.name}()")
    a = n.args[0]
    da = d(a)
    if n.name == "pow":
        b = n.args[1]
        db = d(b)
        term = op("mul", op("mul", b, op("pow", a, op("sub", b, Const(1.0)))), da)
        if db == Const(0.0):
            return term
        return op("add", term, op("mul", op("mul", n, op("log", a)), db))
    if n.name in ("add", "sub", "mul", "div", "atan2", "min", "max"):
        b = n.args[1]
        db = d(b)
        if n.name == "add":
            return op("add", da, db)
        if n.name == "sub":
            return op("sub", da, db)
        if n.name == "mul":
            return op("add", op("mul", da, b), op("mul", a, db))
        if n.name == "div":
            return op("div", op("sub", op("mul", da, b), op("mul", a, db)), op("mul", b, b))
        if n.name == "atan2":  # atan2(y=a, x=b)
            return op("div", op("sub", op("mul", b, da), op("mul", a, db)),
                      op("add", op("mul", a, a), op("mul", b, b)))
        # at a tie, as in OpenMM: min takes the derivative of its second argument, max of its first
        if n.name == "min":
            return op("select", op("step", op("sub", a, b)), db, da)
        return op("select", op("step", op("sub", a, b)), da, db)  # max
    if n.name == "select":
        return op("select", a, d(n.args[1]), d(n.args[2]))
    if n.name in ("step", "delta", "floor", "ceil"):
        return Const(0.0)
    one = Const(1.0)
    inner = {
        "neg": lambda: Const(-1.0),
        "sqrt": lambda: op("div", Const(0.5), n),
        "exp": lambda: n,
        "log": lambda: op("recip", a),
        "sin": lambda: op("cos", a),
        "cos": lambda: op("neg", op("sin", a)),
        "sec": lambda: op("mul", n, op("tan", a)),
        "csc": lambda: op("neg", op("mul", n, op("cot", a))),
        "tan": lambda: op("add", one, op("square", n)),
        "cot": lambda: op("neg", op("add", one, op("square", n))),
        "asin": lambda: op("recip", op("sqrt", op("sub", one, op("square", a)))),
        "acos": lambda: op("neg", op("recip", op("sqrt", op("sub", one, op("square", a))))),
        "atan": lambda: op("recip", op("add", one, op("square", a))),
        "sinh": lambda: op("cosh", a),
        "cosh": lambda: op("sinh", a),
        "tanh": lambda: op("sub", one, op("square", n)),
        "erf": lambda: op("mul", Const(2.0 / math.sqrt(math.pi)), op("exp", op("neg", op("square", a)))),
        "erfc": lambda: op("mul", Const(-2.0 / math.sqrt(math.pi)), op("exp", op("neg", op("square", a)))),
        "square": lambda: op("mul", Const(2.0), a),
        "cube": lambda: op("mul", Const(3.0), op("square", a)),
        "recip": lambda: op("neg", op("recip", op("square", a))),
        "abs": lambda: op("select", op("step", a), one, Const(-1.0)),
    }
    if n.name not in inner:
        raise ExpressionError(f"no derivative rule for {n.name}")
    return op("mul", inner[n.name](), da)


# ----------------------------------------------------------------------------- evaluation
def evaluate(node: Node, env: Mapping[str | Node, Tensor | float], cache: dict | None = None) -> Tensor | float:
    """Evaluate a tree with torch; `env` maps variable names (and geometry calls) to values.

    Values broadcast against each other. `cache` (a dict) may be shared between several
    evaluations in one call, so sub-trees common to an energy and its derivative run once.
    Geometry calls are looked up in `env` by their node.
    """
    cache = {} if cache is None else cache
    like = next((v for v in env.values() if isinstance(v, Tensor) and v.is_floating_point()), None)
    dtype = torch.float64 if like is None else like.dtype

    def ev(n: Node):
        hit = cache.get(n)
        if hit is not None:
            return hit
        if isinstance(n, Const):
            out = n.value
        elif isinstance(n, Var):
            if n.name not in env:
                known = sorted(k for k in env if isinstance(k, str))
                raise ExpressionError(f"no value for variable {n.name!r} (values given for {known})")
            out = env[n.name]
            if not isinstance(out, Tensor):  # numbers become tensors: the functions are torch's
                out = torch.as_tensor(out, dtype=dtype, device=None if like is None else like.device)
        elif n.name in GEOMETRY_FUNCTIONS:
            if n not in env:
                raise ExpressionError(f"no value for {n!r}")
            out = env[n]
        elif n.name == "pow" and _small_integer(n.args[1]):
            out = _integer_power(n.args[0], int(n.args[1].value), ev, cache)
        else:
            args = [ev(a) for a in n.args]
            if not any(isinstance(a, Tensor) for a in args):  # constants only (a tree built unfolded)
                args = [torch.tensor(a, dtype=dtype) for a in args]
            out = FUNCTIONS[n.name][1](*args)
        cache[n] = out
        return out

    return ev(node)


def _small_integer(node: Node) -> bool:
    return isinstance(node, Const) and node.value.is_integer() and 0 < abs(node.value) <= 64


def _integer_power(base: Node, k: int, ev: Callable, cache: dict):
    """base^k by multiplication; powers of one base are shared through `cache` (x^12 and x^11
    of an energy and its derivative cost five multiplications in all, where pow costs ~25 each)."""
    if k < 0:  # u^-k = (1/u)^k: one division, then the table of powers of 1/u
        base, k = op("recip", base), -k
    a = ev(base)
    if not isinstance(a, Tensor):  # a constant base (a tree built unfolded)
        return torch.tensor(a, dtype=torch.float64) ** k
    table = cache.setdefault(("powers", base), {1: a})
    return _power_from(table, k)


def _power_from(table: dict, n: int) -> Tensor:
    """x^n from a table {k: x^k} holding at least x^1, adding what it computes."""
    if n not in table:
        odd = [k for k in table if k < n and (n - k) in table]
        if odd:  # one multiplication from two known powers
            table[n] = table[odd[0]] * table[n - odd[0]]
        else:
            half = _power_from(table, n // 2)
            table[n] = half * half if n % 2 == 0 else half * _power_from(table, n - n // 2)
    return table[n]
