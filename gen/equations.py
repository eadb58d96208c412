"""Quadratic equations: sampling distinct ones of each class, and writing them and their solutions.

Every equation is a * (x^2 - s x + p) with integers a, s, p, so b = -a s and c = a p:
- two real roots: s = r1 + r2, p = r1 r2 with integer roots r1 < r2 from the root range;
- one real root: s = 2r, p = r^2;
- no real root: s^2 < 4p, with s and p from the same ranges as the classes with roots
  (|s| <= twice the largest root, p <= the largest root squared), so that the size of b and c
  does not give the class away.
Each class is a finite set that we index, so `random.sample` draws distinct equations exactly,
with no rejection loop, and no equation can occur twice.
"""

from __future__ import annotations

import bisect
import random
import re
import sys
from dataclasses import dataclass
from math import isqrt

CLASSES = ("two", "one", "none")  # names of the classes, by number of real roots
NUM_ROOTS = {"two": 2, "one": 1, "none": 0}
FORMATS = ("published", "steps", "long", "reversed", "magnitudes", "published-reversed", "steps-reversed", "padded", "padded-d",
           "padded-d-plain", "padded-root", "root-r-first", "monic")
REVERSED_MARK = "~"  # first character of a solution whose numbers are written least significant digit first


@dataclass(frozen=True)
class Ranges:
    a_lo: int = -30
    a_hi: int = 30
    root_lo: int = -500
    root_hi: int = 500

    @property
    def leading(self) -> list[int]:
        return [a for a in range(self.a_lo, self.a_hi + 1) if a != 0]

    @property
    def n_roots(self) -> int:
        return self.root_hi - self.root_lo + 1


class NoRealRootIndex:
    """Enumerates the (s, p) with s^2 < 4p, 2*root_lo <= s <= 2*root_hi, p <= max root^2."""

    def __init__(self, ranges: Ranges):
        p_max = max(ranges.root_lo**2, ranges.root_hi**2)
        self.s_values, self.p_start, self.cumulative = [], [], [0]
        for s in range(2 * ranges.root_lo, 2 * ranges.root_hi + 1):
            p_min = s * s // 4 + 1  # smallest p with 4p > s^2
            if p_min <= p_max:
                self.s_values.append(s)
                self.p_start.append(p_min)
                self.cumulative.append(self.cumulative[-1] + p_max - p_min + 1)

    def __len__(self):
        return self.cumulative[-1]

    def __getitem__(self, i: int) -> tuple[int, int]:
        k = bisect.bisect_right(self.cumulative, i) - 1
        return self.s_values[k], self.p_start[k] + i - self.cumulative[k]


def capacity(ranges: Ranges) -> dict[str, int]:
    """How many distinct equations each class can hold."""
    n_a, n_r = len(ranges.leading), ranges.n_roots
    return {
        "two": n_a * n_r * (n_r - 1) // 2,
        "one": n_a * n_r,
        "none": n_a * len(NoRealRootIndex(ranges)),
    }


def _distinct_indices(population: int, k: int, rng: random.Random) -> list[int]:
    """k distinct integers of range(population) in random order. `random.sample` cannot take a
    range longer than sys.maxsize (wide ranges of roots make such classes), so past that we draw
    and reject repeats: k is then a vanishing share of the population."""
    if population <= sys.maxsize:
        return rng.sample(range(population), k)
    seen: dict[int, None] = {}
    while len(seen) < k:
        seen.setdefault(rng.randrange(population))
    return list(seen)


