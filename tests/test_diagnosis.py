"""Issue 12, item 1: which statement of a worked solution limits a model, on hand-made outputs."""

from gen.equations import write_solution
from train.metrics import diagnose, diagnosis, judge, statement_names

PUBLISHED = write_solution(-3, -15, 18)  # D=((-15)^2-4*(-3)*18)=441;x=(-(-15)-21)/(2*(-3))=1;...
STEPS = write_solution(-3, -15, 18, "steps")


def test_statement_names_follow_the_reference_format():
    assert statement_names(PUBLISHED) == ["D", "x1", "x2", "answer"]
    assert statement_names(write_solution(5, 3, 7)) == ["D", "answer"]  # no real root: x=none
    assert statement_names(STEPS) == ["b^2", "4*a*c", "D", "sqrt(D)", "-b-sqrt(D)", "-b+sqrt(D)", "2*a", "x1", "x2", "answer"]


def test_a_right_solution_has_no_wrong_statement():
    verdict = diagnose(PUBLISHED, PUBLISHED, answer_correct=True)
    assert all(verdict["statements"].values()) and verdict["first_wrong"] is None
    assert list(verdict["statements"]) == ["D: formula", "D: value", "sqrt(D)", "x1: formula", "x1: value", "x2: formula", "x2: value", "answer"]


def test_the_first_wrong_statement_is_named():
    wrong_d = diagnose(PUBLISHED, PUBLISHED.replace(")=441;", ")=440;"), answer_correct=True)
    assert wrong_d["first_wrong"] == "D: value"
    assert wrong_d["statements"]["D: formula"] and not wrong_d["statements"]["D: value"] and wrong_d["statements"]["answer"]
    wrong_copy = diagnose(PUBLISHED, PUBLISHED.replace("4*(-3)*18", "4*(-3)*19"), answer_correct=True)
    assert wrong_copy["first_wrong"] == "D: formula" and wrong_copy["statements"]["D: value"]
    wrong_root = diagnose(PUBLISHED, PUBLISHED.replace("(-(-15)-21)", "(-(-15)-23)"), answer_correct=False)
    assert wrong_root["first_wrong"] == "sqrt(D)" and not wrong_root["statements"]["x1: formula"] and wrong_root["statements"]["x1: value"]
    truncated = diagnose(STEPS, STEPS[: STEPS.index("D=b^2")], answer_correct=False)
    assert truncated["first_wrong"] == "D: formula"
    assert truncated["statements"]["b^2: value"] and truncated["statements"]["4*a*c: value"] and not truncated["statements"]["answer"]
    assert diagnose(PUBLISHED, "", answer_correct=False)["first_wrong"] == "D: formula"


def test_reordered_final_answer_is_judged_by_the_grader():
    reordered = PUBLISHED.replace("x=1;x=-6;", "x=-6;x=1;")
    record = judge(-3, -15, 18, PUBLISHED, reordered)
    assert record["diagnosis"]["first_wrong"] is None and not record["exact"]


def test_breakdown_by_statement_size_and_class():
    rows = [(-3, -15, 18), (7, 3556, 451612), (5, 3, 7), (1, -3, 2)]
    records = []
    for (a, b, c), ok in zip(rows, [True, False, True, False]):
        target = write_solution(a, b, c)
        prediction = target if ok else target.replace("=", "=1", 1)
        k = 2 if b * b > 4 * a * c else 1 if b * b == 4 * a * c else 0
        records.append({"a": a, "b": b, "c": c, "num_roots": k, **judge(a, b, c, target, prediction)})
    d = diagnosis(records)
    assert d["n"] == 4
    assert d["statement_accuracy"]["D: formula"] == {"n": 4, "accuracy": 0.5}
    assert d["statement_accuracy"]["sqrt(D)"]["n"] == 3  # the equation with no real root has none
    assert d["first_wrong"] == {"D: formula": 0.5, "none wrong": 0.5}
    assert d["by_digits_of_b"]["4"]["n"] == 1 and d["by_digits_of_b"]["4"]["full_solution_accuracy"] == 0.0
    assert d["by_digits_of_D"]["1"]["n"] == 2  # D = 0 (7x^2+3556x+451612) and D = 1 (x^2-3x+2)
    assert d["by_num_roots"]["none"]["full_solution_accuracy"] == 1.0
    assert d["by_num_roots"]["two"]["statements"]["D: formula"]["accuracy"] == 0.5


