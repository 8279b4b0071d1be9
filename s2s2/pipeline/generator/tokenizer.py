"""An offline CLIP tokenizer for the tiny base: byte-level vocabulary, no merges, no download.

Every prompt character is one token, so prompts keep the class names without a learned BPE.
"""

from __future__ import annotations

from tokenizers.pre_tokenizers import ByteLevel
from transformers import CLIPTokenizer

BOS, EOS = "<|startoftext|>", "<|endoftext|>"


def byte_vocab() -> dict[str, int]:
    """Byte symbols, the same symbols ending a word (`</w>`), then the two special tokens."""
    alphabet = sorted(ByteLevel.alphabet())
    symbols = alphabet + [symbol + "</w>" for symbol in alphabet] + [BOS, EOS]
    return {symbol: index for index, symbol in enumerate(symbols)}


def build_byte_tokenizer(max_length: int) -> CLIPTokenizer:
    """A `CLIPTokenizer` over `byte_vocab()`, padding/truncating to `max_length` tokens."""
    return CLIPTokenizer(vocab=byte_vocab(), merges=[], model_max_length=max_length)
