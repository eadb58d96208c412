"""The grader: judges a written solution of a quadratic equation, exactly, with sympy numbers.

Model outputs and user input are hostile, so nothing here hands a string to `eval`, `sympify` or
`parse_expr`. A small recursive-descent parser accepts only the grammar in the README (integers
in the ASCII digits 0-9, `+ - * / ^`, parentheses, `sqrt(...)`, the symbols `a b c D x` and the
word `none`), with limits on the length of the input, the digits of a number, the nesting depth,
the size of exponents and the size of every intermediate value. Every value is an exact rational
of sympy's QQ domain. A solution that starts with `~` (the reversed formats) writes
every number least significant digit first; it is read back into the usual order before anything
else.
"""

from __future__ import annotations

import re
from functools import lru_cache
from dataclasses import dataclass, field

from math import isqrt

from gen.equations import REVERSED_MARK, reverse_digits

from sympy.polys.densetools import dup_eval
from sympy.polys.domains import QQ

# Limits on hostile input. Generated solutions are far inside all of them.
MAX_EQUATION_CHARS = 200
MAX_SOLUTION_CHARS = 2000
MAX_DIGITS = 30  # digits in one written number
MAX_DEPTH = 40  # nesting of parentheses, sqrt and unary minus
MAX_EXPONENT = 64  # |n| in x^n
MAX_BITS = 2048  # bits in the numerator or denominator of any intermediate value

_Q = QQ.dtype  # sympy's exact rational type (gmpy2's mpq when gmpy2 is installed)
_TOKEN = re.compile(r"#|sqrt|[abcD]|[-+*/^()]|\s+|.")
_SHAPE_WORDS = frozenset(("#", "sqrt", "a", "b", "c", "D", "+", "-", "*", "/", "^", "(", ")"))
_NUMBER = re.compile(r"[0-9]+")  # not \d, which also matches other scripts' digits


class GradeError(ValueError):
    """Input that cannot be judged: malformed, too large, or not computable exactly."""


def _check_ascii(text: str) -> None:
    """The grammar is ASCII: a digit of another script (`١`, `１`) is not a number here."""
    if not text.isascii():
        position, char = next((i, ch) for i, ch in enumerate(text) if not ch.isascii())
        raise GradeError(f"non-ASCII character {char!r} (U+{ord(char):04X}) at position {position}; "
                         "write numbers with the digits 0-9")


# ---------------------------------------------------------------------------------------------
# Expressions. A side such as `(-3556-0)/(2*7)` is read as its shape `(-#-#)/(#*#)` and its
# numbers [3556, 0, 2, 7]. Few shapes occur, so each is parsed once (cached) into a tree of
# tuples: ("slot", k) for the k-th number | ("num", n) | ("sym", name) | ("neg", e) |
# ("sqrt", e) | (op, left, right) with op in + - * / ^, and compiled into a function.

_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2, "^": 4}


def _parse(tokens: list, pos: int, min_prec: int, depth: int, slots: list):
    """Precedence climbing over the grammar in the README: `+ -` < `* /` < unary minus < `^`
    (right-associative); atoms are numbers, a, b, c, D, `( expr )` and `sqrt( expr )`.
    Returns (node, next position)."""
    if depth > MAX_DEPTH:
        raise GradeError(f"expression nested deeper than {MAX_DEPTH} levels")
    tok = tokens[pos]
    pos += 1
    if tok == "#":
        node = ("slot", len(slots))
        slots.append(None)
    elif tok in ("a", "b", "c", "D"):
        node = ("sym", tok)
    elif tok == "-":
        operand, pos = _parse(tokens, pos, 4, depth + 1, slots)
        node = ("neg", operand)
    elif tok == "(" or tok == "sqrt":
        if tok == "sqrt":
            if tokens[pos] != "(":
                raise GradeError("sqrt must be followed by '('")
            pos += 1
        node, pos = _parse(tokens, pos, 0, depth + 1, slots)
        if tokens[pos] != ")":
            raise GradeError("missing ')'")
        pos += 1
        if tok == "sqrt":
            node = ("sqrt", node)
    else:
        raise GradeError("expression ends early" if tok is None else f"unexpected {tok!r}")
    while True:
        prec = _PRECEDENCE.get(tokens[pos], 0)
        if prec == 0 or prec < min_prec:
            return node, pos
        op = tokens[pos]
        right, pos = _parse(tokens, pos + 1, prec if op == "^" else prec + 1, depth + 1, slots)
        node = (op, node, right)


