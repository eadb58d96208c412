"""The key-value cache of an encoder-decoder's decoding (`decode` and `Analysis.generate` in
train/quadratic.py): greedy decoding on a CPU and beam search everywhere (bench/bench_decode.py).

transformers' dynamic cache concatenates the whole self-attention cache at every token and, in beam
search, copies all of it and the cross-attention cache at every reorder of the beams: two thirds of
beam search's time on a CPU. Its static cache attends over the whole token budget at every step.
This one writes each token in place, attends over the tokens so far, and copies only moved beams.
"""
from __future__ import annotations

import inspect

import torch
from transformers.cache_utils import Cache, DynamicLayer, EncoderDecoderCache


class InPlaceSelfAttentionLayer(DynamicLayer):
    """The decoder's self-attention cache: it grows in place (capacity doubled when full, up to
    `most` tokens when given: it then never holds more than a static cache) and, at each reorder,
    copies only the beams whose parent is another beam."""

    def __init__(self, most: int | None = None):
        super().__init__()
        self.most = most

    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        rows, heads, _, width = key_states.shape
        start = min(64, self.most) if self.most else 64
        self.buffers = [torch.empty(rows, heads, start, width, dtype=key_states.dtype, device=self.device) for _ in range(2)]
        self.length = 0
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.buffers[0].shape[-2]:
            capacity = 2 * self.buffers[0].shape[-2]
            capacity = max(end, min(capacity, self.most) if self.most else capacity)
            grown = [buffer.new_empty(*buffer.shape[:2], capacity, buffer.shape[-1]) for buffer in self.buffers]
            for new, old in zip(grown, self.buffers):
                new[:, :, : self.length] = old[:, :, : self.length]
            self.buffers = grown
        for buffer, states in zip(self.buffers, (key_states, value_states)):
            buffer[:, :, self.length : end] = states
        self.length = end
        self.keys, self.values = (buffer[:, :, :end] for buffer in self.buffers)
        return self.keys, self.values

    def get_seq_length(self) -> int:
        return self.length if self.is_initialized else 0

    def reorder_cache(self, beam_idx):
        if not self.is_initialized:
            return
        moved = (beam_idx != torch.arange(len(beam_idx), device=beam_idx.device)).nonzero().flatten()
        if len(moved):
            parents = beam_idx[moved]
            for cached in (self.keys, self.values):
                cached.index_copy_(0, moved, cached.index_select(0, parents))


class CrossAttentionLayer(DynamicLayer):
    """The cross-attention cache, which a reorder leaves as it is: beam search reorders the beams of
    each input among themselves, and they all attend to the same encoder output."""

    def reorder_cache(self, beam_idx):
        pass


def decoding_cache(model) -> EncoderDecoderCache:
    """An empty cache for one `generate` call of `model` (greedy or beam search), each layer holding
    at most the decoder start and the generation config's max_new_tokens."""
    most = model.generation_config.max_new_tokens
    layers = [InPlaceSelfAttentionLayer(most + 1 if most else None) for _ in range(model.config.num_decoder_layers)]
    return EncoderDecoderCache(Cache(layers=layers), Cache(layer_class_to_replicate=CrossAttentionLayer))


def cache_arguments(model, greedy: bool) -> dict:
    """generate()'s cache arguments: greedy decoding on a GPU keeps the library's static cache, as
    timed there (BENCHMARKS.md, "Training on an H100"); everything else gets the lab's cache."""
    if greedy and model.device.type == "cuda":
        return {"cache_implementation": "static"}
    return lab_cache_arguments(model)


def lab_cache_arguments(model) -> dict:
    # transformers 5.25 renamed generate's past_key_values to cache (the GPU machine has 5.17)
    name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    return {name: decoding_cache(model)}
