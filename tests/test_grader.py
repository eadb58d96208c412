import re
import time

import pytest
from conftest import equations
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from gen.equations import FORMATS, write_equation, write_solution
from gen.grader import GradeError, grade, parse_equation, true_roots

PUBLISHED_EQUATION = "7x^2+3556x+451612=0"
PUBLISHED_SOLUTION = "D=(3556^2-4*7*451612)=0;x=(-3556-0)/(2*7)=-254;x=(-3556+0)/(2*7)=-254;x=-254;x=-254;"


def test_published_example_is_written_byte_for_byte_and_graded_right():
    assert write_equation(7, 3556, 451612) == PUBLISHED_EQUATION
    assert write_solution(7, 3556, 451612) == PUBLISHED_SOLUTION
    verdict = grade(*parse_equation(PUBLISHED_EQUATION), PUBLISHED_SOLUTION)
    assert verdict.ok and verdict.num_roots == 1 and verdict.stated_answer == ["-254", "-254"]


@pytest.mark.parametrize(
    "abc, published",
    [
        ((-3, -15, 18), "D=((-15)^2-4*(-3)*18)=441;x=(-(-15)-21)/(2*(-3))=1;x=(-(-15)+21)/(2*(-3))=-6;x=1;x=-6;"),
        ((1, 0, -4), "D=(0^2-4*1*(-4))=16;x=(-0-4)/(2*1)=-2;x=(-0+4)/(2*1)=2;x=-2;x=2;"),
        ((5, 3, 7), "D=(3^2-4*5*7)=-131;x=none;"),
    ],
)
def test_grammar_for_negative_and_zero_coefficients_and_no_real_roots(abc, published):
    assert write_solution(*abc) == published
    assert grade(*abc, published).ok


def test_steps_format_writes_every_intermediate_product():
    steps = write_solution(-3, -15, 18, "steps")
    assert steps == (
        "b^2=(-15)^2=225;4*a*c=4*(-3)*18=-216;D=b^2-4*a*c=225-(-216)=441;sqrt(D)=sqrt(441)=21;"
        "-b-sqrt(D)=-(-15)-21=-6;-b+sqrt(D)=-(-15)+21=36;2*a=2*(-3)=-6;x=-6/(-6)=1;x=36/(-6)=-6;x=1;x=-6;"
    )
    assert grade(-3, -15, 18, steps).ok


@settings(max_examples=300, deadline=None)
@given(equations())
def test_grader_accepts_every_generated_solution(eq):
    a, b, c, kind = eq
    a2, b2, c2 = parse_equation(write_equation(a, b, c))
    assert (a2, b2, c2) == (a, b, c)
    for fmt in FORMATS:
        verdict = grade(a, b, c, write_solution(a, b, c, fmt))
        assert verdict.ok, verdict.errors
        assert verdict.num_roots == kind


def _digit_corruptions(text):
    """Every solution with one digit of a number replaced by another digit, or deleted from a
    number of several digits (deleting a one-digit number deletes a number, not a digit)."""
    for m in re.finditer(r"\d+", text):
        for i in range(m.start(), m.end()):
            for d in "0123456789":
                if d != text[i]:
                    yield text[:i] + d + text[i + 1 :]
            if m.end() - m.start() > 1:
                yield text[:i] + text[i + 1 :]


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(equations())
def test_grader_rejects_every_single_digit_corruption(eq):
    a, b, c, _ = eq
    # the schoolbook formats get the stronger check (every digit makes a false step) in test_formats
    for fmt in ("published", "steps"):
        for corrupted in _digit_corruptions(write_solution(a, b, c, fmt)):
            assert not grade(a, b, c, corrupted).ok, corrupted


def test_zero_coefficient_cannot_hide_a_wrong_substitution():
    # 4*8*0 has the same value as 4*7*0: only the substitution check catches the wrong a
    verdict = grade(7, 0, 0, "D=(0^2-4*8*0)=0;x=(-0-0)/(2*7)=0;x=(-0+0)/(2*7)=0;x=0;x=0;")
    assert verdict.steps_valid and verdict.answer_correct
    assert not verdict.substitutions_valid and not verdict.ok


def test_verdict_parts_are_judged_separately():
    # steps true, final answer incomplete
    v = grade(1, -3, 2, "D=((-3)^2-4*1*2)=1;x=(-(-3)-1)/(2*1)=1;x=(-(-3)+1)/(2*1)=2;x=1;")
    assert v.well_formed and v.steps_valid and v.substitutions_valid and not v.answer_correct
    # a false equality with a correct final answer
    v = grade(1, -3, 2, "D=((-3)^2-4*1*2)=2;x=(-(-3)-1)/(2*1)=1;x=(-(-3)+1)/(2*1)=2;x=1;x=2;")
    assert not v.steps_valid and v.answer_correct
    # answer in the other order is the same set; rational roots are fine
    assert grade(1, -3, 2, "x=2;x=1;").answer_correct
    assert grade(2, -1, 0, "x=0;x=1/2;").answer_correct
    # x=none is checked against the discriminant
    assert grade(1, 0, 1, "D=(0^2-4*1*1)=-4;x=none;").ok
    assert not grade(1, 0, -1, "D=(0^2-4*1*(-1))=4;x=none;").answer_correct


@pytest.mark.parametrize(
    "solution, well_formed",
    [
        ("", False),
        ("x=1", False),  # no final ';'
        ("D=1;", False),  # no answer
        ("x=none;x=1;", False),
        ("x=(1;", False),
        ("x=01;", False),
        ("x=1;;", False),
        ("x=1/0;", True),
        ("x=sqrt(-4);", True),
        ("x=sqrt(2);", True),
        ("x=2^(1/2);", True),
    ],
)
def test_malformed_and_uncomputable_solutions_are_wrong_not_errors(solution, well_formed):
    verdict = grade(1, -3, 2, solution)
    assert verdict.well_formed == well_formed
    assert not verdict.ok and verdict.errors