@lru_cache(maxsize=4096)
def _parse_shape(shape: str):
    """(tree, compiled function, whether it has symbols) of a shape; raises GradeError on anything outside the grammar."""
    tokens = [t for t in _TOKEN.findall(shape) if not t.isspace()]
    for tok in tokens:
        if tok not in _SHAPE_WORDS:
            raise GradeError(f"unexpected character {tok[0]!r}")
    tokens.append(None)
    node, pos = _parse(tokens, 0, 0, 0, [])
    if tokens[pos] is not None:
        raise GradeError(f"unexpected {tokens[pos]!r}")
    return node, _compile(node), any(t in ("a", "b", "c", "D") for t in tokens)


class Expr:
    """A parsed side: its shape's tree and function, and its numbers as exact rationals."""

    __slots__ = ("tree", "function", "numbers", "has_symbols", "_template")

    def __init__(self, text: str):
        numbers = _NUMBER.findall(text)
        for n in numbers:
            if len(n) > MAX_DIGITS:
                raise GradeError(f"a number has more than {MAX_DIGITS} digits")
            if n[0] == "0" and len(n) > 1:
                raise GradeError(f"a number has a leading zero: {n}")
        self.tree, self.function, self.has_symbols = _parse_shape(_NUMBER.sub("#", text))
        self.numbers = [_Q(int(n)) for n in numbers]
        self._template = None

    @property
    def template(self):
        """The tree with the numbers in place of the slots, to compare a substitution against."""
        if self._template is None:

            def fill(node):
                if node[0] == "slot":
                    return ("num", int(self.numbers[node[1]]))
                return (node[0],) + tuple(fill(child) if type(child) is tuple else child for child in node[1:])

            self._template = fill(self.tree)
        return self._template

    def value(self, env: dict):
        """The exact value; `env` binds the symbols a, b, c, D."""
        return self.function(self.numbers, env)


def _checked(value):
    if value.numerator.bit_length() > MAX_BITS or value.denominator.bit_length() > MAX_BITS:
        raise GradeError(f"an intermediate value exceeds {MAX_BITS} bits")
    return value


def _sqrt_exact(value):
    if value < 0:
        raise GradeError("sqrt of a negative number")
    p, q = isqrt(value.numerator), isqrt(value.denominator)
    if p * p != value.numerator or q * q != value.denominator:
        raise GradeError(f"sqrt({value}) is irrational; the grader works with exact rationals")
    return _Q(p, q)


def _divide(left, right):
    if right == 0:
        raise GradeError("division by zero")
    return _checked(left / right)


def _power(base, exponent):
    if exponent.denominator != 1 or abs(exponent.numerator) > MAX_EXPONENT:
        raise GradeError(f"exponent must be an integer of at most {MAX_EXPONENT}")
    n = int(exponent.numerator)
    if base == 0 and n < 0:
        raise GradeError("division by zero")
    if max(base.numerator.bit_length(), base.denominator.bit_length()) * abs(n) > MAX_BITS:
        raise GradeError(f"an intermediate value exceeds {MAX_BITS} bits")  # checked before computing
    return base**n


def _compile(node):
    """A function (numbers, env) -> exact value for a tree; built from our own tree, never from
    a string, so nothing the user wrote is ever executed."""
    kind = node[0]
    if kind == "slot":
        k = node[1]
        return lambda nums, env: nums[k]
    if kind == "num":
        constant = _Q(node[1])
        return lambda nums, env: constant
    if kind == "sym":
        name = node[1]
        return lambda nums, env: env[name]
    if kind == "neg":
        f = _compile(node[1])
        return lambda nums, env: -f(nums, env)
    if kind == "sqrt":
        f = _compile(node[1])
        return lambda nums, env: _sqrt_exact(f(nums, env))
    f, g = _compile(node[1]), _compile(node[2])
    if kind == "+":
        return lambda nums, env: _checked(f(nums, env) + g(nums, env))
    if kind == "-":
        return lambda nums, env: _checked(f(nums, env) - g(nums, env))
    if kind == "*":
        return lambda nums, env: _checked(f(nums, env) * g(nums, env))
    if kind == "/":
        return lambda nums, env: _divide(f(nums, env), g(nums, env))
    return lambda nums, env: _power(f(nums, env), g(nums, env))


