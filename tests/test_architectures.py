"""Attention capture and head interventions on every supported architecture, each a tiny random
model built from its config (no download): T5, mT5, BERT, RoBERTa, DistilBERT, DeBERTa-v2, ELECTRA."""

import copy

import numpy as np
import pytest
import torch

from analyze import interventions
from analyze.attention import capture

VOCAB, HEADS, LENGTH = 100, 4, 7
ARCHITECTURES = ["t5", "mt5", "bert", "roberta", "distilbert", "deberta-v2", "electra"]
# a row of each length: the second is padded, so every mask has something to hide
ENCODER_MASK = torch.tensor([[1] * LENGTH, [1] * 5 + [0] * 2])
DECODER_MASK = torch.tensor([[1] * 6, [1] * 4 + [0] * 2])


def build(name: str, attn_implementation: str = "eager"):
    import transformers as tf

    torch.manual_seed(0)
    # weights 10 times the default spread, so that one head moves the logits far above float32 rounding
    bert_like = dict(vocab_size=VOCAB, hidden_size=32, num_hidden_layers=2, num_attention_heads=HEADS, intermediate_size=64,
                     max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.2)
    if name in ("t5", "mt5"):
        t5 = dict(vocab_size=VOCAB, d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=HEADS, dropout_rate=0.0,
                  pad_token_id=0, decoder_start_token_id=0)
        model = tf.T5ForConditionalGeneration(tf.T5Config(**t5)) if name == "t5" else tf.MT5ForConditionalGeneration(tf.MT5Config(**t5))
    elif name == "bert":
        model = tf.BertForSequenceClassification(tf.BertConfig(**bert_like))
    elif name == "roberta":
        model = tf.RobertaForQuestionAnswering(tf.RobertaConfig(**bert_like, pad_token_id=1))
    elif name == "electra":
        model = tf.ElectraForQuestionAnswering(tf.ElectraConfig(**bert_like, embedding_size=16))
    elif name == "deberta-v2":  # as DeBERTa-v3: relative positions in buckets, both disentangled terms
        model = tf.DebertaV2ForSequenceClassification(tf.DebertaV2Config(
            **bert_like, relative_attention=True, pos_att_type=["p2c", "c2p"], position_buckets=16, max_relative_positions=32,
            position_biased_input=False, share_att_key=True, norm_rel_ebd="layer_norm"))
    else:
        model = tf.DistilBertForQuestionAnswering(tf.DistilBertConfig(vocab_size=VOCAB, dim=32, n_layers=2, n_heads=HEADS, hidden_dim=64,
                                                                      max_position_embeddings=64, dropout=0.0, attention_dropout=0.0,
                                                                      initializer_range=0.2))
    if attn_implementation != model.config._attn_implementation:
        model.set_attn_implementation(attn_implementation)
    model = model.float().eval()
    pad = model.config.pad_token_id or 0
    input_ids = torch.randint(5, VOCAB, (2, LENGTH)).masked_fill(ENCODER_MASK == 0, pad)
    inputs = {"input_ids": input_ids, "attention_mask": ENCODER_MASK}
    if model.config.is_encoder_decoder:
        decoder = torch.randint(5, VOCAB, DECODER_MASK.shape).masked_fill(DECODER_MASK == 0, pad)
        decoder[:, 0] = 0  # T5's decoder start
        inputs.update(decoder_input_ids=decoder, decoder_attention_mask=DECODER_MASK)
    return model, inputs


@pytest.fixture(scope="module", params=ARCHITECTURES)
def arch(request):
    return build(request.param)


def _out(model, inputs) -> torch.Tensor:
    with torch.no_grad():
        out = model(**inputs)
    return out.logits if hasattr(out, "logits") else torch.cat([out.start_logits, out.end_logits])


def _masks(inputs) -> dict:
    """{kind: (query mask, key mask)} as booleans."""
    enc = inputs["attention_mask"].bool()
    if "decoder_attention_mask" not in inputs:
        return {"encoder": (enc, enc)}
    dec = inputs["decoder_attention_mask"].bool()
    return {"encoder": (enc, enc), "decoder": (dec, dec), "cross": (dec, enc)}


def _closed(layout, kind, layer, head):
    gates = {kind: torch.ones(1, *layout[kind])}
    gates[kind][0, layer, head] = 0
    return gates


def _assert_rows_are_distributions(attention, q_mask, k_mask):
    """attention (B, H, Q, K) of one layer: every valid query puts all its weight on valid keys."""
    sums = attention.masked_fill(~k_mask[:, None, None, :], 0).sum(dim=-1)[q_mask[:, None, :].expand(-1, attention.shape[1], -1)]
    assert torch.allclose(sums, torch.ones_like(sums), atol=1e-5)


def test_capture_gives_every_kind_with_rows_that_sum_to_one(arch):
    model, inputs = arch
    captured = capture(model, **inputs)
    masks = _masks(inputs)
    assert set(captured) == set(masks)
    for kind, (attention, q_mask, k_mask) in captured.items():
        assert attention.dtype == torch.float32
        assert attention.shape == (2, 2, HEADS, q_mask.shape[1], k_mask.shape[1])
        assert torch.equal(q_mask, masks[kind][0]) and torch.equal(k_mask, masks[kind][1])
        for layer in attention:
            _assert_rows_are_distributions(layer, q_mask, k_mask)
    if "decoder" in captured:  # causal: no query sees a later token
        later = torch.ones(6, 6, dtype=torch.bool).triu(1)
        assert float(captured["decoder"][0][..., later].abs().max()) == 0


