import torch
from transformers.cache_utils import DynamicLayer

from train.kv_cache import InPlaceSelfAttentionLayer


def test_self_attention_layer_holds_what_the_library_layer_holds_through_growth_and_reorders():
    """Copies only, so equal to the bit: 3 inputs x 4 beams, 152 tokens (the 64-token buffer
    doubles twice), a reorder within each input's beams after every token, some of them none."""
    generator = torch.Generator().manual_seed(0)
    lab, library, bounded = InPlaceSelfAttentionLayer(), DynamicLayer(), InPlaceSelfAttentionLayer(most=152)
    rows, beams, heads, width = 3, 4, 2, 5
    moved_any = False
    for step in range(150):
        tokens = 3 if step == 0 else 1  # a prompt of several tokens first, as a decoder prefix would be
        keys, values = (torch.randn(rows * beams, heads, tokens, width, generator=generator) for _ in range(2))
        got, expected, got_bounded = lab.update(keys, values), library.update(keys, values), bounded.update(keys, values)
        for a, b, c in zip(got, expected, got_bounded):
            assert torch.equal(a, b) and torch.equal(c, b)
        assert lab.get_seq_length() == library.get_seq_length() == got[0].shape[-2]
        parents = torch.stack([torch.randint(0, beams, (beams,), generator=generator) + beams * row for row in range(rows)]).flatten()
        if step % 3 == 0:
            parents = torch.arange(rows * beams)  # no beam moved: nothing to copy
        moved_any |= bool((parents != torch.arange(rows * beams)).any())
        for layer in (lab, library, bounded):
            layer.reorder_cache(parents)
        assert torch.equal(lab.keys, library.keys) and torch.equal(lab.values, library.values) and torch.equal(bounded.values, library.values)
    # 152 tokens: doubled from 64 to 256, or to the bound (a static cache's size) and no further
    assert moved_any and lab.buffers[0].shape[-2] == 256 and bounded.buffers[0].shape[-2] == 152


def test_decode_with_the_lab_cache_gives_the_library_outputs(monkeypatch):
    """A random model, whose beams overtake each other all the time: greedy outputs and every row's
    beams, in order, are the ones transformers' own cache gives, and moved beams were copied."""
    from gen.dataset import GenOptions, build_splits
    from gen.equations import Ranges
    from train import kv_cache
    from train.config import resolve
    from train.quadratic import build_model, build_tokenizer, decode

    columns = build_splits(GenOptions(rows=40, seed=3, ranges=Ranges(a_lo=-5, a_hi=5, root_lo=-20, root_hi=20)), workers=1)["test"]
    tokenizer = build_tokenizer(columns["equation"] + columns["solution"])
    model = build_model(resolve("tiny", None, {"num_layers": 2, "num_decoder_layers": 2, "num_heads": 2, "d_kv": 8, "d_model": 16, "d_ff": 32}), tokenizer)
    model.generation_config.max_new_tokens = 40
    moves = []
    reorder = InPlaceSelfAttentionLayer.reorder_cache

    def counted(layer, beam_idx):
        moves.append(int((beam_idx != torch.arange(len(beam_idx))).sum()))
        reorder(layer, beam_idx)

    monkeypatch.setattr(InPlaceSelfAttentionLayer, "reorder_cache", counted)
    lab = [decode(model, tokenizer, columns["equation"], batch_size=12, num_beams=k) for k in (1, 3)]
    monkeypatch.setattr(kv_cache, "cache_arguments", lambda model, greedy: {})  # generate makes its own cache
    library = [decode(model, tokenizer, columns["equation"], batch_size=12, num_beams=k) for k in (1, 3)]
    assert lab == library and len(lab[1]) == 8 and all(len(beams) == 3 for beams in lab[1])
    assert sum(moves) > 0
