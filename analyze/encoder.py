"""What the analysis side (train/tasks.py) of a task whose model is one encoder, reading a text or
a pair of texts in one forward pass per window (SQuAD, sequence classification), has in common:
the roles of special tokens, captured batches of windows, ablation by one evaluation per head,
and key blocking with masks made per batch."""

from __future__ import annotations

import string
from contextlib import nullcontext
from pathlib import Path

import torch

from analyze import interventions
from analyze.attention import padded, segments

SENTENCE_ENDS = (".", "?", "!")


def special_role(token: str, sequence_id, tokenizer) -> str | None:
    """[CLS] or [SEP] for a special token outside the texts (RoBERTa's <s> and </s> alike: the
    tokenizer's cls and sep tokens), punct for a token of punctuation only, else None."""
    if sequence_id is None:
        return "[CLS]" if token == tokenizer.cls_token else "[SEP]" if token == tokenizer.sep_token else "other"
    bare = token.strip("#▁Ġ")
    if bare and all(ch in string.punctuation for ch in bare):
        return "punct"
    return None


def window_batch(windows: list[dict], role_names: tuple[str, ...], pad_id: int) -> dict:
    """A captured batch of windows, each {input_ids, attention_mask, token_type_ids (or None),
    tokens, roles (names), sequence_ids}. Segments: [CLS], each [SEP], each text of a pair, each
    sentence (Clark et al. 2019's block pattern for BERT)."""
    width = max(len(w["input_ids"]) for w in windows)
    starts = []
    for w in windows:
        roles, seqs, tokens = w["roles"], w["sequence_ids"], w["tokens"]
        starts.append(segments([j == 0 or roles[j] in ("[CLS]", "[SEP]") or roles[j - 1] in ("[CLS]", "[SEP]") or seqs[j] != seqs[j - 1]
                                or tokens[j - 1].strip("#▁Ġ") in SENTENCE_ENDS for j in range(len(roles))]))
    inputs = {"input_ids": padded([w["input_ids"] for w in windows], width, pad_id),
              "attention_mask": padded([w["attention_mask"] for w in windows], width, 0)}
    if windows[0].get("token_type_ids") is not None:
        inputs["token_type_ids"] = padded([w["token_type_ids"] for w in windows], width, 0)
    return {"inputs": inputs, "roles": {"encoder": padded([[role_names.index(r) for r in w["roles"]] for w in windows], width, -1)},
            "segments": {"encoder": padded(starts, width, -1)}, "tokens": {"encoder": [w["tokens"] for w in windows]}}


class EncoderAnalysis:
    """The parts of `Analysis` (train/tasks.py) that every encoder task shares; a subclass sets the
    task's attributes and provides batches, example, evaluate, gradient_batches and row_losses."""

    kinds = ("encoder",)
    sides = {"encoder": ("encoder", "encoder")}
    batch_size = 8  # a 384-token window of a 6-layer, 12-head encoder has 42 MB of attention maps, and JS pairs them

    def load_model(self, path: Path):
        from train.tasks import model_class

        return model_class(self.name).from_pretrained(str(path), attn_implementation="eager")

    def query_masks(self, batch: dict) -> dict:
        return {"encoder": batch["inputs"]["attention_mask"].bool()}

    def ablate(self, model, specs: list, batch_rows: int, progress: bool) -> list[dict]:
        """One batched evaluation per ablated head (an encoder has no pass to reuse)."""
        from tqdm import tqdm

        layout = interventions.shape(model)
        device = next(model.parameters()).device
        out = []
        for spec in tqdm(specs, desc="ablate", unit="head", disable=None if progress else True):
            gates = {}
            if spec is not None:
                kind, layer, head = spec
                gates[kind] = torch.ones(1, *layout[kind], device=device)
                gates[kind][0, layer, head] = 0
            out.append(self.evaluate(model, gates))
        return out

    @staticmethod
    def blocking(model, blocked: tuple | None, roles: list[list[str]], width: int):
        """The context in which one batch of windows (their role names, padded to `width`) runs with
        `blocked` = ({kind: [layers]}, choose) in force; no change when blocked is None."""
        if not blocked:
            return nullcontext()
        layers, choose = blocked
        keys = torch.zeros(len(roles), width, dtype=torch.bool)
        for row, names in enumerate(roles):
            keys[row, choose(names)] = True
        return interventions.blocked(model, layers, keys.to(next(model.parameters()).device))