def test_a_step_that_computes_right_on_a_wrong_copy_holds():
    """`holds`: the statement is a true equality whatever its operands, so a model that multiplies
    right what it copied wrong is seen to have learned the multiplication."""
    long = write_solution(-3, -15, 18, "long")  # 4*a=-12;18*1=18;18*2=36;180+36=216;...
    wrong_copy = long.replace("18*2=36;180+36=216", "19*2=38;180+38=218")  # copies 19 for 18, multiplies right
    record = judge(-3, -15, 18, long, wrong_copy)["diagnosis"]
    assert not record["statements"]["D work 2: formula"] and not record["statements"]["D work 2: value"]
    assert record["holds"]["D work 2"] and record["holds"]["D work 3"] and record["holds"]["4*a"]
    wrong_product = judge(-3, -15, 18, long, long.replace("18*2=36;", "18*2=37;"))["diagnosis"]
    assert not wrong_product["holds"]["D work 2"] and wrong_product["holds"]["D work 1"]
    assert "answer" not in wrong_product["holds"]
    # the reversed format is judged after its numbers are read back
    reversed_wrong = write_solution(-3, -15, 18, "reversed").replace("81*2=63;", "81*2=73;")
    assert not judge(-3, -15, 18, write_solution(-3, -15, 18, "reversed"), reversed_wrong)["diagnosis"]["holds"]["D work 2"]
    assert judge(-3, -15, 18, long, "D=1;")["diagnosis"]["holds"] == {}  # malformed (no answer): nothing judged
    truncated = judge(-3, -15, 18, long, long[: long.index("D=")] + "x=none;")["diagnosis"]["holds"]
    assert truncated["D work 6"] and not truncated["sqrt(D)"]  # a statement the output does not reach does not hold
    records = [{"a": -3, "b": -15, "c": 18, "num_roots": 2, **judge(-3, -15, 18, long, p)} for p in (long, wrong_copy, "D=1;")]
    held = diagnosis(records)["statement_holds"]
    assert held["D work 2"] == {"n": 2, "rate": 1.0} and held["4*a"]["n"] == 2  # the malformed output is left out
    assert list(held)[:3] == ["4*a", "D work 1", "D work 2"]


def test_grader_numbers_the_false_statements():
    from gen.grader import grade

    long = write_solution(-3, -15, 18, "long")
    verdict = grade(-3, -15, 18, long.replace("18*2=36;", "18*2=37;").replace("x=1;x=-6;", "x=2;x=-6;"))
    assert verdict.false_statements == [3, len(long.split(";")) - 2] and not verdict.steps_valid
    assert grade(-3, -15, 18, long).false_statements == []