def sample_coefficients(ranges: Ranges, counts: dict[str, int], rng: random.Random) -> dict[str, list]:
    """Distinct (a, b, c) for each class, `counts[cls]` of them, in random order."""
    leading, n_r, lo = ranges.leading, ranges.n_roots, ranges.root_lo
    no_root = NoRealRootIndex(ranges)
    per_a = {"two": n_r * (n_r - 1) // 2, "one": n_r, "none": len(no_root)}
    out = {}
    for cls in CLASSES:
        rows = []
        for i in _distinct_indices(len(leading) * per_a[cls], counts[cls], rng):
            a, j = leading[i // per_a[cls]], i % per_a[cls]
            if cls == "two":  # j indexes the pairs u < v of root offsets, v-major
                v = (1 + isqrt(1 + 8 * j)) // 2
                if v * (v - 1) // 2 > j:
                    v -= 1
                u = j - v * (v - 1) // 2
                s, p = 2 * lo + u + v, (lo + u) * (lo + v)
            elif cls == "one":
                s, p = 2 * (lo + j), (lo + j) ** 2
            else:
                s, p = no_root[j]
            rows.append((a, -a * s, a * p))
        out[cls] = rows
    return out


def outside_generator(a: int, b: int, c: int, ranges: Ranges | None = None) -> str | None:
    """Why `sample_coefficients` never draws this equation (with `ranges`, from those ranges), or
    None: a model trained and tested on such data has never seen one like it."""
    if a == 0 or b % a or c % a:
        return "b and c are not multiples of a, as in every equation of the datasets, a(x^2 - s x + p) with whole s and p"
    s, p = -b // a, c // a
    disc = s * s - 4 * p
    root = isqrt(disc) if disc >= 0 else 0
    if disc > 0 and (root * root != disc or (s + root) % 2) or disc == 0 and s % 2:
        return "its roots are not whole numbers, as every real root in the datasets is"
    if ranges is None:
        return None
    where = f"the ranges it was drawn from (a in {ranges.a_lo}:{ranges.a_hi}, roots in {ranges.root_lo}:{ranges.root_hi})"
    if not ranges.a_lo <= a <= ranges.a_hi:
        return f"a = {a} is outside {where}"
    if disc >= 0 and not ranges.root_lo <= (s - root) // 2 <= (s + root) // 2 <= ranges.root_hi:
        return f"a root is outside {where}"
    if disc < 0 and not (2 * ranges.root_lo <= s <= 2 * ranges.root_hi and p <= max(ranges.root_lo**2, ranges.root_hi**2)):
        return (f"a(x^2 - s x + p) with s = {s}, p = {p} is outside {where}: an equation without real roots has s in "
                f"{2 * ranges.root_lo}:{2 * ranges.root_hi} and p at most {max(ranges.root_lo**2, ranges.root_hi**2)}")
    return None


def _lit(value: int) -> str:
    """A number substituted into a formula: negatives in parentheses, as written by hand."""
    return str(value) if value >= 0 else f"({value})"


def write_equation(a: int, b: int, c: int) -> str:
    """`7x^2+3556x+451612=0`: every term written, with its sign, zeros included."""
    return f"{a}x^2{b:+d}x{c:+d}=0"


# The `long` format: every operation on numbers of several digits is written as schoolbook steps,
# each a true equality that the grader checks. A step by a digit 0 is left out, because it would
# stay true with a wrong operand (3556*0=0), and so would the grader's verdict.


def _long_product(x: int, y: int) -> list[str]:
    """Steps of x*y (x, y >= 0), long multiplication: x times each non-zero digit of y, most
    significant first (`3556*5=17780`), each added to the running sum shifted by place value
    (`106680+17780=124460`). The product is the last sum followed by y's trailing zeros."""
    steps, total, shift = [], None, 0
    if x == 0:
        return steps
    for digit in map(int, str(y)):
        if total is not None:
            shift += 1
        if digit:
            part = x * digit
            steps.append(f"{x}*{digit}={part}")
            if total is None:
                total = part
            else:
                steps.append(f"{total}{'0' * shift}+{part}={total * 10**shift + part}")
                total = total * 10**shift + part
            shift = 0
    return steps


def _at_width(value: int, *operands: int) -> str:
    """`value` with as many digits as the widest operand, zeros in front (`0004` for 1234-1230):
    a column subtraction's result as written column by column, so that the model never has to
    decide where a number ends before it has found that the columns left are all 0."""
    width = max(len(str(abs(x))) for x in operands)
    return ("-" if value < 0 else "") + str(abs(value)).zfill(width)


def _plain(value: int, *operands: int) -> str:
    return str(value)


def _long_square_root(n: int, result=_plain, remainder_plain: bool = False, remainder_first: bool = False) -> list[str]:
    """Steps of the square root of a perfect square n > 0, digit by digit: n's digits in pairs from
    the left; the remainder so far followed by the next pair is R; the next digit d of the root is
    the largest with (20*P+d)*d <= R, P the root so far (`(20*35+5)*5=3525`; `3*3=9` for the first
    digit), and the new remainder is R minus that (`4000-3525=475`). `remainder_plain` writes the
    remainder's plain value after `result`'s (`4000-3525=0475=475`); `remainder_first` writes each
    trial and its remainder as one statement that starts from R (`4000-(20*35+5)*5=4000-3525=475`),
    so that d is chosen with R on the page."""
    digits = "0" * (len(str(n)) % 2) + str(n)
    steps, root, remainder = [], 0, 0
    for i in range(0, len(digits), 2):
        r = remainder * 100 + int(digits[i : i + 2])
        d = next(d for d in range(9, -1, -1) if (20 * root + d) * d <= r)
        t = (20 * root + d) * d
        if d:
            trial = f"{d}*{d}" if root == 0 else f"(20*{root}+{d})*{d}"
            difference = f"{r}-{t}={result(r - t, r, t)}" + (f"={r - t}" if remainder_plain else "")
            steps += [f"{r}-{trial}={difference}"] if remainder_first else [f"{trial}={t}", difference]
        root, remainder = 10 * root + d, r - t
    return steps


def _long_division(n: int, m: int, result=_plain) -> list[str]:
    """Steps of n/m (n >= 0 a multiple of m > 0), long division: n's digits brought down one by one;
    each partial dividend r with a quotient digit q >= 1 gives `r-m*q=remainder` (`75-14*5=5`)."""
    steps, remainder = [], 0
    for digit in str(n):
        r = remainder * 10 + int(digit)
        q = r // m
        if q:
            steps.append(f"{r}-{m}*{q}={result(r - m * q, r, m, q)}")
        remainder = r - m * q
    return steps


_DIGIT_RUNS = re.compile(r"([0-9]+)")


def reverse_digits(text: str) -> str:
    """Every run of digits in `text` written backwards (`3556*5=17780` <-> `6553*5=08771`)."""
    parts = _DIGIT_RUNS.split(text)  # the runs of digits at the odd places; no call per run, as re.sub makes
    parts[1::2] = [run[::-1] for run in parts[1::2]]
    return "".join(parts)


def _magnitude_step(x: int, y: int) -> list[str]:
    """The signed sum x + y worked on magnitudes: `|x|+|y|=|x+y|` when the signs agree, else the
    larger magnitude minus the smaller (`216-177=39`), so that the step is an addition or a
    subtraction of non-negative numbers with a non-negative result, whose sign the next statement
    writes. Nothing when an operand is 0 (the step would be a copy that stays true when wrong)."""
    if not x or not y:
        return []
    if (x > 0) == (y > 0):
        return [f"{abs(x)}+{abs(y)}={abs(x + y)}"]
    return [f"{max(abs(x), abs(y))}-{min(abs(x), abs(y))}={abs(x + y)}"]


def _long_solution(a: int, b: int, c: int, magnitudes: bool = False, padded: str = "") -> str:
    """The long format (README); with `magnitudes`, every signed addition (D, -b-S, -b+S) that has
    a negative operand or result is preceded by its `_magnitude_step`; `padded` "all" writes the
    result of every addition and subtraction `_at_width` of its operands, "D" only D's, "D-plain" D's
    followed by its plain value (`D=1234-1230=0004=4`), the number that the square root reads;
    "root-plain" as "D-plain", and the square root's remainders the same way; "r-first" as "D-plain",
    with each trial of the square root written from its partial remainder (`_long_square_root`)."""
    result = _at_width if padded == "all" else _plain
    result_d = _at_width if padded else _plain
    d_plain = padded in ("D-plain", "root-plain", "r-first")
    disc = b * b - 4 * a * c
    # 4*a and its product with c first, so that b^2 ends right before D: one long copy, not two
    work = [f"4*a={4 * a}"] + _long_product(abs(c), abs(4 * a)) + _long_product(abs(b), abs(b))
    if magnitudes and (4 * a * c > 0 > disc or 4 * a * c < 0):
        work += _magnitude_step(b * b, -4 * a * c)
    work.append(f"D={b * b}-{_lit(4 * a * c)}={result_d(disc, b * b, 4 * a * c)}" + (f"={disc}" if d_plain else ""))
    if disc < 0:
        return "".join(f"{step};" for step in work) + "x=none;"
    root, x1, x2 = _integer_roots(a, b, disc)
    if disc:
        work += _long_square_root(disc, _at_width if padded == "root-plain" else result, remainder_plain=padded == "root-plain",
                                  remainder_first=padded == "r-first")
    work += [f"sqrt(D)={root}", f"2*a={2 * a}"]
    for sign, n, x in (("-", -b - root, x1), ("+", -b + root, x2)):
        if magnitudes and (-b < 0 or n < 0):
            work += _magnitude_step(-b, n + b)
        work += [f"{-b}{sign}{root}={result(n, b, root)}", *_long_division(abs(n), abs(2 * a), result), f"x={n}/{_lit(2 * a)}={x}"]
    return "".join(f"{step};" for step in work) + f"x={x1};x={x2};"


def _monic_solution(a: int, b: int, c: int) -> str:
    """The monic format (README): the equation divided by a first, x^2+(b/a)x+c/a=0, then the long
    format's steps on p = b/a and q = c/a. Every equation of the dataset is a*(x^2-sx+p), so a
    divides b and c, and the numbers shrink: sqrt(D/a/a) = |r2-r1| has at most 4 digits where
    sqrt(D) has 5 (the 0.891 model's square roots failed in 34% of 5-digit roots: RESULTS.md)."""
    if b % a or c % a:
        raise ValueError("a does not divide b and c: the monic format needs x^2+(b/a)x+c/a with integers")
    p, q = b // a, c // a
    work = _long_division(abs(b), abs(a)) + [f"b/a={b}/{_lit(a)}={p}"]
    work += _long_division(abs(c), abs(a)) + [f"c/a={c}/{_lit(a)}={q}"]
    disc = p * p - 4 * q
    work += _long_product(abs(q), 4) + _long_product(abs(p), abs(p))
    work.append(f"D/a/a={p * p}-{_lit(4 * q)}={_at_width(disc, p * p, 4 * q)}")
    if disc < 0:
        return "".join(f"{step};" for step in work) + "x=none;"
    root = isqrt(disc)
    if root * root != disc or (p + root) % 2:
        raise ValueError("the roots are not integers")
    work += (_long_square_root(disc) if disc else []) + [f"sqrt(D/a/a)={root}"]
    roots = []
    for sign, n in (("-", -p - root), ("+", -p + root)):
        roots.append(n // 2)
        work += [f"{-p}{sign}{root}={n}", *_long_division(abs(n), 2), f"x={n}/2={n // 2}"]
    return "".join(f"{step};" for step in work) + f"x={roots[0]};x={roots[1]};"


def _integer_roots(a: int, b: int, disc: int) -> tuple[int, int, int]:
    """sqrt(D), x1 = (-b-sqrt(D))/(2a), x2 = (-b+sqrt(D))/(2a), refused unless all are integers."""
    root = isqrt(disc)
    if root * root != disc:
        raise ValueError(f"D={disc} is not a perfect square: the roots are not integers")
    if (-b - root) % (2 * a) or (-b + root) % (2 * a):
        raise ValueError("the roots are not integers")
    return root, (-b - root) // (2 * a), (-b + root) // (2 * a)


# the reversed formats that pad some results, and `_long_solution`'s name for what they pad
_PADDING = {"padded": "all", "padded-d": "D", "padded-d-plain": "D-plain", "padded-root": "root-plain", "root-r-first": "r-first"}


def write_solution(a: int, b: int, c: int, fmt: str = "published") -> str:
    """The worked solution in one of FORMATS (grammar in the README)."""
    if fmt in ("reversed", "magnitudes") or fmt in _PADDING:
        # the long format with every number least significant digit first, so that each digit of
        # a sum or a product by one digit follows from digits already written and a carry
        padded = _PADDING.get(fmt, "")
        return REVERSED_MARK + reverse_digits(_long_solution(a, b, c, magnitudes=fmt == "magnitudes", padded=padded))
    if fmt == "long":
        return _long_solution(a, b, c, magnitudes=False)
    if fmt == "monic":
        return REVERSED_MARK + reverse_digits(_monic_solution(a, b, c))
    if fmt in ("published-reversed", "steps-reversed"):
        # the same statements, numbers least significant digit first: each digit of a product or
        # of D's sum follows from the operands' digits already seen and one carry
        return REVERSED_MARK + reverse_digits(write_solution(a, b, c, fmt.removesuffix("-reversed")))
    disc = b * b - 4 * a * c
    la, lb = _lit(a), _lit(b)
    if fmt == "published":
        text = f"D=({lb}^2-4*{la}*{_lit(c)})={disc};"
    elif fmt == "steps":
        text = f"b^2={lb}^2={b * b};4*a*c=4*{la}*{_lit(c)}={4 * a * c};D=b^2-4*a*c={b * b}-{_lit(4 * a * c)}={disc};"
    else:
        raise ValueError(f"unknown format {fmt!r}")
    if disc < 0:
        return text + "x=none;"
    root, x1, x2 = _integer_roots(a, b, disc)
    if fmt == "published":
        text += f"x=(-{lb}-{root})/(2*{la})={x1};x=(-{lb}+{root})/(2*{la})={x2};"
    else:
        n1, n2 = -b - root, -b + root
        text += (
            f"sqrt(D)=sqrt({disc})={root};-b-sqrt(D)=-{lb}-{root}={n1};-b+sqrt(D)=-{lb}+{root}={n2};"
            f"2*a=2*{la}={2 * a};x={n1}/{_lit(2 * a)}={x1};x={n2}/{_lit(2 * a)}={x2};"
        )
    return text + f"x={x1};x={x2};"
