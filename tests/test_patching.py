"""`cli.py patch`: the quadratic task's pairs, the hooks (a state patched into itself changes nothing,
the whole last layer restores the clean run, batched patches equal one at a time), the command end
to end, and its bad inputs."""

import json
import random

import numpy as np
import pytest
import torch
from hypothesis import given, settings

from analyze import patching
from gen.dataset import GenOptions, generate
from gen.equations import REVERSED_MARK, Ranges, reverse_digits, write_equation
from train import tasks
from train.config import resolve
from train.quadratic import EQUATION_ROLES, PAGE_ROLES, corruption, equation_roles, root_class
from train.runs import analysis

from conftest import equations, quadlab


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    root = tmp_path_factory.mktemp("patch-data")
    generate(GenOptions(rows=300, seed=5, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), root / "quadratic", workers=1)
    return root


def tiny_run(data, run_dir, steps: int):
    """A tiny quadratic run of `steps` steps: the checks need a model, not a good one."""
    config = resolve("tiny", None, {"data": str(data), "run_dir": str(run_dir), "val_size": 10, "eval_limit": 4,
                                    "max_steps": steps, "eval_every": steps, "batch_size": 16})
    tasks.module("quadratic").train_run(config, progress=False)
    return run_dir


def double_task(run_dir):
    task = analysis(run_dir, "patch")
    # float64: the checks compare runs whose batches differ in size, which round differently in float32
    task.model.double().eval()
    return task


@pytest.fixture(scope="module")
def run(data, tmp_path_factory):
    return tiny_run(data / "quadratic", tmp_path_factory.mktemp("patch-run") / "run", steps=8)


@pytest.fixture(scope="module")
def task(run):
    return double_task(run)


@given(equations())
@settings(max_examples=200, deadline=None)
def test_a_corruption_keeps_the_tokens_and_changes_the_root_class(eq):
    a, b, c, _ = eq
    largest = {"a": 30, "b": 30_000, "c": 7_500_000}  # the default ranges' largest sizes
    found = corruption(a, b, c, random.Random(a * 7 + b), largest)
    if found is None:  # no same-length change found that flips the class (always so when a and c have opposite signs)
        return
    name, changed = found
    clean, corrupted = write_equation(a, b, c), write_equation(*changed)
    assert len(clean) == len(corrupted) and equation_roles(list(clean)) == equation_roles(list(corrupted))
    assert [k for k, u, v in zip("abc", (a, b, c), changed) if u != v] == [name]
    assert all(abs(v) <= largest[k] for k, v in zip("abc", changed))
    assert root_class(*changed) != root_class(a, b, c)


def test_no_corruption_where_none_can_change_the_class():
    assert corruption(1, 0, -4, random.Random(0)) is None  # D = b^2 + 16a > 0 for every same-length a, b, c


def test_pairs_align_and_score_the_clean_value_of_d(task):
    pairs = task.patch_pairs(12, seed=3)
    tok = task.tokenizer
    assert pairs["clean"].shape == pairs["corrupted"].shape == pairs["roles"].shape
    assert torch.equal(pairs["clean"] != tok.pad_token_id, pairs["corrupted"] != tok.pad_token_id)
    for i, pair in enumerate(pairs["pairs"]):
        a, b, c = (task.rows[k][pair["row"]] for k in "abc")
        assert pair["clean"] == write_equation(a, b, c) and pair["clean_class"] != pair["corrupted_class"]
        disc = str(b * b - 4 * a * c)
        decoder = tok.convert_ids_to_tokens(pairs["decoder_input_ids"][i][pairs["decoder_attention_mask"][i].bool()])
        (start, _), *_ = pairs["targets"]["D digits"][i]
        # teacher-forced on the clean solution up to D's value: position `start` predicts its first character
        solution = task.rows["solution"][pair["row"]]
        assert "".join(decoder[1 : start + 1]) == solution[:start] and solution[start:].startswith(disc + ";")
        scored = "".join(tok.convert_ids_to_tokens([ids[0] for _, ids in pairs["targets"]["D digits"][i]]))
        assert scored == pair["scored"] == disc[: 2 + disc.startswith("-")]
        (position, allowed), = pairs["targets"]["root class"][i]
        assert position == start and disc[0] in tok.convert_ids_to_tokens(allowed)
        n = int(pairs["attention_mask"][i].sum())
        assert [EQUATION_ROLES[r] for r in pairs["roles"][i][:n]] == equation_roles(pairs["tokens"][i][:n])
    assert len({p["row"] for p in pairs["pairs"]}) == 12
    assert task.patch_pairs(12, seed=3)["pairs"] == pairs["pairs"] != task.patch_pairs(12, seed=4)["pairs"]  # the seed decides


