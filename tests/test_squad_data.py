import json
import subprocess
import sys

import numpy as np
import pytest

from gen import QuadlabError
from train.metrics import exact_match, f1_score, normalize_answer, squad_metrics
from train.squad_data import Skipped, eval_features, examples_from, postprocess, read_squad, split_by_article, train_features

from conftest import ROOT, SQUAD_DEV as DEV, SQUAD_SAMPLE, SQUAD_SAMPLE_V2, needs_squad_dev, wordpiece_tokenizer


@pytest.fixture(scope="module")
def tokenizer(tmp_path_factory):
    """A WordPiece tokenizer trained here on the fixture's text (no download)."""
    _, articles = read_squad(SQUAD_SAMPLE)
    return wordpiece_tokenizer(articles, tmp_path_factory.mktemp("tok"), vocab_size=3000)


@pytest.mark.parametrize(
    "prediction, gold, em, f1",
    [
        ("The  Cat!", "cat", 1.0, 1.0),
        ("Denver Broncos", "the Denver Broncos", 1.0, 1.0),
        ("Broncos", "Denver Broncos", 0.0, 2 * 1 * 0.5 / 1.5),
        ("a b c", "x y", 0.0, 0.0),
        ("", "", 1.0, 1.0),
    ],
)
def test_official_normalisation_exact_match_and_f1(prediction, gold, em, f1):
    assert exact_match(prediction, gold) == em
    assert f1_score(prediction, gold) == pytest.approx(f1)


def test_normalize_answer_drops_articles_punctuation_and_spaces():
    assert normalize_answer("  An apple, THE pear and a plum.") == "apple pear and plum"


def test_squad_metrics_take_the_best_gold_and_break_down_v2():
    golds = {"q1": ["Denver Broncos", "Broncos"], "q2": ["1990"], "q3": []}
    m = squad_metrics({"q1": "broncos", "q2": "in 1990", "q3": ""}, golds)
    assert m["exact_match"] == pytest.approx(100 * 2 / 3)
    assert m["f1"] == pytest.approx(100 * (1 + 2 / 3 + 1) / 3)
    assert m["HasAns_total"] == 2 and m["NoAns_total"] == 1 and m["NoAns_exact"] == 100.0
    assert "HasAns_exact" not in squad_metrics({"q1": "broncos"}, {"q1": ["Broncos"]})


def test_fixture_splits_by_article_and_reads_in_both_versions():
    version, articles = read_squad(SQUAD_SAMPLE)
    train, evaluate = split_by_article(articles, 2)
    assert version == "1.1" and [len(train), len(evaluate)] == [4, 2] and train[0]["title"] == "Super_Bowl_50"
    assert [a["title"] for a in evaluate] == ["Computational_complexity_theory", "Teacher"]
    skipped = Skipped()
    rows = examples_from(articles, skipped)
    assert len(rows) == len({r["id"] for r in rows}) == 207 and str(skipped) == "none"
    assert {r["title"] for r in examples_from(evaluate, Skipped())}.isdisjoint(r["title"] for r in examples_from(train, Skipped()))
    for kept in (6, 0):
        with pytest.raises(QuadlabError, match=f"cannot keep {kept} of 6 articles .* eval_articles=N from 1 to 5, or --eval-file"):
            split_by_article(articles, kept)
    for few in (articles[:1], []):  # no N would do
        with pytest.raises(QuadlabError, match=f"the training file has {len(few)} articles?, .* give a file of 2 or more articles, or an --eval-file"):
            split_by_article(few, 1)
    version_2, articles_2 = read_squad(SQUAD_SAMPLE_V2)
    rows_2 = examples_from(articles_2, Skipped())
    unanswerable = [r for r in rows_2 if not r["answers"]["text"]]
    assert version_2 == "v2.0" and [r["id"] for r in rows_2] == [r["id"] for r in rows] and 0 < len(unanswerable) < len(rows_2)
    assert all(r["answers"]["answer_start"] == [] for r in unanswerable)


@needs_squad_dev
def test_dev_set_splits_by_article():  # the exact counts of the full dev set
    version, articles = read_squad(DEV)
    train, evaluate = split_by_article(articles, 10)
    assert version == "1.1" and len(train) == 38 and len(evaluate) == 10 and train[0]["title"] == "Super_Bowl_50"
    skipped = Skipped()
    rows = examples_from(articles, skipped)
    assert len(rows) == 10570 and str(skipped) == "none"


