"""Issue 12, item 2: the `long` format, every operation on numbers of several digits written as
schoolbook steps that the grader checks one by one."""

import json
import re

import pytest
from conftest import equations
from hypothesis import HealthCheck, given, settings

from gen import QuadlabError
from gen.dataset import GenOptions, build_splits, generate
from gen.equations import FORMATS, Ranges, reverse_digits, write_equation, write_solution
from gen.grader import grade, parse_equation
from train.metrics import diagnose, statement_names
from train.quadratic import solution_roles

SCHOOLBOOK = ("long", "reversed", "magnitudes", "padded", "padded-d", "padded-d-plain", "padded-root", "root-r-first", "monic")  # the formats of schoolbook steps
LONG_EXAMPLE = (  # -3x^2-15x+18=0, as in the README
    "4*a=-12;18*1=18;18*2=36;180+36=216;15*1=15;15*5=75;150+75=225;D=225-(-216)=441;"
    "2*2=4;4-4=0;(20*2+1)*1=41;41-41=0;sqrt(D)=21;2*a=-6;"
    "15-21=-6;6-6*1=0;x=-6/(-6)=1;15+21=36;36-6*6=0;x=36/(-6)=-6;x=1;x=-6;"
)
LONG_PUBLISHED = (  # 7x^2+3556x+451612=0, the published example
    "4*a=28;451612*2=903224;451612*8=3612896;9032240+3612896=12645136;"
    "3556*3=10668;3556*5=17780;106680+17780=124460;3556*5=17780;1244600+17780=1262380;3556*6=21336;12623800+21336=12645136;"
    "D=12645136-12645136=0;sqrt(D)=0;2*a=14;"
    "-3556-0=-3556;35-14*2=7;75-14*5=5;56-14*4=0;x=-3556/14=-254;"
    "-3556+0=-3556;35-14*2=7;75-14*5=5;56-14*4=0;x=-3556/14=-254;x=-254;x=-254;"
)


@pytest.mark.parametrize("abc, solution", [((-3, -15, 18), LONG_EXAMPLE), ((7, 3556, 451612), LONG_PUBLISHED)])
def test_long_format_of_the_documented_examples_is_graded_right(abc, solution):
    assert write_solution(*abc, "long") == solution
    verdict = grade(*parse_equation(write_equation(*abc)), solution)
    assert verdict.ok, verdict.errors


@pytest.mark.parametrize(
    "abc, solution",
    [
        ((5, 3, 7), "4*a=20;7*2=14;3*3=9;D=9-140=-131;x=none;"),  # 4a = 20: its trailing 0 ends the product 140
        ((1, 0, -4), "4*a=4;4*4=16;D=0-(-16)=16;4*4=16;16-16=0;sqrt(D)=4;2*a=2;0-4=-4;4-2*2=0;x=-4/2=-2;0+4=4;4-2*2=0;x=4/2=2;x=-2;x=2;"),
        # b = -3550: the digit 0 of b and the root's last digit 0 get no step; c = 0 and the root 0 get none
        ((10, -3550, 0), "4*a=40;3550*3=10650;3550*5=17750;106500+17750=124250;3550*5=17750;1242500+17750=1260250;"
                         "D=12602500-0=12602500;3*3=9;12-9=3;(20*3+5)*5=325;360-325=35;(20*35+5)*5=3525;3525-3525=0;"
                         "sqrt(D)=3550;2*a=20;3550-3550=0;x=0/20=0;3550+3550=7100;71-20*3=11;110-20*5=10;100-20*5=0;"
                         "x=7100/20=355;x=0;x=355;"),
    ],
)
def test_long_format_leaves_out_steps_by_zero(abc, solution):
    assert write_solution(*abc, "long") == solution
    assert grade(*abc, solution).ok


@pytest.mark.parametrize("fmt", SCHOOLBOOK)
@settings(max_examples=300, deadline=None)
@given(eq=equations())
def test_long_solutions_are_graded_right(fmt, eq):
    a, b, c, kind = eq
    verdict = grade(a, b, c, write_solution(a, b, c, fmt))
    assert verdict.ok, verdict.errors
    assert verdict.num_roots == kind