@pytest.mark.parametrize("fmt", ["published-reversed", "reversed"])
def test_pairs_of_a_run_that_writes_numbers_reversed(fmt, tmp_path):
    """D's value read back from its reversed digits, scored on the digits written first (its last),
    and no pair whose D > 0 is written starting with `0`, the one-root class's first character."""
    generate(GenOptions(rows=300, seed=5, format=fmt, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), tmp_path / "data", workers=1)
    task = analysis(tiny_run(tmp_path / "data", tmp_path / "run", steps=2), "patch")
    pairs = task.patch_pairs(12, seed=3)
    tok = task.tokenizer
    for i, pair in enumerate(pairs["pairs"]):
        a, b, c = (task.rows[k][pair["row"]] for k in "abc")
        written = reverse_digits(str(b * b - 4 * a * c))
        solution = task.rows["solution"][pair["row"]]
        (start, _), *_ = pairs["targets"]["D digits"][i]
        assert solution[:start].endswith("=") and solution[start:].startswith(written + ";")
        assert pair["scored"] == written[: 2 + written.startswith("-")]
        (position, allowed), = pairs["targets"]["root class"][i]
        assert written[0] in tok.convert_ids_to_tokens(allowed)
        assert (written[0] == "0") == (pair["clean_class"] == "one")
    # not only the rows whose D reads the same both ways (0, 1, 121, -4, ...)
    values = [str(task.rows["b"][p["row"]] ** 2 - 4 * task.rows["a"][p["row"]] * task.rows["c"][p["row"]]) for p in pairs["pairs"]]
    assert sum(v != reverse_digits(v) for v in values) >= 3