def test_a_missing_final_semicolon_is_named_as_missing():
    """The error says what the solution lacks, not a rule that reads like what it has."""
    assert grade(1, -3, 2, "x=1;x=2").errors == ["malformed: it does not end with ';' (every statement ends with ';', the last one too)"]
    assert grade(1, -3, 2, "x=1;x=2;").ok


HOSTILE = {
    "tower": "D=9^9^9^9;x=1;",
    "huge number": "x=" + "9" * 200_000 + ";",
    "deep nesting": "x=" + "(" * 50_000 + "1" + ")" * 50_000 + ";",
    "deep nesting, short": "x=" + "(" * 600 + "1" + ")" * 600 + ";",
    "python": "x=__import__('os').system('touch /tmp/quadlab-pwned');",
    "huge product": "x=" + "*".join(["999999999999999999999999999999"] * 60) + ";",
    "huge power": "x=(2^64)^64;",
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_solutions_end_fast_and_wrong(name):
    start = time.perf_counter()
    verdict = grade(1, -2, 1, HOSTILE[name])
    # a guard against the exponential blow-up these strings aim at (hours unbounded), not a speed
    # test: a bounded grader ends in a millisecond, so 10 s holds on any loaded machine
    assert time.perf_counter() - start < 10
    assert not verdict.ok and verdict.errors


@pytest.mark.parametrize(
    "text, abc",
    [
        ("7x^2+3556x+451612=0", (7, 3556, 451612)),
        ("-7x^2-3556x+0=0", (-7, -3556, 0)),
        ("x^2 - 5x + 6 = 0", (1, -5, 6)),
        ("2*x^2 = 8", (2, 0, -8)),
        ("x^2+x=x^2+x^2-1", (-1, 1, 1)),
    ],
)
def test_equations_are_read_leniently(text, abc):
    assert parse_equation(text) == abc


@pytest.mark.parametrize(
    "text",
    ["x^3+1=0", "3=0", "x+1=0", "x^2+*3=0", "x^2+x+1", "__import__('os')", "9^9^9^9=0", "1" * 300 + "x^2=0"],
    ids=lambda text: text[:20],
)
def test_unreadable_equations_raise(text):
    with pytest.raises(GradeError):
        parse_equation(text)


@pytest.mark.parametrize("text, what", [("x**2-1=0", "no term at '**2-1'"), ("x^2+x+1", "exactly one '='"), ("=x^2", "side is empty"),
                                        ("x^2-5y+6=0", "no term at 'y+6'")])
def test_an_unreadable_equation_says_how_to_write_one(text, what):
    with pytest.raises(GradeError) as raised:
        parse_equation(text)
    message = str(raised.value)
    assert what in message
    example = message.rsplit("as in ", 1)[1]  # the form the message offers must be one the parser reads
    assert parse_equation(example) == (2, -5, 6)


def test_true_roots_are_exact():
    assert true_roots(7, 3556, 451612) == ["-254"]
    assert true_roots(1, 0, -2) == ["-sqrt(2)", "sqrt(2)"]
    assert true_roots(1, 0, 1) == []


# A digit of another script with the value of the ASCII digit it replaces: int() reads `١` as 1,
# so before numbers were ASCII only, these strings were graded right.
OTHER_DIGITS = st.characters(categories=["Nd"]).filter(lambda c: not c.isascii())


def _same_value_elsewhere(text: str, position: int, digit: str) -> str:
    """`text` with its `position`-th ASCII digit (modulo their count) written in `digit`'s script."""
    places = [i for i, ch in enumerate(text) if ch.isascii() and ch.isdigit()]
    i = places[position % len(places)]
    zero = ord(digit) - int(digit)  # Unicode keeps each script's digits 0-9 in order
    return text[:i] + chr(zero + int(text[i])) + text[i + 1 :]


@settings(max_examples=200, deadline=None)
@given(equations(), st.sampled_from(FORMATS), st.integers(0, 10**6), OTHER_DIGITS)
def test_a_digit_of_another_script_is_never_a_number(eq, fmt, position, digit):
    a, b, c, _ = eq
    solution = _same_value_elsewhere(write_solution(a, b, c, fmt), position, digit)
    verdict = grade(a, b, c, solution)
    assert not verdict.well_formed and not verdict.ok and "non-ASCII" in verdict.errors[0]
    with pytest.raises(GradeError, match="non-ASCII"):
        parse_equation(_same_value_elsewhere(write_equation(a, b, c), position, digit))


@pytest.mark.parametrize("equation", ["١x^2+3x+2=0", "x^2+３x+2=0", "x^2+3x+2=０", "x^2\u22123x+2=0", "x^2+3x+2=0\u00a0"],
                         ids=["arabic-indic", "full-width", "full-width zero", "unicode minus", "no-break space"])
def test_non_ascii_equations_raise(equation):
    with pytest.raises(GradeError, match="non-ASCII"):
        parse_equation(equation)


@pytest.mark.parametrize("prediction", ["x=-１;x=-2;", "x=-1;x=-2;\u200b", "x=\udcff;", "\x00x=-1;x=-2;"])
def test_hostile_model_output_is_judged_wrong_not_an_error(prediction):
    from train.metrics import judge

    judged = judge(1, 3, 2, "x=-1;x=-2;", prediction)
    assert not judged["exact"] and not judged["roots_correct"] and not judged["steps_valid"]