@pytest.mark.parametrize("fmt", SCHOOLBOOK)
@settings(max_examples=300, deadline=None)
@given(eq=equations(Ranges(a_lo=-5, a_hi=5, root_lo=-30, root_hi=30)))
def test_long_solutions_are_graded_right_on_small_ranges(fmt, eq):
    a, b, c, _ = eq
    assert grade(a, b, c, write_solution(a, b, c, fmt)).ok


def test_reversed_format_is_the_long_format_least_significant_digit_first():
    reversed_example = write_solution(-3, -15, 18, "reversed")
    assert reversed_example.startswith("~4*a=-21;81*1=81;81*2=63;081+63=612;51*1=51;51*5=57;051+57=522;D=522-(-612)=144;")
    assert reversed_example.endswith(";x=1;x=-6;")
    assert reversed_example == "~" + reverse_digits(LONG_EXAMPLE) and reverse_digits(reversed_example[1:]) == LONG_EXAMPLE
    published = write_solution(7, 3556, 451612, "reversed")
    assert "6553*5=08771;086601+08771=064421;" in published and published.endswith(";x=-452;x=-452;")
    assert grade(7, 3556, 451612, published).stated_answer == ["-254", "-254"]  # read back in the usual order
    # without the mark the numbers are read most significant digit first: `081` is malformed
    assert not grade(-3, -15, 18, reversed_example[1:]).well_formed
    # a reversed number may not end in 0 (that is a leading zero read back), as 0120 may not start with one
    trailing_zero = grade(-3, -15, 18, reversed_example.replace("4*a=-21;", "4*a=-210;"))
    assert not trailing_zero.well_formed and "leading zero" in trailing_zero.errors[0]


MAGNITUDES_EXAMPLE = (  # -3x^2-15x+18=0, as in the README (read back in the usual order)
    "4*a=-12;18*1=18;18*2=36;180+36=216;15*1=15;15*5=75;150+75=225;225+216=441;D=225-(-216)=441;"
    "2*2=4;4-4=0;(20*2+1)*1=41;41-41=0;sqrt(D)=21;2*a=-6;"
    "21-15=6;15-21=-6;6-6*1=0;x=-6/(-6)=1;15+21=36;36-6*6=0;x=36/(-6)=-6;x=1;x=-6;"
)
_SUM = re.compile(r"(\(?-?\d+\)?)([-+])(\(?-?\d+\)?)=(-?\d+)")  # a sum or difference: D's (after `D=`), -B-S=N, 180+36=216


def test_magnitudes_format_of_the_documented_example():
    solution = write_solution(-3, -15, 18, "magnitudes")
    assert solution == "~" + reverse_digits(MAGNITUDES_EXAMPLE)
    assert grade(-3, -15, 18, solution).ok
    # no negative operand or result: the signed steps are already unsigned and get no extra step
    assert write_solution(1, -5, 6, "magnitudes") == write_solution(1, -5, 6, "reversed")
    # D < 0: the larger magnitude first
    assert reverse_digits(write_solution(5, 3, 7, "magnitudes")[1:]) == "4*a=20;7*2=14;3*3=9;140-9=131;D=9-140=-131;x=none;"


@settings(max_examples=200, deadline=None)
@given(eq=equations())
@pytest.mark.parametrize("fmt", ["published-reversed", "steps-reversed"])
def test_reversed_form_is_the_format_with_its_numbers_reversed(fmt, eq):
    a, b, c, _ = eq
    plain = write_solution(a, b, c, fmt.removesuffix("-reversed"))
    solution = write_solution(a, b, c, fmt)
    assert solution == "~" + reverse_digits(plain) and len(solution) == len(plain) + 1
    assert grade(a, b, c, solution).ok
    assert statement_names(solution) == statement_names(plain)
    # D's value wrong in its last digit, which this format writes first: the same diagnosis as the plain format's
    disc = str(b * b - 4 * a * c)
    wrong_disc = disc[:-1] + str((int(disc[-1]) + 1) % 10)
    wrong = ";".join(s.rsplit("=", 1)[0] + "=" + wrong_disc if s.startswith("D=") else s for s in plain.split(";"))
    assert wrong != plain and not grade(a, b, c, wrong).steps_valid
    assert diagnose(solution, "~" + reverse_digits(wrong), answer_correct=True) == diagnose(plain, wrong, answer_correct=True)
    assert diagnose(plain, wrong, answer_correct=True)["first_wrong"] == "D: value"