def test_the_console_collapses_each_statements_work_steps():
    """`train`/`eval` print a decomposed format's dozens of steps as one entry per statement and part:
    the lowest step (and its rows), or for the first wrong statement the steps' sum and the largest."""
    from train.quadratic import metric_lines, work_collapsed

    accuracy = {"D work 1: value": 1.0, "D work 2: value": 0.9, "D work 3: value": 0.95, "D: value": 0.8, "sqrt(D) work 1: formula": 0.7, "answer": 0.5}
    rows = {"D work 1: value": 100, "D work 2: value": 40, "D work 3: value": 10, "D: value": 100, "sqrt(D) work 1: formula": 90, "answer": 100}
    assert work_collapsed(accuracy, rows) == [("D work 1-3: value", 0.9, " (lowest: step 2 of 40 rows)"), ("D: value", 0.8, ""),
                                              ("sqrt(D) work 1: formula", 0.7, " (lowest: step 1 of 90 rows)"), ("answer", 0.5, "")]
    first = {"D work 4: formula": 0.01, "D work 7: formula": 0.03, "D: value": 0.02, "none wrong": 0.94}
    assert work_collapsed(first, total=True) == [("D work 4-7: formula", 0.04, " (most at step 7: 0.030)"), ("D: value", 0.02, ""), ("none wrong", 0.94, "")]
    target = write_solution(-3, -15, 18, "long")  # 4*a=-12;18*1=18;18*2=36;180+36=216;15*1=15;15*5=75;150+75=225;D=...
    records = [judge(-3, -15, 18, target, prediction) | {"a": -3, "b": -15, "c": 18, "num_roots": 2}
               for prediction in (target, target.replace("15*5=75;150+75=225;", "15*5=76;150+76=226;"))]
    lines = metric_lines("run", {"test": {"rows": 2, "diagnosis": diagnosis(records)}}, "test")
    assert len(lines) == 3 and all(" work 2" not in line for line in lines), lines  # no step alone
    assert "D work 1-6: value 0.500 (lowest: step 5 of 2 rows)" in lines[0], lines[0]
    assert lines[2].startswith("  first statement to go wrong: ") and "D work 5: value 0.500 (most at step 5: 0.500)" in lines[2], lines[2]


def test_statements_keep_solution_order_when_outputs_have_different_steps():
    """The longest output may have more steps for D and fewer for x1 than another: each step still
    goes in its place (it went last, after `answer`)."""
    from train.metrics import solution_order

    more_d = ["D work 1", "D work 2", "D work 3", "D", "x1 work 1", "x1", "answer"]
    more_x1 = ["D work 1", "D", "x1 work 1", "x1 work 2", "x1", "answer"]
    assert solution_order([more_d, more_x1]) == ["D work 1", "D work 2", "D work 3", "D", "x1 work 1", "x1 work 2", "x1", "answer"]
    assert solution_order([["b"], ["a", "b"], ["b", "c"]]) == ["a", "b", "c"]  # first name of a later output, and last


def test_explain_names_the_first_wrong_statement_and_quotes_both():
    from train.quadratic import first_wrong, reference

    def where(solution, target=PUBLISHED, correct=False):
        return first_wrong(target, solution, correct)

    assert where(PUBLISHED, correct=True) == "nothing: the solution is the reference's"
    assert where(PUBLISHED.replace(")=441;", ")=440;"), correct=True) == (
        "D: value, statement 1: the model wrote `D=((-15)^2-4*(-3)*18)=440`, the reference `D=((-15)^2-4*(-3)*18)=441`")
    assert where(PUBLISHED.replace("(-(-15)-21)", "(-(-15)-23)")) == "sqrt(D)"  # judged inside x1's formula: no statement of its own
    assert where(STEPS.replace("sqrt(441)=21", "sqrt(441)=20"), STEPS) == (
        "sqrt(D): value, statement 4: the model wrote `sqrt(D)=sqrt(441)=20`, the reference `sqrt(D)=sqrt(441)=21`")
    assert where(STEPS[: STEPS.index("D=b^2")], STEPS) == (
        "D: formula, statement 3: the solution ends before it (the reference: `D=b^2-4*a*c=225-(-216)=441`)")
    assert where(PUBLISHED.replace("x=1;x=-6;", "x=1;x=-7;")) == "answer, statement 4: the model wrote `x=1;x=-7`, the reference `x=1;x=-6`"
    assert reference(-3, -15, 18, "steps") == STEPS
    assert reference(3, -7, 2, "published") is None  # roots 1/3 and 2: no equation of the datasets, so no reference


def test_an_empty_statement_is_quoted_as_written():
    from train.quadratic import first_wrong

    assert first_wrong(PUBLISHED, ";" + PUBLISHED, False).startswith("D: formula, statement 1: the model wrote ``, the reference `D=")
