"""Attention control through diffusers attention processors, shared by methods that read or edit attention maps.

`attention_control(unet, controller)` installs a `ControlledAttnProcessor` on every attention layer of a diffusers
UNet (`set_attn_processor`, the library's own extension point: no module's `forward` is replaced) and restores the
processors it found, the same objects, when the block exits, also on an exception. Inside, every attention layer
computes its probabilities explicitly, P = softmax(Q Kᵀ · scale) (diffusers' `Attention.get_attention_scores`, with
the layer's mask and upcasting), hands them to the controller, and uses what the controller returns:

    controller(probs, layer, is_cross) -> probs      probs: (batch, heads, queries, keys)

`layer` names the call (`AttentionLayer`: processor key, place "down" / "mid" / "up", index in the UNet's processor
order); `is_cross` is whether the layer attends to `encoder_hidden_states` (the text), as Prompt-to-Prompt's
`register_attention_control` decides it (context given or not). The controller sees the whole UNet batch, in the
order the caller built it; it may return the probabilities unchanged (then the layer's output equals diffusers'
own processors' up to rounding: explicit softmax against fused scaled-dot-product attention).
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch


@dataclass(frozen=True)
class AttentionLayer:
    """One attention layer of a UNet, as the controller is told about it."""

    name: str
    """The module path, e.g. "up_blocks.1.attentions.0.transformer_blocks.0.attn2"."""
    place: str
    """"down", "mid" or "up": the UNet part it sits in (Prompt-to-Prompt's `place_in_unet`)."""
    index: int
    """Position in the UNet's `attn_processors` order."""


AttentionController = Callable[[torch.Tensor, AttentionLayer, bool], torch.Tensor]


def _place(name: str) -> str:
    head = name.split(".", 1)[0]
    for place in ("down", "mid", "up"):
        if head.startswith(place):
            return place
    return head


class ControlledAttnProcessor:
    """A diffusers attention processor that materialises the attention probabilities and lets a controller edit them.

    The computation is diffusers' plain `AttnProcessor` (spatial and group norms, mask, cross-attention norm,
    heads folded into the batch, output projection, residual and rescaling), with the controller applied between
    the softmax and the product with the values."""

    def __init__(self, controller: AttentionController, layer: AttentionLayer) -> None:
        self.controller = controller
        self.layer = layer

    def __call__(self, attn: Any, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                 attention_mask: torch.Tensor | None = None, temb: torch.Tensor | None = None, *args: Any,
                 **kwargs: Any) -> torch.Tensor:
        residual = hidden_states
        if attn.spatial_norm is not None:
            hidden_states = attn.spatial_norm(hidden_states, temb)
        input_ndim = hidden_states.ndim
        if input_ndim == 4:
            batch, channel, height, width = hidden_states.shape
            hidden_states = hidden_states.view(batch, channel, height * width).transpose(1, 2)
        is_cross = encoder_hidden_states is not None
        context = hidden_states if encoder_hidden_states is None else encoder_hidden_states
        batch, keys, _ = context.shape
        attention_mask = attn.prepare_attention_mask(attention_mask, keys, batch)
        if attn.group_norm is not None:
            hidden_states = attn.group_norm(hidden_states.transpose(1, 2)).transpose(1, 2)
        query = attn.to_q(hidden_states)
        if encoder_hidden_states is None:
            context = hidden_states  # after the group norm, as diffusers' processors use it
        elif attn.norm_cross:
            context = attn.norm_encoder_hidden_states(context)
        key, value = attn.to_k(context), attn.to_v(context)
        heads = attn.heads
        query, key, value = (attn.head_to_batch_dim(v) for v in (query, key, value))
        if getattr(attn, "norm_q", None) is not None:  # qk-norm layers normalise per head
            query = attn.norm_q(query)
        if getattr(attn, "norm_k", None) is not None:
            key = attn.norm_k(key)
        probs = attn.get_attention_scores(query, key, attention_mask)  # (batch·heads, queries, keys), batch-major
        shaped = probs.reshape(batch, heads, *probs.shape[1:])
        controlled = self.controller(shaped, self.layer, is_cross)
        if controlled.shape != shaped.shape:
            raise ValueError(f"attention controller returned shape {tuple(controlled.shape)} for "
                             f"{tuple(shaped.shape)} at {self.layer.name}")
        probs = controlled.reshape(probs.shape).to(value.dtype)
        hidden_states = attn.batch_to_head_dim(torch.bmm(probs, value))
        hidden_states = attn.to_out[1](attn.to_out[0](hidden_states))
        if input_ndim == 4:
            hidden_states = hidden_states.transpose(-1, -2).reshape(batch, channel, height, width)
        if attn.residual_connection:
            hidden_states = hidden_states + residual
        return hidden_states / attn.rescale_output_factor


def attention_layers(unet: Any) -> dict[str, AttentionLayer]:
    """The UNet's attention layers by processor key ("....attn2.processor"), in `attn_processors` order."""
    return {key: AttentionLayer(name=key.removesuffix(".processor"), place=_place(key), index=i)
            for i, key in enumerate(unet.attn_processors)}


@contextlib.contextmanager
def attention_control(unet: Any, controller: AttentionController) -> Iterator[dict[str, AttentionLayer]]:
    """Route every attention layer of `unet` through `controller` inside the block; yields the layers.

    The processors found on entry are put back on exit, the same objects (also when the block raises), so a
    model with custom processors (LoRA, IP-Adapter, another controller) is left exactly as it was. Nesting works:
    the inner block restores the outer block's processors."""
    saved = dict(unet.attn_processors)
    layers = attention_layers(unet)
    # set_attn_processor pops entries from the dict it is given: hand it copies.
    unet.set_attn_processor({key: ControlledAttnProcessor(controller, layer) for key, layer in layers.items()})
    try:
        yield layers
    finally:
        unet.set_attn_processor(dict(saved))


def processor_state(unet: Any) -> dict[str, tuple[str, int]]:
    """(class name, object id) of every attention processor of a module tree: what "left as found" compares.

    Walks modules rather than `attn_processors`, so it also covers models without that property."""
    out = {}
    for name, module in unet.named_modules():
        processor = getattr(module, "processor", None)
        if processor is not None and hasattr(module, "set_processor"):
            out[name] = (type(processor).__name__, id(processor))
    return out
