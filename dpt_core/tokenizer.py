"""Text tokenisation for the BERT text tower, with padding trimmed to the batch.

BiomedCLIP pads every prompt to 256 tokens. Padding is masked and BERT's
position embeddings are absolute, so cutting the batch to its longest real
prompt gives the same CLS features for a fraction of the cost
(tests/test_text.py checks the parity).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch


def clean_text(text: str) -> str:
    """Whitespace normalisation, as open_clip's HFTokenizer does before tokenising."""
    return " ".join(str(text).split())


@dataclass
class TokenBatch:
    ids: torch.Tensor  # [N, L] long
    mask: torch.Tensor  # [N, L] long, 1 for real tokens (incl. [CLS]/[SEP]), 0 for padding

    def to(self, device: torch.device | str) -> "TokenBatch":
        return TokenBatch(self.ids.to(device), self.mask.to(device))


class TextTokenizer:
    """Wraps a Hugging Face (fast) BERT tokenizer with CLIP-style fixed context length."""

    def __init__(self, hf_tokenizer, context_length: int = 256):
        self.hf = hf_tokenizer
        self.context_length = int(context_length)
        self.pad_id = int(hf_tokenizer.pad_token_id or 0)

    def __call__(self, texts: str | Sequence[str], trim: bool = True) -> TokenBatch:
        """Tokenise to [N, context_length]; with ``trim`` cut to the longest real length."""
        if isinstance(texts, str):
            texts = [texts]
        enc = self.hf(
            [clean_text(t) for t in texts],
            padding="max_length",
            truncation=True,
            max_length=self.context_length,
            return_tensors="pt",
        )
        ids = enc["input_ids"].long()
        mask = (ids != self.pad_id).long()  # pad id 0, as HFTextEncoder derives its mask
        if trim:
            keep = int(mask.sum(dim=1).max())
            ids, mask = ids[:, :keep], mask[:, :keep]
        return TokenBatch(ids.contiguous(), mask.contiguous())

    def pieces(self, text: str) -> list[str]:
        """Word-pieces of ``text`` without [CLS]/[SEP] (e.g. 'X-ray' -> x, -, ray)."""
        return self.hf.tokenize(clean_text(text))