@lru_cache(maxsize=1 << 16)  # short sides such as `-254` or `D` recur across rows; never mutated
def parse_expression(text: str) -> Expr:
    return Expr(text)


# ---------------------------------------------------------------------------------------------
# Substitution check: a numeric side must be the formula on its left with the equation's
# coefficients written in (any sub-formula may be replaced by its value). This catches a wrong
# coefficient that leaves the value unchanged, such as `4*8*0` for `4*a*c` with c = 0.


_D, _MONIC_D = Expr("D").template, Expr("D/a/a").template  # the monic format's: x^2+(b/a)x+c/a
# by the side they follow, numbers included (a formula's constants are written too)
_DEFINITIONS = {_D: [Expr("b^2-4*a*c").template], _MONIC_D: [Expr("(b/a)^2-4*(c/a)").template]}
# the root formulas, by the discriminant that the solution wrote last (D when none)
_ROOT_FORMULAS = {
    _D: [Expr(f"(-b{sign}sqrt(D))/(2*a)").template for sign in "-+"],
    _MONIC_D: [Expr(f"(-b/a{sign}sqrt(D/a/a))/2").template for sign in "-+"],
}


@lru_cache(maxsize=4096)
def _match_plan(template, written):
    """How a written shape can be the template written out: a list of (slot, negated, function
    of the template's sub-formula) whose values must agree, or None if the shapes differ."""
    kind = written[0]
    if kind == "slot" or (kind == "neg" and written[1][0] == "slot"):  # a value written in
        return [(written[1] if kind == "slot" else written[1][1], kind == "neg", _compile(template))]
    if template[0] != kind or kind in ("num", "sym"):
        return [] if template == written else None
    plan = []
    for t, w in zip(template[1:], written[1:]):
        part = _match_plan(t, w)
        if part is None:
            return None
        plan += part
    return plan


def _substitutes(template, written: Expr, env: dict) -> bool:
    plan = _match_plan(template, written.tree)
    if plan is None:
        return False
    for slot, negated, function in plan:
        try:
            expected = function(None, env)
        except GradeError:
            return False
        if (-written.numbers[slot] if negated else written.numbers[slot]) != expected:
            return False
    return True


# ---------------------------------------------------------------------------------------------
# Equations


_CANONICAL_EQUATION = re.compile(r"(-?[1-9][0-9]{0,%d})x\^2([+-][0-9]{1,%d})x([+-][0-9]{1,%d})=0" % ((MAX_DIGITS - 1,) + (MAX_DIGITS,) * 2))
_EQUATION_EXAMPLE = "2x^2-5*x+6=0"  # for the errors: every form of term that parse_equation reads
_EQ_TERM = re.compile(r"([+-]?)([0-9]*)((?:(?<=[0-9])\*)?x(?:\^([0-9]+))?)?")


def _parse_side(side: str) -> list[int]:
    coeffs, pos = [0, 0, 0], 0
    if not side:
        raise GradeError(f"an equation side is empty; write both, as in {_EQUATION_EXAMPLE}")
    while pos < len(side):
        m = _EQ_TERM.match(side, pos)
        sign, digits, has_x, power = m.groups()
        if m.end() == pos or (not digits and not has_x) or (pos > 0 and not sign):
            raise GradeError(f"no term at {side[pos:pos + 10]!r}: write terms in x with integer coefficients, "
                             f"powers with ^, as in {_EQUATION_EXAMPLE}")
        if len(digits) > MAX_DIGITS or len(power or "") > 2:
            raise GradeError("a number in the equation is too long")
        degree = (int(power) if power else 1) if has_x else 0
        if degree > 2:
            raise GradeError(f"x^{degree} makes this not a quadratic")
        value = int(digits) if digits else 1
        coeffs[2 - degree] += -value if sign == "-" else value
        pos = m.end()
    return coeffs