def test_reversed_forms_of_the_documented_examples():
    assert write_solution(5, 3, 7, "published-reversed") == "~D=(3^2-4*5*7)=-131;x=none;"
    assert write_solution(-3, -15, 18, "published-reversed") == (
        "~D=((-51)^2-4*(-3)*81)=144;x=(-(-51)-12)/(2*(-3))=1;x=(-(-51)+12)/(2*(-3))=-6;x=1;x=-6;")
    assert write_solution(5, 3, 7, "steps-reversed") == "~b^2=3^2=9;4*a*c=4*5*7=041;D=b^2-4*a*c=9-041=-131;x=none;"
    assert write_solution(-3, -15, 18, "steps-reversed") == (
        "~b^2=(-51)^2=522;4*a*c=4*(-3)*81=-612;D=b^2-4*a*c=522-(-612)=144;sqrt(D)=sqrt(144)=12;"
        "-b-sqrt(D)=-(-51)-12=-6;-b+sqrt(D)=-(-51)+12=63;2*a=2*(-3)=-6;x=-6/(-6)=1;x=63/(-6)=-6;x=1;x=-6;")


@settings(max_examples=300, deadline=None)
@given(eq=equations())
def test_magnitudes_format_is_reversed_with_an_unsigned_step_before_each_signed_one(eq):
    """Read back, the format is the long one plus, right before each signed addition (D, -b-S,
    -b+S) that has a negative operand or result and no operand 0, one addition or subtraction of
    non-negative numbers, the larger first, whose result is the magnitude of the signed one's."""
    a, b, c, _ = eq
    steps = reverse_digits(write_solution(a, b, c, "magnitudes")[1:]).split(";")
    long_steps = write_solution(a, b, c, "long").split(";")
    extra, j = [], 0  # walk both: a step not at the long format's next place is an added one
    for i, step in enumerate(steps):
        if j < len(long_steps) and step == long_steps[j]:
            j += 1
        else:
            extra.append(i)
    assert [s for i, s in enumerate(steps) if i not in extra] == long_steps
    expected = 0
    for statement in long_steps:
        found = _SUM.fullmatch(statement.removeprefix("D="))
        if found:
            left, right, result = (int(found[k].strip("()")) for k in (1, 3, 4))
            expected += (left < 0 or right < 0 or result < 0) and left != 0 and right != 0
    assert len(extra) == expected
    for i in extra:
        x, op, y, z = re.fullmatch(r"(\d+)([-+])(\d+)=(\d+)", steps[i]).groups()
        assert op == "+" or int(x) >= int(y)
        assert int(z) == abs(int(steps[i + 1].rsplit("=", 1)[1]))


PADDED_EXAMPLE = (  # -3x^2-15x+18=0, as in the README (read back in the usual order)
    "4*a=-12;18*1=18;18*2=36;180+36=216;15*1=15;15*5=75;150+75=225;D=225-(-216)=441;"
    "2*2=4;4-4=0;(20*2+1)*1=41;41-41=00;sqrt(D)=21;2*a=-6;"
    "15-21=-06;6-6*1=0;x=-6/(-6)=1;15+21=36;36-6*6=00;x=36/(-6)=-6;x=1;x=-6;"
)


def test_padded_format_of_the_documented_example():
    solution = write_solution(-3, -15, 18, "padded")
    assert solution == "~" + reverse_digits(PADDED_EXAMPLE) and grade(-3, -15, 18, solution).ok
    # D = 0 has the operands' width: every column written, none to stop at
    assert "D=12645136-12645136=00000000;sqrt(D)=0;" in reverse_digits(write_solution(7, 3556, 451612, "padded")[1:])
    assert statement_names(solution) == statement_names(write_solution(-3, -15, 18, "reversed"))


