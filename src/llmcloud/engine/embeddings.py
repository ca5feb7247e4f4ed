"""Embeddings from a model loaded in embedding mode, with mean pooling."""

from __future__ import annotations

import threading
from pathlib import Path

import llama_cpp

from llmcloud.engine.errors import InvalidRequest


class Embedder:
    """A second llama.cpp context of a model, made for embeddings; calls are serialised."""

    def __init__(self, path: Path, *, num_ctx: int, threads: int | None, gpu_layers: int) -> None:
        self.num_ctx = num_ctx
        self._lock = threading.Lock()
        self._llama = llama_cpp.Llama(
            model_path=str(path),
            embedding=True,
            n_ctx=num_ctx,
            n_batch=num_ctx,
            n_ubatch=num_ctx,
            n_threads=threads,
            n_gpu_layers=-1 if gpu_layers < 0 else gpu_layers,
            pooling_type=llama_cpp.LLAMA_POOLING_TYPE_MEAN,
            verbose=False,
        )

    def embed(self, texts: list[str], *, truncate: bool) -> tuple[list[list[float]], int]:
        """Return one L2-normalised vector per text and the number of input tokens."""
        with self._lock:
            counts = [len(self._llama.tokenize(text.encode("utf-8"))) for text in texts]
            too_long = [i for i, count in enumerate(counts) if count > self.num_ctx]
            if too_long and not truncate:
                index = too_long[0]
                raise InvalidRequest(
                    f"input[{index}] is {counts[index]} tokens, longer than the context of "
                    f"{self.num_ctx} tokens; shorten it, raise options.num_ctx, or set "
                    '"truncate": true'
                )
            vectors = self._llama.embed(texts, normalize=True, truncate=True)
        return [list(map(float, vector)) for vector in vectors], sum(
            min(count, self.num_ctx) for count in counts
        )

    def close(self) -> None:
        with self._lock:
            self._llama.close()
