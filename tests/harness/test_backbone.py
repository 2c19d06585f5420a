"""Backbone.encode_text: a prompt's embedding must not depend on the other prompts of its batch."""
from __future__ import annotations

import torch

from harness.models import load_backbone

PROMPTS = ["A photo of a person", "A photo of a smiling person", "A photo of a person with glasses",
           "A photo of an old person", "", "a small red circle on a blue background, top left",
           "a b", "c d e"]


def _alone(backbone, prompt: str) -> torch.Tensor:
    """The text encoder on a batch of one, outside the backbone (the reference)."""
    tok = backbone.tokenizer([prompt], padding="max_length", max_length=backbone.tokenizer.model_max_length,
                             truncation=True, return_tensors="pt")
    with torch.no_grad():
        return backbone.text_encoder(tok.input_ids)[0]


def test_each_row_equals_the_prompt_encoded_alone_whatever_its_batch() -> None:
    # A batched encoder call rounds some rows differently by batch size and position (on AMD EPYC row 3
    # of 4 and row 7 of 8 differed by 1 ulp), and CFG amplifies that into different images (issue 16.1).
    reference = load_backbone("tiny-sd")
    alone = {p: _alone(reference, p)[0] for p in PROMPTS}
    for n in range(1, 9):
        batch = PROMPTS[:n]
        out = load_backbone("tiny-sd").encode_text(batch)  # a fresh backbone: nothing cached yet
        for i, prompt in enumerate(batch):
            assert torch.equal(out[i], alone[prompt]), f"row {i} of {n} ({prompt!r}) differs from it alone"


def test_repeated_prompts_are_encoded_once() -> None:
    backbone = load_backbone("tiny-sd")
    calls = []
    handle = backbone.text_encoder.register_forward_hook(lambda m, a, o: calls.append(a[0].shape[0]))
    try:
        out = backbone.encode_text(["a cat", "", "a cat", ""])
        backbone.encode_text(["", "a cat"])
    finally:
        handle.remove()
    assert calls == [1, 1], calls  # two distinct prompts, each alone, then cached
    assert torch.equal(out[0], out[2]) and torch.equal(out[1], out[3])
    assert not torch.equal(out[0], out[1])