def parse_equation(text: str) -> tuple[int, int, int]:
    """(a, b, c) of `a x^2 + b x + c = 0`, read leniently: `x^2-5x+6=0`, `2*x^2 = 8`, ..."""
    if len(text) > MAX_EQUATION_CHARS:
        raise GradeError(f"equation longer than {MAX_EQUATION_CHARS} characters")
    _check_ascii(text)
    canonical = _CANONICAL_EQUATION.fullmatch(text)  # the dataset's own form, read fast
    if canonical:
        return int(canonical.group(1)), int(canonical.group(2)), int(canonical.group(3))
    compact = "".join(text.split())
    if compact.count("=") != 1:
        raise GradeError(f"an equation needs exactly one '=', as in {_EQUATION_EXAMPLE}")
    left, right = compact.split("=")
    a, b, c = (l - r for l, r in zip(_parse_side(left), _parse_side(right)))
    if a == 0:
        raise GradeError("not a quadratic: the x^2 coefficient is 0")
    return a, b, c


def real_root_count(a: int, b: int, c: int) -> int:
    """The class of an equation by the sign of its discriminant b^2 - 4ac: 2, 1 or 0 real roots."""
    disc = _Q(b) ** 2 - 4 * _Q(a) * _Q(c)
    return 2 if disc > 0 else 1 if disc == 0 else 0


def is_root(a: int, b: int, c: int, value) -> bool:
    """Exact substitution of `value` (a QQ rational) into the polynomial, by sympy's Horner."""
    return dup_eval([_Q(a), _Q(b), _Q(c)], value, QQ) == 0


# ---------------------------------------------------------------------------------------------
# Solutions


@dataclass
class Verdict:
    num_roots: int  # the true number of real roots
    well_formed: bool = False
    steps_valid: bool = False
    substitutions_valid: bool = False
    answer_correct: bool = False
    stated_answer: object = None  # list of root strings, "none", or None when unreadable
    errors: list = field(default_factory=list)
    false_statements: list = field(default_factory=list)  # numbers (from 1) of the statements that are not true equalities

    @property
    def ok(self) -> bool:
        return self.well_formed and self.steps_valid and self.substitutions_valid and self.answer_correct

    def as_dict(self) -> dict:
        return {
            "ok": self.ok,
            "well_formed": self.well_formed,
            "steps_valid": self.steps_valid,
            "substitutions_valid": self.substitutions_valid,
            "answer_correct": self.answer_correct,
            "stated_answer": self.stated_answer,
            "num_real_roots": self.num_roots,
            "errors": self.errors,
            "false_statements": self.false_statements,
        }


_PADDED = re.compile(r"\s*(-?)0([0-9]+)\s*")  # a number written with zeros in front


def _unpadded(texts: list[str]) -> list[str]:
    """The sides of a statement with a sum's result written at its operands' width (the `padded`
    format's `D=1234-1230=0004`: as many digits as the widest number of the side before it, when
    that side is a sum or difference) read as its plain number. Every other leading zero stays
    as written, for the parser to refuse."""
    texts = list(texts)
    for i in range(1, len(texts)):
        padded = _PADDED.fullmatch(texts[i])
        if not padded:
            continue
        try:
            previous = parse_expression(texts[i - 1])
        except GradeError:
            continue
        widest = max(map(len, _NUMBER.findall(texts[i - 1])), default=0)
        if previous.tree[0] in ("+", "-") and len(padded[0].strip().lstrip("-")) == widest:
            texts[i] = padded[1] + (padded[2].lstrip("0") or "0")
    return texts


def _parse_solution(solution: str) -> list:
    """Statements as (is_x, sides): `is_x` when the statement starts `x=`; `sides` lists the
    parsed expressions with a flag for those that contain symbols, or is None for `x=none`."""
    if len(solution) > MAX_SOLUTION_CHARS:
        raise GradeError(f"solution longer than {MAX_SOLUTION_CHARS} characters")
    _check_ascii(solution)
    text = solution.strip()
    if text.startswith(REVERSED_MARK):  # the reversed format: read every number back in the usual order
        text = reverse_digits(text[1:])
    if not text.endswith(";"):
        raise GradeError("it does not end with ';' (every statement ends with ';', the last one too)")
    statements = []
    for number, raw in enumerate(text[:-1].split(";"), 1):
        texts = raw.split("=")
        if len(texts) < 2:
            raise GradeError(f"statement {number} has no '='")
        is_x = texts[0].strip() == "x"
        if is_x:
            texts = texts[1:]
            if len(texts) == 1 and texts[0].strip() == "none":
                statements.append((True, None))
                continue
        try:
            sides = [parse_expression(t) for t in _unpadded(texts)]
        except GradeError as err:
            raise GradeError(f"statement {number}: {err}") from None
        statements.append((is_x, sides))
    return statements