@settings(max_examples=300, deadline=None)
@given(eq=equations())
def test_padded_format_is_reversed_with_each_sum_at_its_operands_width(eq):
    """Read back, the format is the long one with the result of every addition and subtraction
    (D, the square root's and the division's remainders, -b-S, -b+S) written with as many digits as
    its widest operand; the sums of partial products have that width already."""
    a, b, c, _ = eq
    padded = reverse_digits(write_solution(a, b, c, "padded")[1:]).split(";")
    long_steps = write_solution(a, b, c, "long").split(";")
    assert len(padded) == len(long_steps)
    for mine, plain in zip(padded, long_steps):
        if mine == plain:
            continue
        left, result = mine.rsplit("=", 1)
        assert left == plain.rsplit("=", 1)[0] and int(result) == int(plain.rsplit("=", 1)[1])
        widest = max(len(n) for n in re.findall(r"\d+", left.removeprefix("D=")))
        assert len(result.lstrip("-")) == widest and re.search(r"\d\)?[-+]", left)


@settings(max_examples=300, deadline=None)
@given(eq=equations())
def test_padded_d_format_is_reversed_with_d_at_its_operands_width(eq):
    a, b, c, _ = eq
    reversed_steps = write_solution(a, b, c, "reversed").split(";")
    padded_d = write_solution(a, b, c, "padded-d").split(";")
    padded = write_solution(a, b, c, "padded").split(";")
    d_at = next(i for i, step in enumerate(reversed_steps) if step.startswith("D="))
    assert padded_d[:d_at] + padded_d[d_at + 1 :] == reversed_steps[:d_at] + reversed_steps[d_at + 1 :]
    assert padded_d[d_at] == padded[d_at]  # D as the padded format writes it
    widest = max(len(str(b * b)), len(str(abs(4 * a * c))), len(str(abs(b * b - 4 * a * c))))  # a sum may be wider
    assert len(padded_d[d_at].rsplit("=", 1)[1].lstrip("-")) == widest


@settings(max_examples=300, deadline=None)
@given(eq=equations())
def test_padded_d_plain_format_is_padded_d_with_d_plain_after_it(eq):
    """D's statement gains its plain value as a last side (`D=...=0004=4`, in reversed digits
    `D=...=4000=4`), which the square root reads as in the reversed format; nothing else changes,
    the statements keep their names."""
    a, b, c, _ = eq
    padded_d = write_solution(a, b, c, "padded-d").split(";")
    plain = write_solution(a, b, c, "padded-d-plain").split(";")
    d_at = next(i for i, step in enumerate(padded_d) if step.startswith("D="))
    assert plain[:d_at] + plain[d_at + 1 :] == padded_d[:d_at] + padded_d[d_at + 1 :]
    disc = b * b - 4 * a * c
    assert plain[d_at] == padded_d[d_at] + "=" + ("-" if disc < 0 else "") + str(abs(disc))[::-1]
    assert statement_names(";".join(plain)) == statement_names(";".join(padded_d))


def test_padded_d_plain_refuses_a_plain_side_with_zeros():
    """The last side must be the plain number: written with the padding's zeros, it is malformed."""
    written = write_solution(1, -1000, 249999, "padded-d-plain")  # D = 1000000 - 999996 = 0000004
    assert "D=0000001-699999=4000000=4;" in written and grade(1, -1000, 249999, written).ok
    assert not grade(1, -1000, 249999, written.replace("=4000000=4;", "=4000000=4000000;")).well_formed


def _square_root_steps(steps: list[str]) -> tuple[int, int]:
    """Where the square root's steps start and end (the statements between D's and `sqrt(D)=`; none when D < 0)."""
    start = next(i for i, s in enumerate(steps) if s.startswith("D=")) + 1
    return start, next((i for i, s in enumerate(steps) if s.startswith("sqrt(D)=")), start)


def test_the_square_root_formats_of_the_documented_example():
    """-3x^2-15x+18=0 (README, "--format padded-root" and "--format root-r-first"), read back."""
    head = "4*a=-12;18*1=18;18*2=36;180+36=216;15*1=15;15*5=75;150+75=225;D=225-(-216)=441=441;"
    tail = "sqrt(D)=21;2*a=-6;15-21=-6;6-6*1=0;x=-6/(-6)=1;15+21=36;36-6*6=0;x=36/(-6)=-6;x=1;x=-6;"
    for fmt, root in (("padded-root", "2*2=4;4-4=0=0;(20*2+1)*1=41;41-41=00=0;"), ("root-r-first", "4-2*2=4-4=0;41-(20*2+1)*1=41-41=0;")):
        written = write_solution(-3, -15, 18, fmt)
        assert written == "~" + reverse_digits(head + root + tail) and grade(-3, -15, 18, written).ok


