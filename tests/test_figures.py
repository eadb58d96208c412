"""The attention figures are laid out with margins measured from their labels (analyze.figures), the
head figures by constrained layout, the neuron view by fixed panels: either way every text must land
inside the figure, the titles and axis labels must not cover tick labels, nor panel titles each other."""

import matplotlib
import numpy as np
import pytest
from matplotlib.text import Text

from analyze import figures, neuron

LONG_TITLE = "encoder self-attention, layer 0 head 0; example 0: What is another name to describe the science of teaching?"
WORDPIECES = ["[CLS]", "what", "##ever", "professional", "qualifications", "[SEP]", "un", "##believably", "."]


def drawn_texts(fig):
    """(text, window extent) of every text the renderer draws: tick labels outside the view are not drawn."""
    seen = []
    original = Text.draw

    def draw(self, renderer):
        original(self, renderer)
        if self.get_visible() and self.get_text():
            seen.append((self, self.get_window_extent(renderer)))

    Text.draw = draw
    try:
        fig.canvas.draw()
    finally:
        Text.draw = original
    return seen


def figures_of(draw, monkeypatch):
    kept = []
    monkeypatch.setattr(figures, "save", lambda fig, path: kept.append(fig) or ["x.png", "x.svg"])
    draw()
    return kept


_rng = np.random.default_rng(0)
NEURON_VIEW = {"keys": _rng.random((40, 32)), "products": _rng.random((40, 32)), "masked": np.zeros(40, bool), "query": _rng.random(32),
               "scores": _rng.random(40), "bias": _rng.random(40), "attention": _rng.random(40), "scaling": 0.125}

CASES = {
    "grid of short tokens": lambda p: figures.head_grid(np.random.default_rng(0).random((2, 4, 15, 15)), list("2x^2-24x-216=0") + ["</s>"],
                                                        list("2x^2-24x-216=0") + ["</s>"], "encoder", LONG_TITLE, p),
    "grid of wordpieces": lambda p: figures.head_grid(np.random.default_rng(0).random((3, 2, 9, 9)), WORDPIECES, WORDPIECES, "encoder", LONG_TITLE, p),
    "grid of positions": lambda p: figures.head_grid(np.random.default_rng(0).random((2, 3, 640, 30)), None, None, "cross", "a short title", p),
    "one head, long title": lambda p: figures.single_head(np.random.default_rng(0).random((9, 9)), WORDPIECES, WORDPIECES, "encoder", LONG_TITLE, p),
    "one head, long solution": lambda p: figures.single_head(np.random.default_rng(0).random((300, 20)), ["<start>"] + list("D=1234;") * 43,
                                                             list("-8x^2-2768x-239432=0"), "cross", LONG_TITLE, p),
    "two layers by tokens": lambda p: figures.layer_summary(np.random.default_rng(0).random((2, 9)), WORDPIECES, LONG_TITLE, p, "key token"),
    "roles": lambda p: figures.role_share(np.random.default_rng(0).random((4, 7)) / 7, ["[CLS]", "question", "context", "answer", "[SEP]", "punct", "text_pair"],
                                          np.full(7, 1 / 7), LONG_TITLE, p),
    "one statistic (heads)": lambda p: figures.layer_head_panels({"head context variance": np.random.default_rng(0).random((2, 4))},
                                                                 "encoder self-attention: variance of each head's context vector", p),
    "symbol shares (heads)": lambda p: figures.symbol_shares({s: [{"layer": l, "share": 0.1 * l, "ci": [0.0, 0.2], "baseline": 0.1} for l in range(3)]
                                                              for s in ("x", "=")}, LONG_TITLE + " " + LONG_TITLE, p),
    "neuron view, d_kv 32": lambda p: neuron._draw(NEURON_VIEW, (["<start>"] + list("D=1234;") * 6)[:40], "Neuron view: cross-attention, layer 3 "
                                                   "head 7, query token 12 'x'; example 0", p),
}


@pytest.mark.parametrize("case", CASES)
def test_every_text_lies_inside_the_figure_and_labels_cover_no_tick_label(case, monkeypatch, tmp_path):
    (fig,) = figures_of(lambda: CASES[case](tmp_path / "figure"), monkeypatch)
    texts = drawn_texts(fig)
    width, height = fig.bbox.width, fig.bbox.height
    assert len(texts) > 10
    for text, box in texts:
        assert box.x0 >= -1 and box.y0 >= -1 and box.x1 <= width + 1 and box.y1 <= height + 1, (text.get_text(), box.bounds, (width, height))
    ticks = [box for text, box in texts if any(text in ax.get_xticklabels() + ax.get_yticklabels() for ax in fig.axes)]
    placed = [(text, box) for text, box in texts if text in fig.texts or any(text is ax.title for ax in fig.axes)]
    assert len(ticks) > 5 and placed
    for text, box in placed:
        for tick in ticks:
            assert not box.overlaps(tick), (text.get_text(), box.bounds, tick.bounds)
    titles = [(text, box) for text, box in texts if any(text is ax.title for ax in fig.axes)]
    for i, (text, box) in enumerate(titles):
        for other, other_box in titles[i + 1:]:
            assert not box.overlaps(other_box), (text.get_text(), other.get_text())
    matplotlib.pyplot.close(fig)


def test_a_long_title_is_wrapped_at_spaces_into_lines_no_wider_than_asked():
    text, lines = figures.wrapped(LONG_TITLE, 10, 3.0)
    assert lines == text.count("\n") + 1 >= 3
    assert text.replace("\n", " ") == LONG_TITLE
    assert all(figures.text_inches([line], 10) <= 3.0 for line in text.split("\n"))
    assert figures.wrapped("short", 10, 3.0) == ("short", 1)
    assert figures.wrapped("unbreakable" * 10, 10, 1.0) == ("unbreakable" * 10, 1)
    assert figures.wrapped("two\nlines", 10, 3.0) == ("two\nlines", 2)


def test_measured_text_grows_with_its_length_and_size():
    one, three = figures.text_inches(["x"], 10), figures.text_inches(["xxx"], 10)
    assert 0.05 < one < 0.15 and 2.5 < three / one < 3.5
    assert figures.text_inches(["xxx"], 20) == pytest.approx(2 * three, rel=0.02)
    assert figures.text_inches(["a", "xxx\nb"], 10) == pytest.approx(three)
    assert figures.text_inches([], 10) == 0


def test_a_grid_labels_its_short_side_with_tokens_and_its_long_side_with_whole_positions(monkeypatch, tmp_path):
    equation = list("-8x^2-2768x-239432=0") + ["</s>"]
    (fig,) = figures_of(lambda: figures.head_grid(np.random.default_rng(0).random((2, 2, 300, len(equation))), ["<start>"] * 300, equation,
                                                  "cross", "cross-attention", tmp_path / "grid"), monkeypatch)
    drawn = {text for text, _ in drawn_texts(fig)}
    bottom_left = fig.axes[2]
    assert [t.get_text() for t in bottom_left.get_xticklabels()] == equation
    positions = [t.get_text() for t in bottom_left.get_yticklabels() if t in drawn]
    assert len(positions) >= 3 and all(p.isdigit() for p in positions) and "<start>" not in positions
    matplotlib.pyplot.close(fig)
