"""Prompt-embedding cache: a repeated prompt skips the text encoders (T5-XXL and CLIP;
FLUX.2's Qwen3 or Mistral-Small).

An LRU of embeddings by name (text_encoding.Embeddings) bounded by bytes, on the worker's
device.
Keys name the text encoders by identity, so models that share their encoders (the FLUX.1
family, loaded once by the runner) share their cache entries too. Embeddings are a pure
function of the prompt, so a hit gives exactly the tensors a miss would compute.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Hashable

import torch

Embeddings = dict[str, torch.Tensor]


def _nbytes(embeddings: Embeddings) -> int:
    return sum(t.numel() * t.element_size() for t in embeddings.values())


class PromptCache:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._entries: OrderedDict[Hashable, Embeddings] = OrderedDict()
        self.bytes = 0
        self.hits = 0
        self.misses = 0

    def get(self, key: Hashable, encode: Callable[[], Embeddings]) -> Embeddings:
        """The cached embeddings of ``key``, or ``encode()``'s, remembered if they fit."""
        if key in self._entries:
            self.hits += 1
            self._entries.move_to_end(key)
            return self._entries[key]
        self.misses += 1
        embeddings = encode()
        size = _nbytes(embeddings)
        if size <= self.max_bytes:
            self._entries[key] = embeddings
            self.bytes += size
            while self.bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self.bytes -= _nbytes(evicted)
        return embeddings

    def __len__(self) -> int:
        return len(self._entries)
