"""The BERT text tower run for its [CLS] output only (the one place that knows BertModel's layers).

BiomedCLIP pools the text tower by the last hidden state at [CLS]. The last
layer's other rows are computed by a plain ``BertModel`` forward and then thrown
away; here the last layer attends from [CLS] alone (its keys and values still
come from every token), so its query projection, attention output and
feed-forward run on one row instead of L. The result is the same function of
the input (equal to float rounding, see tests/test_text_tower.py) with less work
on every training step - a fast-mode step is nothing but this tower, forward and
backward (bench/README.md: 1.00-1.08x per step on a 2-core CPU).

Dropout, when the module is in train mode, is applied where BERT applies it
(embeddings, attention probabilities, both residual branches), so the training
twin (``TextEncoder.with_dropout``) keeps the reference's train-mode BERT.
A tower that is not a plain bidirectional BERT falls back to the full forward.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def supports_cls_only(bert: nn.Module, pooler: nn.Module) -> bool:
    """True when ``bert`` is an encoder-only BertModel pooled by the [CLS] row of its last hidden state."""
    config = getattr(bert, "config", None)
    layers = getattr(getattr(bert, "encoder", None), "layer", None)
    if config is None or layers is None or not hasattr(bert, "embeddings") or len(layers) == 0:
        return False
    if getattr(config, "is_decoder", False) or getattr(config, "add_cross_attention", False):
        return False
    if getattr(config, "position_embedding_type", "absolute") != "absolute":
        return False
    if getattr(config, "chunk_size_feed_forward", 0):
        return False
    if getattr(pooler, "cls_token_position", None) != 0 or type(pooler).__name__ != "ClsLastHiddenStatePooler":
        return False
    layer = layers[0]
    return all(hasattr(layer, a) for a in ("attention", "intermediate", "output")) and all(
        hasattr(layer.attention.self, a) for a in ("query", "key", "value", "num_attention_heads", "scaling"))


def cls_hidden_state(bert: nn.Module, embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """[N, L, W] input embeddings + [N, L] attention mask -> [N, W]: the last hidden state at [CLS]."""
    h = bert.embeddings(inputs_embeds=embeds)
    # Boolean mask over the keys (True = attend); None when nothing is padded, which lets
    # scaled_dot_product_attention take its unmasked path.
    keys = None if bool(mask.all()) else mask.bool()[:, None, None, :]
    layers = bert.encoder.layer
    for i, layer in enumerate(layers):
        queries = h[:, :1] if i == len(layers) - 1 else h
        h = _layer(layer, h, queries, keys)
    return h[:, 0]


def _layer(layer: nn.Module, h: torch.Tensor, queries: torch.Tensor, keys: torch.Tensor | None) -> torch.Tensor:
    sa = layer.attention.self
    n, heads = h.shape[0], sa.num_attention_heads

    def split(x: torch.Tensor) -> torch.Tensor:  # [N, T, W] -> [N, heads, T, W / heads]
        return x.view(n, x.shape[1], heads, -1).transpose(1, 2)

    q, k, v = split(sa.query(queries)), split(sa.key(h)), split(sa.value(h))
    p = sa.dropout.p if sa.training else 0.0
    if queries.shape[1] == h.shape[1]:
        attn = F.scaled_dot_product_attention(q, k, v, attn_mask=keys, dropout_p=p, scale=sa.scaling)
    else:
        # One query row: written out, because scaled_dot_product_attention's kernel for a single
        # query splits its work by thread count, and a training must give the same bits on one
        # thread (a ZeroGPU worker) as on two (tests/test_zerogpu.py).
        scores = (q @ k.transpose(-1, -2)) * sa.scaling
        if keys is not None:
            scores = scores.masked_fill(~keys, float("-inf"))
        attn = F.dropout(scores.softmax(dim=-1), p, training=p > 0) @ v
    attn = attn.transpose(1, 2).reshape(n, queries.shape[1], -1)
    attn = layer.attention.output(attn, queries)  # dense, dropout, LayerNorm(x + queries)
    return layer.output(layer.intermediate(attn), attn)  # feed-forward, dropout, LayerNorm(x + attn)