def test_open_gates_change_nothing_and_a_closed_gate_removes_the_head(arch):
    model, inputs = arch
    layout = interventions.shape(model)
    assert all(heads == HEADS and layers == 2 for layers, heads in layout.values())
    reference = _out(model, inputs)
    with interventions.gated(model, {k: torch.ones(1, *s) for k, s in layout.items()}):
        assert torch.allclose(_out(model, inputs), reference, atol=1e-6)
    for kind in layout:
        with interventions.gated(model, _closed(layout, kind, 1, 2)):
            gated = _out(model, inputs)
        assert float((gated - reference).abs().max()) > 1e-2, kind  # the head mattered
        # a closed gate is the head's slice of the projection input set to 0: its columns of the weight
        zeroed = copy.deepcopy(model)
        site = interventions.sites(zeroed)[kind][1]
        with torch.no_grad():
            site.projection.weight[:, 2 * site.head_dim : 3 * site.head_dim] = 0
        assert torch.allclose(_out(zeroed, inputs), gated, atol=1e-6), kind


def test_blocked_keys_get_no_attention_in_the_blocked_layer_only(arch):
    model, inputs = arch
    before = capture(model, **inputs)
    for kind, (attention, q_mask, k_mask) in before.items():
        keys = torch.zeros(k_mask.shape, dtype=torch.bool)
        keys[:, 2] = True  # a valid key in both rows
        with interventions.blocked(model, {kind: [1]}, keys):
            after, _, _ = capture(model, **inputs)[kind]
        valid_queries = q_mask[:, None, :].expand(-1, HEADS, -1)
        seeing = valid_queries[:, :, 2:]  # queries from position 2 on: the decoder's earlier ones cannot see key 2
        assert float(attention[1][:, :, 2:, 2][seeing].min()) > 1e-3, kind  # it had attention to lose
        assert float(after[1][..., 2][valid_queries].abs().max()) < 1e-6, kind
        _assert_rows_are_distributions(after[1], q_mask, k_mask & ~keys)
        assert torch.allclose(after[0], attention[0], atol=1e-6), kind  # layer 0 runs before the block


@pytest.mark.parametrize("name", [a for a in ARCHITECTURES if a != "deberta-v2"])  # DeBERTa-v2 has eager attention only
def test_blocking_acts_alike_under_sdpa_and_eager(name):
    # the attention gets a boolean mask under sdpa, an additive one under eager, none when nothing is padded
    outputs = []
    for implementation in ("sdpa", "eager"):
        model, inputs = build(name, implementation)
        kinds = interventions.shape(model)
        for rows in (inputs["attention_mask"], torch.ones_like(inputs["attention_mask"])):
            keys = torch.zeros(inputs["input_ids"].shape, dtype=torch.bool)
            keys[:, 1] = True
            with interventions.blocked(model, {k: [0, 1] for k in kinds if k != "decoder"}, keys):
                outputs.append(_out(model, {**inputs, "attention_mask": rows}))
    unblocked = _out(model, inputs)
    assert torch.allclose(outputs[0], outputs[2], atol=1e-5) and torch.allclose(outputs[1], outputs[3], atol=1e-5)
    assert float((outputs[2] - unblocked).abs().max()) > 1e-2


def test_context_variance_is_positive_and_zero_for_a_closed_head(arch):
    model, inputs = arch
    layout = interventions.shape(model)
    masks = {kind: q for kind, (q, _) in _masks(inputs).items()}
    for gates in ({}, {kind: _closed(layout, kind, 0, 1)[kind] for kind in layout}):
        recorder = interventions.ContextVariance(model)
        with recorder, interventions.gated(model, gates):
            recorder.query_masks = masks
            _out(model, inputs)
        result = recorder.result()
        assert set(result) == set(layout)
        for kind, (layers, heads) in layout.items():
            head, layer = result[kind]["head"], result[kind]["layer"]
            assert head.shape == (layers, heads) and layer.shape == (layers,)
            assert np.isfinite(head).all() and (layer > 0).all()
            if gates:
                assert head[0, 1] == 0 and (head[0, [0, 2, 3]] > 0).all() and (head[1] > 0).all()
            else:
                assert (head > 0).all()


def test_an_unsupported_model_fails_in_one_line_naming_the_supported_ones():
    from transformers import GPT2Config, GPT2LMHeadModel

    from gen import QuadlabError

    with pytest.raises(QuadlabError) as error:
        interventions.sites(GPT2LMHeadModel(GPT2Config(n_layer=1, n_head=2, n_embd=8, vocab_size=20)))
    message = str(error.value)
    assert "\n" not in message and "'gpt2'" in message
    for name in ("T5", "BERT", "RoBERTa", "DistilBERT", "DeBERTa-v2", "ELECTRA"):
        assert name in message