def test_recorded_states_are_the_encoders_hidden_states(task):
    pairs = task.patch_pairs(4, seed=0)
    ids, mask = pairs["clean"], pairs["attention_mask"]
    states = patching.encoder_states(task.model, ids, mask)
    with torch.no_grad():
        hidden = task.model.get_encoder()(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states
    assert states.shape[0] == len(hidden) == task.model.config.num_layers + 1
    for recorded, theirs in zip(states, hidden):
        torch.testing.assert_close(recorded, theirs, rtol=0, atol=1e-12)


def test_patching_a_state_into_itself_changes_nothing(task):
    pairs = task.patch_pairs(5, seed=1)
    same = {**pairs, "corrupted": pairs["clean"]}
    found = patching.patch_all(task.model, same, batch_size=64)
    valid = pairs["attention_mask"].bool()
    for name, patched in found["patched"].items():
        assert torch.isnan(patched[~valid[:, None, :].expand_as(patched)]).all()  # padding is never patched
        expected = found["clean"][name][:, None, None].expand_as(patched)
        mask = valid[:, None, :].expand_as(patched)
        torch.testing.assert_close(patched[mask], expected[mask], rtol=0, atol=1e-9)


def test_patching_every_position_of_the_last_layer_restores_the_clean_run(task):
    model, pairs = task.model, task.patch_pairs(8, seed=2)
    n, width = pairs["clean"].shape
    targets = patching.score_targets(pairs["targets"], model.config.vocab_size)
    every = torch.arange(n)
    clean, clean_logits = patching.forward_scores(model, pairs, targets, every, pairs["clean"])
    corrupted, corrupted_logits = patching.forward_scores(model, pairs, targets, every, pairs["corrupted"])
    states = patching.encoder_states(model, pairs["clean"], pairs["attention_mask"])
    last = torch.full((n,), len(states) - 1)
    with patching.patched(model, last, pairs["attention_mask"].bool(), states[-1]), torch.no_grad():
        restored, logits = patching.forward_scores(model, pairs, targets, every, pairs["corrupted"])
    torch.testing.assert_close(logits, clean_logits, rtol=0, atol=1e-9)
    assert not torch.allclose(corrupted_logits, clean_logits, atol=1e-6)  # the corruption did change the output
    for name in targets:
        gap = clean[name] - corrupted[name]
        apart = gap.abs() > 1e-6
        assert apart.any()
        np.testing.assert_allclose(((restored[name] - corrupted[name]) / gap)[apart].numpy(), 1.0, atol=1e-4)


def test_batched_patching_equals_one_patch_at_a_time(task):
    """Against a loop that patches one (layer, position) per forward pass, with its own hook and
    the clean states from the model's own `hidden_states`."""
    model, pairs = task.model, task.patch_pairs(2, seed=4)
    batched = patching.patch_all(model, pairs, batch_size=7)  # batches cut across pairs and layers
    sites = patching.sites(model)
    targets = patching.score_targets(pairs["targets"], model.config.vocab_size)
    for p in range(2):
        one = torch.tensor([p])
        with torch.no_grad():
            hidden = model.get_encoder()(input_ids=pairs["clean"][one], attention_mask=pairs["attention_mask"][one],
                                         output_hidden_states=True).hidden_states
        for layer, (module, before) in enumerate(sites):
            for t in range(int(pairs["attention_mask"][p].sum())):
                def swap(state, layer=layer, t=t):
                    state = state.clone()
                    state[0, t] = hidden[layer][0, t]
                    return state

                handle = (module.register_forward_pre_hook(lambda m, args: (swap(args[0]), *args[1:])) if before
                          else module.register_forward_hook(lambda m, args, out: swap(out)))
                try:
                    with torch.no_grad():
                        single, _ = patching.forward_scores(model, pairs, targets, one, pairs["corrupted"][one])
                finally:
                    handle.remove()
                for name in targets:
                    assert float(batched["patched"][name][p, layer, t]) == pytest.approx(float(single[name][0]), abs=1e-8)


def test_nothing_to_restore_says_whether_the_model_is_unsure_or_the_prefix_decides():
    def summary(clean, corrupted, side="encoder"):
        score = {"pairs_used": 0, "pairs_dropped": 20, "mean": [[None]], "ci": [[[None, None]]], "roles": ["a"],
                 "clean_mean": clean, "corrupted_mean": corrupted}
        result = {"scores": {"D digits": score}, "layers": ["embeddings"], "settings": {"tolerance_nats": patching.TOLERANCE, "side": side}}
        return patching.summary_lines(result)[0]

    # the best model on padded-d-plain: both runs write the clean D (its work is in the prefix)
    worked = summary(-0.0009, -0.0014)
    assert "teacher-forced prefix" in worked and "--side decoder" in worked and "-0.001 against -0.001" in worked
    assert "train it longer" not in worked
    assert "--side decoder" not in summary(-0.0009, -0.0014, side="decoder") and "not the decoder" in summary(-0.0009, -0.0014, side="decoder")
    unsure = summary(-2.3, -2.35)  # a barely trained model: neither run is sure of the clean answer
    assert "train it longer" in unsure and "prefix" not in unsure


def test_patch_end_to_end(run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "figs"
    status, printed, err = quadlab(capsys, monkeypatch, "patch", run, "--pairs", 10, "--batch-size", 50, "--seed", 1, "--out", out)
    assert status == 0, err
    assert "D digits:" in printed and "root class:" in printed and str(out) in printed
    result = json.loads((out / "patching.json").read_text())
    layers = len(result["layers"])
    assert layers == 3 and result["layers"][0] == "embeddings" and result["hidden_states_index"] == [0, 1, 2]
    assert result["settings"]["pairs"] == 10 and len(result["pairs"]) == 10
    arrays = np.load(out / "patching.npz")
    for name, s in result["scores"].items():
        assert s["pairs_used"] + s["pairs_dropped"] == 10
        roles = s["roles"]
        assert set(roles) <= set(EQUATION_ROLES) | {patching.CHANGED} and {"a", "b", "c", "x", "=", patching.CHANGED} <= set(roles)
        assert np.array(s["mean"], dtype=float).shape == (layers, len(roles))
        assert np.array(s["ci"], dtype=float).shape == (layers, len(roles), 2)
        assert len(s["n"]) == len(roles) and all(0 <= k <= s["pairs_used"] for k in s["n"])
        assert arrays[f"{name}/clean"].shape == arrays[f"{name}/corrupted"].shape == (10,)
        assert arrays[f"{name}/patched"].shape[:2] == (10, layers)
        example = np.array(result["example"]["restored"][name], dtype=float)
        assert example.shape == (layers, len(result["example"]["tokens"]))
    for stem in ("patching-roles", "patching-example"):
        assert (out / f"{stem}.png").stat().st_size > 0 and (out / f"{stem}.svg").stat().st_size > 0
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no partial directory left



def test_patch_where_every_pair_is_dropped_patches_nothing_and_says_so(run, tmp_path, capsys, monkeypatch):
    """The best model's encoder: no pair has anything to restore. (Here a tolerance no pair
    reaches stands in for it.) Nothing is patched, and the figure's panels say why they are empty."""
    monkeypatch.setattr(patching, "TOLERANCE", 1e9)
    batches = []
    forward = patching.forward_scores
    monkeypatch.setattr(patching, "forward_scores", lambda *args, **keys: batches.append(len(args[3])) or forward(*args, **keys))
    out = tmp_path / "figs"
    status, printed, err = quadlab(capsys, monkeypatch, "patch", run, "--pairs", 6, "--out", out)
    assert status == 0, err
    assert batches == [6, 6]  # the clean and corrupted scores; the encoder's states come from encoder_states, no patch follows
    assert printed.count("0 pairs (6 dropped") == 2
    arrays = np.load(out / "patching.npz")
    assert all(np.isnan(arrays[f"{name}/patched"]).all() for name in ("D digits", "root class"))
    assert (out / "patching-example.svg").read_text().count("this pair is dropped from it") == 2

@pytest.fixture(scope="module")
def classify_run(data, tmp_path_factory):
    root = tmp_path_factory.mktemp("patch-classify")
    config = resolve("classify", None, {"data": str(data / "quadratic"), "run_dir": str(root / "run"), "d_model": 16, "d_ff": 32, "num_layers": 1,
                                        "num_heads": 2, "max_length": 64, "val_size": 10, "max_steps": 2, "eval_every": 2, "batch_size": 8})
    tasks.module("classify").train_run(config, progress=False)
    return root / "run"


def _refused(capsys, *argv) -> str:
    """The error line of a command that must fail: exit 2, one line on stderr, no traceback."""
    import cli

    with pytest.raises(SystemExit) as stop:
        cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    assert stop.value.code == 2 and out == "" and err.count("\n") == 1 and "Traceback" not in err, err
    return err


def test_a_task_without_pairs_and_too_few_rows_are_refused(run, classify_run, capsys, tmp_path):
    assert "patching needs a task that provides pairs" in _refused(capsys, "patch", classify_run, "--out", tmp_path / "a")
    assert "--pairs" in _refused(capsys, "patch", run, "--pairs", 5000, "--out", tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


# ---------------------------------------------------------------------------------------------
# The decoder side: one equation, its written work with one digit of b^2 changed


@pytest.fixture(scope="module", params=["reversed", "long"])
def page_run(request, tmp_path_factory):
    root = tmp_path_factory.mktemp(f"page-{request.param}")
    generate(GenOptions(rows=300, seed=5, format=request.param, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), root / "data", workers=1)
    return tiny_run(root / "data", root / "run", steps=2)


@pytest.fixture(scope="module")
def page_task(page_run):
    return double_task(page_run)


def test_page_pairs_change_one_digit_of_b2_in_ds_statement(page_task):
    task, tok = page_task, page_task.tokenizer
    pairs = task.patch_pairs(12, seed=3, side="decoder")
    assert pairs["side"] == "decoder" and pairs["role_names"] == list(PAGE_ROLES) and set(pairs["targets"]) == {"D digits"}
    marked = task.rows["solution"][0].startswith(REVERSED_MARK)
    for i, pair in enumerate(pairs["pairs"]):
        a, b, c = (task.rows[k][pair["row"]] for k in "abc")
        solution = task.rows["solution"][pair["row"]]
        assert tok.decode(pairs["input_ids"][i][pairs["attention_mask"][i].bool()], skip_special_tokens=True) == write_equation(a, b, c)
        n = int(pairs["decoder_attention_mask"][i].sum())
        clean, corrupted = (tok.convert_ids_to_tokens(pairs[k][i][:n]) for k in ("clean", "corrupted"))
        (start, _), *_ = pairs["targets"]["D digits"][i]
        assert "".join(clean[1 : start + 1]) == solution[:start] and solution[:start].endswith("=")
        written = reverse_digits(str(b * b - 4 * a * c)) if marked else str(b * b - 4 * a * c)
        assert solution[start:].startswith(written) and pair["scored"] == written[: 2 + written.startswith("-")]
        diff = [j for j in range(n) if clean[j] != corrupted[j]]
        assert len(diff) == 1 and clean[diff[0]].isdigit() and corrupted[diff[0]].isdigit()
        read = (lambda s: int(reverse_digits(s))) if marked else int
        assert read(pair["x"]) == b * b and len(pair["corrupted_x"]) == len(pair["x"]) and pair["corrupted_x"] != pair["x"]
        statement = solution[solution.rindex(";", 0, start) + 1 : start]  # D's statement up to its value
        assert f"={pair['x']}-" in statement and "".join(corrupted[1 : start + 1]).endswith(statement.replace(pair["x"], pair["corrupted_x"], 1))
        other = read(pair["corrupted_x"]) - 4 * a * c  # what a model that subtracts on the page writes instead
        assert not (reverse_digits(str(other)) if marked else str(other)).startswith(pair["scored"])
        patchable = torch.nonzero(pairs["patchable"][i]).flatten().tolist()
        assert patchable == list(range(diff[0], start + 1))  # from the changed digit to the `=` before D's value
        roles = [PAGE_ROLES[r] for r in pairs["roles"][i][patchable]]
        assert roles[0] == "b^2 (X)" and roles[-1] == "= (D's value next)" and "4ac (Y)" in roles and "minus" in roles
        assert (pairs["roles"][i][: diff[0]] == -1).all()
    assert task.patch_pairs(12, seed=3, side="decoder")["pairs"] == pairs["pairs"] != task.patch_pairs(12, seed=4, side="decoder")["pairs"]


def test_decoder_patching_at_the_embeddings_restores_exactly_at_the_changed_digit(page_task):
    """The two runs differ only in one token, so patching its embedding makes the corrupted run the
    clean one, and patching any other position's embedding changes nothing."""
    model, pairs = page_task.model, page_task.patch_pairs(4, seed=1, side="decoder")
    states = patching.clean_states(model, pairs)
    with torch.no_grad():
        hidden = model(input_ids=pairs["input_ids"], attention_mask=pairs["attention_mask"], decoder_input_ids=pairs["clean"],
                       decoder_attention_mask=pairs["decoder_attention_mask"], output_hidden_states=True).decoder_hidden_states
    assert states.shape[0] == len(hidden) == model.config.num_decoder_layers + 1
    for recorded, theirs in zip(states, hidden):
        torch.testing.assert_close(recorded, theirs, rtol=0, atol=1e-12)
    found = patching.patch_all(model, pairs, batch_size=9)
    patched, clean, corrupted = found["patched"]["D digits"], found["clean"]["D digits"], found["corrupted"]["D digits"]
    assert (clean - corrupted).abs().min() > 1e-6  # the changed digit changes the scored log-probability
    for i in range(4):
        patchable = torch.nonzero(pairs["patchable"][i]).flatten()
        changed = int(patchable[0])
        assert float(patched[i, 0, changed]) == pytest.approx(float(clean[i]), abs=1e-9)
        assert torch.allclose(patched[i, 0, patchable[1:]], corrupted[i].expand(len(patchable) - 1), atol=1e-9, rtol=0)
        assert torch.isnan(patched[i, :, :changed]).all() and not torch.isnan(patched[i][:, patchable]).any()
        # the last layer at `=` (the position that predicts D's first character) restores that character exactly
        assert torch.isfinite(patched[i, -1, int(patchable[-1])])



def test_a_pair_that_every_score_drops_is_not_patched(page_task, monkeypatch):
    """With a tolerance (the command's: TOLERANCE), the pairs whose clean and corrupted scores lie
    within it for every score get no patch and no forward pass; the others, the same patches."""
    model, pairs = page_task.model, page_task.patch_pairs(4, seed=1, side="decoder")
    whole = patching.patch_all(model, pairs, batch_size=9)
    same = {**pairs, "corrupted": pairs["corrupted"].clone()}
    same["corrupted"][[0, 2]] = pairs["clean"][[0, 2]]  # nothing to restore in pairs 0 and 2, for any score
    layers = len(patching.clean_states(model, pairs))
    rows, forward = [], patching.forward_scores
    monkeypatch.setattr(patching, "forward_scores", lambda model, pairs, targets, index, *rest, **keys: rows.append(len(index))
                        or forward(model, pairs, targets, index, *rest, **keys))
    found = patching.patch_all(model, same, batch_size=9, tolerance=1e-6)  # pairs 1 and 3 differ by more (the test above)
    # the clean and corrupted scores and the clean states of all 4 pairs, then the patches of pairs 1 and 3 only
    assert rows[:3] == [4, 4, 4] and sum(rows[3:]) == layers * int(pairs["patchable"][[1, 3]].sum())
    for name, patched in found["patched"].items():
        assert torch.isnan(patched[[0, 2]]).all()
        torch.testing.assert_close(patched[[1, 3]], whole["patched"][name][[1, 3]], rtol=0, atol=1e-9, equal_nan=True)
    result = patching.patch_all(model, same, batch_size=9)["patched"]["D digits"]  # no tolerance: every pair, the dropped ones too
    assert not torch.isnan(result[0][:, pairs["patchable"][0].bool()]).any()

def test_decoder_patch_end_to_end(page_run, run, tmp_path, capsys, monkeypatch):
    out = tmp_path / "page"
    status, printed, err = quadlab(capsys, monkeypatch, "patch", page_run, "--side", "decoder", "--pairs", 6, "--batch-size", 40, "--out", out)
    assert status == 0, err
    assert "D digits:" in printed and "root class" not in printed
    result = json.loads((out / "patching.json").read_text())
    assert result["settings"]["side"] == "decoder" and len(result["pairs"]) == 6
    s = result["scores"]["D digits"]
    assert set(s["roles"]) <= set(PAGE_ROLES) | {patching.CHANGED} and patching.CHANGED in s["roles"]
    example = np.array(result["example"]["restored"]["D digits"], dtype=float)
    assert example.shape == (len(result["layers"]), len(result["example"]["positions"])) == (len(result["layers"]), len(result["example"]["tokens"]))
    assert (out / "patching-roles.png").stat().st_size > 0 and (out / "patching-example.png").stat().st_size > 0
    # the published format writes no operands for D: nothing to corrupt on the page
    said = _refused(capsys, "patch", run, "--side", "decoder", "--pairs", 2, "--out", tmp_path / "none")
    assert "writes D's operands" in said and "only 0 of" in said and "--pairs 0" not in said  # no count of pairs would do
    assert not (tmp_path / "none").exists()