def grade(a: int, b: int, c: int, solution: str) -> Verdict:
    """Judge `solution` for `a x^2 + b x + c = 0`. Never raises on hostile input."""
    verdict = Verdict(num_roots=real_root_count(a, b, c))
    try:
        statements = _parse_solution(solution)
    except GradeError as err:
        verdict.errors.append(f"malformed: {err}")
        return verdict

    # The answer is the trailing run of `x=VALUE;` statements, or a final `x=none;`.
    answer_start = len(statements)
    while answer_start > 0 and statements[answer_start - 1][0] and (
        statements[answer_start - 1][1] is None or len(statements[answer_start - 1][1]) == 1
    ):
        answer_start -= 1
    answer = statements[answer_start:]
    says_none = [sides is None for _, sides in statements]
    if not answer:
        verdict.errors.append("malformed: no final answer (x=VALUE; or x=none;)")
        return verdict
    if any(says_none) and (len(answer) != 1 or not says_none[-1]):
        verdict.errors.append("malformed: x=none must be the only answer and come last")
        return verdict
    verdict.well_formed = True

    env = {"a": _Q(a), "b": _Q(b), "c": _Q(c), "D": _Q(b * b - 4 * a * c)}
    root_memo = {}

    def root(value) -> bool:
        known = root_memo.get(value)
        if known is None:
            known = root_memo[value] = is_root(a, b, c, value)
        return known

    steps_valid, substitutions_valid, stated = True, True, []
    root_formulas = _ROOT_FORMULAS[_D]
    for number, (is_x, sides) in enumerate(statements, 1):
        in_answer = number > answer_start
        if sides is None:
            if verdict.num_roots != 0:
                steps_valid = False
                verdict.errors.append(f"statement {number}: x=none, but the equation has real roots")
                verdict.false_statements.append(number)
            continue
        try:
            values = [side.function(side.numbers, env) for side in sides]
        except GradeError as err:
            steps_valid = False
            verdict.errors.append(f"statement {number}: {err}")
            verdict.false_statements.append(number)
            continue
        false = []
        if values.count(values[0]) != len(values):
            false.append(f"statement {number}: the sides are not equal")
        if is_x and not root(values[-1]):
            false.append(f"statement {number}: x={values[-1]} is not a root")
        if false:
            steps_valid = False
            verdict.errors += false
            verdict.false_statements.append(number)
        if is_x:
            if in_answer:
                stated.append(values[-1])
                continue
        # Substitution: a side that writes out `x` or `D` must be its definition, and the first
        # numeric side must be the formula before it with this equation's numbers written in.
        previous = "x" if is_x else None
        for side in sides:
            if previous == "x":
                templates = root_formulas
            elif previous is None:
                templates = ()
            elif previous.template in _DEFINITIONS:
                templates = _DEFINITIONS[previous.template]
                root_formulas = _ROOT_FORMULAS[previous.template]
            else:
                templates = () if side.has_symbols else (previous.template,)
            if templates and not any(_substitutes(t, side, env) for t in templates):
                substitutions_valid = False
                verdict.errors.append(f"statement {number}: a side is not its formula with this equation's coefficients")
                break
            if not side.has_symbols:
                break
            previous = side

    if says_none[-1]:
        verdict.stated_answer = "none"
        verdict.answer_correct = verdict.num_roots == 0
    else:
        verdict.stated_answer = [str(v) for v in stated]
        distinct = set(stated)
        verdict.answer_correct = len(distinct) == verdict.num_roots and all(root(v) for v in distinct)
    if not verdict.answer_correct:
        verdict.errors.append("the final answer is not the set of real roots")
    verdict.steps_valid, verdict.substitutions_valid = steps_valid, substitutions_valid
    return verdict


def true_roots(a: int, b: int, c: int) -> list[str]:
    """The real roots as exact strings (for reports), in increasing order."""
    from sympy import Integer, sqrt

    count = real_root_count(a, b, c)
    if count == 0:
        return []
    disc = Integer(b) ** 2 - 4 * Integer(a) * Integer(c)
    roots = {(-Integer(b) - sqrt(disc)) / (2 * Integer(a)), (-Integer(b) + sqrt(disc)) / (2 * Integer(a))}
    return [str(r).replace("**", "^") for r in sorted(roots, key=lambda r: float(r))]
