"""The key-value cache of an encoder-decoder's decoding on the CPU, greedy or beam search (`decode`
in train/quadratic.py; bench/bench_decode.py times it).

transformers' dynamic cache concatenates the whole self-attention cache at every token and, in beam
search, copies all of it and the cross-attention cache at every reorder of the beams: two thirds of
beam search's time on a CPU. Its static cache attends over the whole token budget at every step.
This one writes each token in place, attends over the tokens so far, and copies only moved beams.
"""
from __future__ import annotations

import torch
from transformers.cache_utils import Cache, DynamicLayer, EncoderDecoderCache


class InPlaceSelfAttentionLayer(DynamicLayer):
    """The decoder's self-attention cache: it grows in place (capacity doubled when full) and, at
    each reorder, copies only the beams whose parent is another beam."""

    def lazy_initialization(self, key_states, value_states):
        self.device = key_states.device
        rows, heads, _, width = key_states.shape
        self.buffers = [torch.empty(rows, heads, 64, width, dtype=key_states.dtype, device=self.device) for _ in range(2)]
        self.length = 0
        self.is_initialized = True

    def update(self, key_states, value_states, *args, **kwargs):
        if not self.is_initialized:
            self.lazy_initialization(key_states, value_states)
        end = self.length + key_states.shape[-2]
        if end > self.buffers[0].shape[-2]:
            grown = [buffer.new_empty(*buffer.shape[:2], max(end, 2 * buffer.shape[-2]), buffer.shape[-1]) for buffer in self.buffers]
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


def decoding_cache() -> EncoderDecoderCache:
    """An empty cache for one `generate` call (greedy or beam search)."""
    return EncoderDecoderCache(Cache(layer_class_to_replicate=InPlaceSelfAttentionLayer), Cache(layer_class_to_replicate=CrossAttentionLayer))