@settings(max_examples=300, deadline=None)
@given(eq=equations())
def test_padded_root_format_is_padded_d_plain_with_each_remainder_padded_then_plain(eq):
    """Each remainder of the square root gains its padded value (at the width of R, `padded`'s) before
    its plain one, which the next digits come down after, as they do in the reversed format;
    nothing else changes, the statements keep their names."""
    a, b, c, _ = eq
    plain = write_solution(a, b, c, "padded-d-plain").split(";")
    padded = write_solution(a, b, c, "padded").split(";")
    root = write_solution(a, b, c, "padded-root").split(";")
    start, stop = _square_root_steps(plain)
    assert len(root) == len(plain) and root[:start] + root[stop:] == plain[:start] + plain[stop:]
    for i in range(start, stop):
        if i % 2 == start % 2:  # a trial, (20*P+d)*d=T
            assert root[i] == plain[i]
        else:  # R-T=R', written R-T=pad(R')=R'
            assert root[i] == padded[i] + "=" + plain[i].rsplit("=", 1)[1]
    assert statement_names(";".join(root)) == statement_names(";".join(plain))


@settings(max_examples=300, deadline=None)
@given(eq=equations())
def test_root_r_first_format_writes_each_trial_from_its_remainder(eq):
    """Each trial and its remainder, `(20*P+d)*d=T;R-T=R'` in padded-d-plain, become one statement
    that starts from R: `R-(20*P+d)*d=R-T=R'`; nothing else changes."""
    a, b, c, _ = eq
    plain = reverse_digits(write_solution(a, b, c, "padded-d-plain")[1:]).split(";")
    first = reverse_digits(write_solution(a, b, c, "root-r-first")[1:]).split(";")
    start, stop = _square_root_steps(plain)
    trials = plain[start:stop]
    assert first[:start] == plain[:start] and first[start + len(trials) // 2 :] == plain[stop:]
    for k, statement in enumerate(first[start : start + len(trials) // 2]):
        trial, t = trials[2 * k].split("=")
        difference = trials[2 * k + 1]
        r = difference.split("-")[0]
        assert difference.split("=")[0] == f"{r}-{t}" and statement == f"{r}-{trial}={difference}"
    names = statement_names(";".join(first))
    assert [n for n in names if " work " not in n] == [n for n in statement_names(";".join(plain)) if " work " not in n]


def test_root_r_first_trials_are_checked_against_their_remainder():
    """The trial's side and the difference's side must both equal the remainder: a trial digit that
    is not the one whose product the difference subtracts is a false statement."""
    written = reverse_digits(write_solution(-3, -15, 18, "root-r-first")[1:])
    for wrong in ("41-(20*2+1)*1=41-40=1;", "41-(20*2+2)*2=41-41=0;", "41-(20*2+1)*1=40-41=0;"):
        solution = "~" + reverse_digits(written.replace("41-(20*2+1)*1=41-41=0;", wrong))
        verdict = grade(-3, -15, 18, solution)
        assert verdict.well_formed and not verdict.steps_valid, wrong


MONIC_EXAMPLE = (  # -3x^2-15x+18=0, as in the README, read back in the usual order
    "15-3*5=0;b/a=-15/(-3)=5;18-3*6=0;c/a=18/(-3)=-6;6*4=24;5*5=25;D/a/a=25-(-24)=49;"
    "7*7=49;49-49=0;sqrt(D/a/a)=7;-5-7=-12;12-2*6=0;x=-12/2=-6;-5+7=2;2-2*1=0;x=2/2=1;x=-6;x=1;"
)


def test_monic_format_of_the_documented_example():
    written = write_solution(-3, -15, 18, "monic")
    assert written == "~" + reverse_digits(MONIC_EXAMPLE)
    assert grade(-3, -15, 18, written).ok and grade(-3, -15, 18, MONIC_EXAMPLE).ok
    assert write_solution(2, 4, 10, "monic") == "~" + reverse_digits("4-2*2=0;b/a=4/2=2;10-2*5=0;c/a=10/2=5;5*4=20;2*2=4;D/a/a=4-20=-16;x=none;")
    names = statement_names(written)
    assert [n for n in names if " work " not in n] == ["b/a", "c/a", "D/a/a", "sqrt(D/a/a)", "x1", "x2", "answer"]
    assert names[:2] == ["b/a work 1", "b/a"] and names[4:7] == ["D/a/a work 1", "D/a/a work 2", "D/a/a"]
    with pytest.raises(ValueError, match="a does not divide b and c"):
        write_solution(2, 3, -2, "monic")  # roots 1/2 and -2: not of the dataset's form a(x^2-sx+p)


@settings(max_examples=300, deadline=None)
@given(eq=equations())
def test_monic_format_works_on_smaller_numbers(eq):
    """D/a/a = (r2-r1)^2 and its square root |r2-r1|: at the default ranges at most 7 and 4 digits,
    where D has up to 10 and sqrt(D) 5; the roots' divisions are by 2."""
    a, b, c, kind = eq
    statements = reverse_digits(write_solution(a, b, c, "monic")[1:]).split(";")
    values = {s.split("=", 1)[0]: int(s.rsplit("=", 1)[1]) for s in statements if s.split("=", 1)[0] in ("b/a", "c/a", "D/a/a", "sqrt(D/a/a)")}
    assert values["b/a"] * a == b and values["c/a"] * a == c and values["D/a/a"] * a * a == b * b - 4 * a * c
    assert len(str(abs(values["D/a/a"]))) <= 7
    if kind:
        assert values["sqrt(D/a/a)"] ** 2 == values["D/a/a"] and len(str(values["sqrt(D/a/a)"])) <= 4
        assert [s.split("/")[1].split("=")[0] for s in statements if s.startswith("x=") and "/" in s] == ["2", "2"]


def test_monic_formulas_must_be_written_with_the_equations_numbers():
    """`c/a=0/(-4)=0` for a = -3, c = 0 is a true equality with a wrong coefficient: the substitution
    check (the side after a formula is that formula with this equation's numbers) catches it, for
    the monic formulas as for D's."""
    wrong_a = grade(10, -3550, 0, write_solution(10, -3550, 0, "monic").replace("c/a=0/01=0", "c/a=0/11=0"))
    assert wrong_a.steps_valid and not wrong_a.substitutions_valid and not wrong_a.ok
    swapped = MONIC_EXAMPLE.replace("D/a/a=25-(-24)=49", "D/a/a=(-24)-25=49")  # operands out of order: false
    assert not grade(-3, -15, 18, swapped).steps_valid
    assert grade(-3, -15, 18, MONIC_EXAMPLE.replace("x=-12/2=-6", "x=-12/(2*1)=-6")).substitutions_valid is False


def test_a_padded_result_is_read_only_at_its_operands_width():
    """The grader reads a sum's result written with zeros in front when it has exactly the width
    of the widest number in the side before it, and that side is a sum or difference; any other
    leading zero makes the solution malformed, as before."""
    assert grade(-3, -15, 18, PADDED_EXAMPLE).ok
    for wrong_width in ("41-41=000;", "41-41=0;"):  # one digit too many; 0 alone is the plain format's (right)
        verdict = grade(-3, -15, 18, PADDED_EXAMPLE.replace("41-41=00;", wrong_width))
        assert verdict.ok == (wrong_width == "41-41=0;"), verdict.errors
    too_wide = grade(-3, -15, 18, PADDED_EXAMPLE.replace("15-21=-06;", "15-21=-006;"))
    assert not too_wide.well_formed and "leading zero" in too_wide.errors[0]
    for not_a_sum in ("18*2=036;", "4*a=-012;", "sqrt(D)=021;"):  # a product, a formula, a value: no padding
        original = {"18*2=036;": "18*2=36;", "4*a=-012;": "4*a=-12;", "sqrt(D)=021;": "sqrt(D)=21;"}[not_a_sum]
        assert not grade(-3, -15, 18, PADDED_EXAMPLE.replace(original, not_a_sum)).well_formed
    # the value is still checked: a padded result that is wrong is a false statement
    false = grade(-3, -15, 18, PADDED_EXAMPLE.replace("36-6*6=00;", "36-6*6=01;"))
    assert false.well_formed and not false.steps_valid


def _corrupted_statements(solution: str):
    """(statement, corrupted solution) for every digit of every statement before the final answer
    replaced by another digit (no leading zero: that would be refused as malformed, not judged),
    or deleted from a number of several digits (unless that leaves its value). A reversed solution is corrupted in the order it is
    written (no trailing zero there) and returned with its mark."""
    if solution.startswith("~"):
        for statement, position, corrupted in _corrupted_statements(reverse_digits(solution[1:])):
            yield statement, position, "~" + reverse_digits(corrupted)
        return
    statements = solution.split(";")[:-1]
    final = len(statements)
    while final and re.fullmatch(r"x=-?\d+|x=none", statements[final - 1]):
        final -= 1
    for k, statement in enumerate(statements[:final]):
        for m in re.finditer(r"\d+", statement):
            for i in range(m.start(), m.end()):
                changed = [d for d in "0123456789" if d != statement[i] and not (d == "0" and i == m.start() and m.end() - m.start() > 1)]
                if m.end() - m.start() > 1:
                    changed.append("")
                for d in changed:
                    if d == "" and int(m[0][: i - m.start()] + m[0][i - m.start() + 1 :]) == int(m[0]):
                        continue  # a padded result's zero deleted: the same number, not a corruption
                    corrupted = statement[:i] + d + statement[i + 1 :]
                    yield statement, i, ";".join(statements[:k] + [corrupted] + statements[k + 1 :]) + ";"


@pytest.mark.parametrize("fmt", SCHOOLBOOK)
@settings(max_examples=15, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(eq=equations())
def test_every_intermediate_digit_is_checked(fmt, eq):
    """Corrupting any digit of any step makes a false equality (steps_valid false): the grader's
    verdict covers the whole scratchpad. The one exception is a copy that a value does not depend
    on: the divisor in `x=0/(2a)=0` (a root 0) and, in the monic format, `b/a=0/(a)=0`, `c/a=0/(a)=0`
    and `x=0/2=0`, which the substitution check catches instead (or the division by zero, when
    deleting a digit leaves 0)."""
    a, b, c, _ = eq
    for statement, position, corrupted in _corrupted_statements(write_solution(a, b, c, fmt)):
        verdict = grade(a, b, c, corrupted)
        if re.match(r"(x|b/a|c/a)=0/", statement) and position > statement.index("/", 2):
            assert not (verdict.steps_valid and verdict.substitutions_valid), corrupted
        else:
            assert not verdict.steps_valid, corrupted


def test_corruption_check_covers_the_zero_root_exception():
    # the documented exception occurs: 2a in x=0/20=0, caught by the substitution check
    corrupted = write_solution(10, -3550, 0, "long").replace("x=0/20=0", "x=0/21=0")
    verdict = grade(10, -3550, 0, corrupted)
    assert verdict.steps_valid and not verdict.substitutions_valid and not verdict.ok


def test_same_seed_same_equations_in_every_format(tmp_path):
    """Only the solution text depends on the format, so accuracies compare row for row."""
    import datasets

    columns = ("equation", "a", "b", "c", "num_roots")
    loaded = {}
    for fmt in FORMATS:
        generate(GenOptions(rows=600, seed=5, format=fmt), tmp_path / fmt, workers=1)
        loaded[fmt] = datasets.load_from_disk(str(tmp_path / fmt))
    for split in ("train", "test"):
        for fmt in FORMATS[1:]:
            for col in columns:
                assert loaded[fmt][split][col] == loaded["published"][split][col], (fmt, split, col)
        rows = loaded["long"][split]
        assert rows["solution"] == [write_solution(a, b, c, "long") for a, b, c in zip(rows["a"], rows["b"], rows["c"])]
    card = json.loads((tmp_path / "long" / "card.json").read_text())
    assert card["format"] == "long"
    lengths = [len(s) for s in loaded["long"]["train"]["solution"]]
    stats = card["lengths"]["train"]["solution"]
    assert (stats["min"], stats["max"], stats["mean"]) == (min(lengths), max(lengths), round(sum(lengths) / len(lengths), 3))
    readme = (tmp_path / "long" / "README.md").read_text()
    assert "solution format `long`" in readme and f"| train | len(solution) | {min(lengths)} |" in readme


def test_long_format_too_long_for_the_grader_is_refused(tmp_path):
    wide = Ranges(a_lo=-10**6, a_hi=10**6, root_lo=-10**4, root_hi=10**4)
    with pytest.raises(QuadlabError, match="more than the grader reads"):
        generate(GenOptions(rows=100, format="long", ranges=wide), tmp_path / "out")
    assert not (tmp_path / "out").exists()
    assert build_splits(GenOptions(rows=100, ranges=wide), workers=1)  # the published format fits


def test_gen_and_verify_on_the_command_line(run_cli, tmp_path):
    done = run_cli("gen", "--format", "long", "--rows", 200, "--out", tmp_path / "q", "--workers", 2)
    assert done.returncode == 0, done.stderr
    assert json.loads((tmp_path / "q" / "card.json").read_text())["format"] == "long"
    right = run_cli("verify", "--", "-3x^2-15x+18=0", LONG_EXAMPLE)
    assert right.returncode == 0 and json.loads(right.stdout)["ok"]
    wrong = run_cli("verify", "--", "-3x^2-15x+18=0", "-", input=LONG_EXAMPLE.replace("150+75=225", "150+75=235"))
    verdict = json.loads(wrong.stdout)
    assert wrong.returncode == 1 and not verdict["steps_valid"] and verdict["answer_correct"]
    refused = run_cli("gen", "--format", "longhand", "--out", tmp_path / "r")
    assert refused.returncode == 2 and "long" in refused.stderr and not (tmp_path / "r").exists()


def test_diagnosis_names_on_the_long_format():
    names = statement_names(LONG_EXAMPLE)
    assert [n for n in names if " work " not in n] == ["4*a", "D", "sqrt(D)", "2*a", "x1", "x2", "answer"]
    # scratch statements are named after the statement they lead to, the same for every equation
    assert names[:8] == ["4*a"] + [f"D work {k}" for k in range(1, 7)] + ["D"]
    assert names[8:13] == [f"sqrt(D) work {k}" for k in range(1, 5)] + ["sqrt(D)"]
    assert len(names) == len(LONG_EXAMPLE.split(";")) - 2  # one per statement, the final answer judged as one
    assert statement_names(write_solution(-3, -15, 18, "reversed")) == names  # the mark is not a statement
    wrong = diagnose(LONG_EXAMPLE, LONG_EXAMPLE.replace("150+75=225", "150+75=235"), answer_correct=True)
    order = list(wrong["statements"])
    assert wrong["first_wrong"] == "D work 6: value" and order.index(wrong["first_wrong"]) < order.index("D: formula")
    assert wrong["statements"]["D: value"] and wrong["statements"]["answer"]


@settings(max_examples=100, deadline=None)
@given(equations())
def test_every_character_of_every_format_has_a_role(eq):
    a, b, c, _ = eq
    for fmt in FORMATS:
        solution = write_solution(a, b, c, fmt)
        assert "other" not in solution_roles(list(solution)), solution


def test_analyses_run_on_a_reversed_run(tmp_path):
    """The reversed format through training, maps and explain: its mark is a role of its own, and
    the solution the model writes is graded after reading its numbers back."""
    from conftest import TINY_DATA, tiny_run

    from analyze.maps import explain, render_maps

    generate(GenOptions(rows=200, seed=5, format="reversed", ranges=Ranges(**TINY_DATA)), tmp_path / "data", workers=1)
    run = tiny_run("quadratic", tmp_path / "data", tmp_path, max_steps=6, eval_every=6)
    # the dataset averages here; explain draws one example's maps (drawing two would double the time)
    result = render_maps(run, tmp_path / "figs", limit=4, examples=[], batch_size=4, progress=False)
    assert result["examples_averaged"] == 4
    header, keys = (tmp_path / "figs" / "average" / "symbols-decoder.csv").read_text().splitlines()[:2]
    share = dict(zip(header.split(","), keys.split(",")))
    assert float(share["~"]) > 0  # the mark, one key of each solution, is a role of its own
    explained = explain(run, {"equation": "x^2 - 5x + 6 = 0"}, tmp_path / "explain")
    assert explained["lines"] and (tmp_path / "explain" / "example-explain" / "encoder-heads.png").exists()