@needs_squad_dev
def test_fixture_is_the_documented_cut_of_the_dev_set(tmp_path):
    script = ROOT / "tests" / "fixtures" / "squad" / "make_fixture.py"
    result = subprocess.run([sys.executable, str(script), "--source", str(DEV), "--out", str(tmp_path)],
                            capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    for fixture in (SQUAD_SAMPLE, SQUAD_SAMPLE_V2):
        assert (tmp_path / fixture.name).read_bytes() == fixture.read_bytes(), f"{fixture.name} differs: regenerate it (see its README)"
    wrong = subprocess.run([sys.executable, str(script), "--source", str(ROOT / "README.md"), "--out", str(tmp_path / "x")],
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode != 0 and "sha256" in wrong.stderr and not (tmp_path / "x").exists()


def _write(path, data):
    path.write_text(json.dumps({"version": "1.1", "data": data}))
    return path


def test_malformed_files_are_one_line_errors(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(QuadlabError, match="not JSON"):
        read_squad(tmp_path / "bad.json")
    with pytest.raises(QuadlabError, match="lacks 'context'"):
        read_squad(_write(tmp_path / "a.json", [{"title": "t", "paragraphs": [{"qas": []}]}]))
    with pytest.raises(QuadlabError, match="lacks answers"):
        read_squad(_write(tmp_path / "b.json", [{"title": "t", "paragraphs": [{"context": "c", "qas": [{"id": "1", "question": "q"}]}]}]))
    with pytest.raises(QuadlabError, match="does not exist"):
        read_squad(tmp_path / "missing.json")


def test_bad_examples_are_skipped_and_counted(tmp_path):
    data = [{"title": "t", "paragraphs": [
        {"context": "Paris is in France.", "qas": [
            {"id": "ok", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]},
            {"id": "off", "question": "Where?", "answers": [{"text": "France", "answer_start": 3}]},
        ]},
        {"context": "   ", "qas": [{"id": "empty", "question": "What?", "answers": []}]},
    ]}]
    _, articles = read_squad(_write(tmp_path / "s.json", data))
    skipped = Skipped()
    rows = examples_from(articles, skipped)
    assert [r["id"] for r in rows] == ["ok"]
    assert skipped.counts == {"whose answer_start does not match the context": 1, "with an empty context": 1}


def test_sliding_windows_label_the_answer_only_where_it_lies(tokenizer):
    context = " ".join(f"word{i}" for i in range(300)) + " The answer is Zanzibar island today."
    start = context.index("Zanzibar")
    row = {"id": "z", "question": "Where?", "context": context, "answers": {"text": ["Zanzibar island"], "answer_start": [start]}}
    features = train_features(tokenizer, [row], max_length=64, stride=16)
    assert len(features) > 5  # a context far longer than max_length becomes many windows
    labelled = [f for f in features if f["start_positions"] != 0]
    assert labelled, "the window holding the answer is labelled"
    for f in labelled:
        span = tokenizer.decode(f["input_ids"][f["start_positions"] : f["end_positions"] + 1])
        assert normalize_answer(span) == "zanzibar island"
    assert all(f["end_positions"] == 0 for f in features if f["start_positions"] == 0)  # the others point at [CLS]
    windows = eval_features(tokenizer, [row], max_length=64, stride=16)
    assert len(windows) == len(features) and all(w["example_id"] == "z" for w in windows)
    covered = sorted({o[0] for w in windows for o in w["offset_mapping"] if o is not None})
    assert covered[0] == 0 and covered[-1] >= start  # together the windows cover the whole context


def test_postprocess_picks_the_best_span_across_windows():
    row = {"id": "q", "context": "alpha beta gamma delta", "answers": {"text": [], "answer_start": []}}
    offsets = [None, (0, 5), (6, 10), (11, 16), (17, 22), None]
    features = [
        {"example_id": "q", "offset_mapping": offsets, "cls_index": 0},
        {"example_id": "q", "offset_mapping": offsets, "cls_index": 0},
    ]
    start = np.full((2, 6), -10.0)
    end = np.full((2, 6), -10.0)
    start[0, 1], end[0, 2] = 3.0, 3.0  # window 0: "alpha beta", score 6
    start[1, 3], end[1, 4] = 4.0, 4.0  # window 1: "gamma delta", score 8
    predictions, nbest = postprocess([row], features, start, end)
    assert predictions == {"q": "gamma delta"} and nbest["q"][0]["score"] == 8.0
    # an end before its start, or a span longer than max_answer_length, is never chosen
    start[1, 3], end[1, 2] = 9.0, 9.0
    assert postprocess([row], features, start, end, max_answer_length=1)[0]["q"] in ("alpha", "beta", "gamma", "delta")
    # v2.0: the empty answer wins when [CLS] beats the best span by more than the threshold
    start[:, 0], end[:, 0] = 20.0, 20.0
    assert postprocess([row], features, start, end, version_2=True)[0] == {"q": ""}
    assert postprocess([row], features, start, end, version_2=True, null_threshold=100.0)[0]["q"] != ""


@pytest.mark.parametrize("field, value", [("answer_start", True), ("answer_start", "12"), ("answer_start", "١٢"), ("answer_start", 12.0),
                                          ("answer_start", -1), ("answer_start", float("nan")), ("id", 7), ("id", True)])
def test_ids_and_answer_starts_of_the_wrong_type_are_one_line_errors(tmp_path, field, value):
    qa = {"id": "q", "question": "Where is Paris?", "answers": [{"text": "France", "answer_start": 12}]}
    if field == "id":
        qa["id"] = value
    else:
        qa["answers"][0]["answer_start"] = value
    path = _write(tmp_path / "s.json", [{"title": "t", "paragraphs": [{"context": "Paris is in France.", "qas": [qa]}]}])
    with pytest.raises(QuadlabError, match="question 0 lacks an 'id' string, .* 'answer_start': integer >= 0"):
        read_squad(path)
