"""Fitting a chat history into the context: which messages `fit_messages` keeps."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from llmcloud.engine.prompt import Message, fit_messages
from llmcloud.engine.service import answer_room
from tests.engine.bundled_tokenizer import BundledTokenizer


class WordTokenizer:
    """One token per word of each message plus one per message, and a count of calls."""

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, messages: list[Message]) -> list[int]:
        self.calls += 1
        size = sum(len(message["content"].split()) + 1 for message in messages)
        return list(range(size))


@pytest.fixture(scope="module")
def bundled_tokenizer() -> Iterator[BundledTokenizer]:
    tokenizer = BundledTokenizer()
    yield tokenizer
    tokenizer.close()


def message(role: str, words: int, tag: str = "") -> Message:
    return {"role": role, "content": " ".join([tag or role] * words)}


def history(pairs: int, words: int = 9) -> list[Message]:
    """User and assistant turns, tagged u0, a0, u1, a1, ..., each `words` words long."""
    messages = []
    for index in range(pairs):
        messages.append(message("user", words, f"u{index}"))
        messages.append(message("assistant", words, f"a{index}"))
    return messages


def tags(messages: list[Message]) -> list[str]:
    return [message["content"].split()[0] for message in messages]


def test_fit_keeps_history_that_fits() -> None:
    messages = [*history(3), message("user", 5, "last")]
    tokenizer = WordTokenizer()

    fitted = fit_messages(messages, tokenizer, limit=66)

    assert fitted.messages == messages
    assert fitted.dropped == 0
    assert len(fitted.tokens) == 66
    assert tokenizer.calls == 1


def test_fit_drops_oldest_first() -> None:
    # Each message of the history is 10 tokens and the last one 6, so 50 tokens keep four.
    messages = [*history(4), message("user", 5, "last")]

    fitted = fit_messages(messages, WordTokenizer(), limit=50)

    assert tags(fitted.messages) == ["u2", "a2", "u3", "a3", "last"]
    assert fitted.dropped == 4
    assert len(fitted.tokens) == 46


def test_fit_keeps_every_system_message() -> None:
    messages = [
        message("system", 3, "first"),
        message("user", 9, "u0"),
        message("assistant", 9, "a0"),
        message("system", 3, "middle"),
        message("user", 9, "u1"),
        message("assistant", 9, "a1"),
        message("user", 5, "last"),
    ]

    fitted = fit_messages(messages, WordTokenizer(), limit=30)

    assert tags(fitted.messages) == ["first", "middle", "a1", "last"]
    assert fitted.dropped == 3


def test_fit_keeps_tool_results_with_their_call() -> None:
    call = {
        "role": "assistant",
        "content": "",
        "tool_calls": [{"function": {"name": "get_weather", "arguments": {"city": "Paris"}}}],
    }
    messages = [
        message("user", 9, "question"),
        call,
        message("tool", 9, "sunny"),
        message("tool", 9, "windy"),
        message("user", 5, "last"),
    ]

    # Without the question the prompt is 27 tokens. Dropping the call but keeping its
    # results would give 26, but the call and its results go together.
    fitted = fit_messages(messages, WordTokenizer(), limit=26)

    assert tags(fitted.messages) == ["last"]
    assert fitted.dropped == 4


@pytest.mark.parametrize("limit", [20, 5])
def test_fit_never_cuts_between_call_and_result(limit: int) -> None:
    call = {"role": "assistant", "content": "", "tool_calls": [{"function": {"name": "f"}}]}
    messages = [message("user", 9, "question"), call, message("tool", 9, "sunny")]

    fitted = fit_messages(messages, WordTokenizer(), limit=limit)

    assert fitted.messages == [call, message("tool", 9, "sunny")]
    assert fitted.dropped == 1


def test_fit_returns_last_message_that_overflows() -> None:
    messages = [message("system", 3, "rules"), *history(2), message("user", 40, "last")]

    fitted = fit_messages(messages, WordTokenizer(), limit=20)

    assert tags(fitted.messages) == ["rules", "last"]
    assert fitted.dropped == 4
    assert len(fitted.tokens) == 45


def test_fit_keeps_single_message_that_overflows() -> None:
    messages = [message("user", 40, "only")]

    fitted = fit_messages(messages, WordTokenizer(), limit=20)

    assert fitted.messages == messages
    assert fitted.dropped == 0


def test_fit_tokenizes_long_history_few_times() -> None:
    messages = [*history(500), message("user", 5, "last")]
    tokenizer = WordTokenizer()

    fitted = fit_messages(messages, tokenizer, limit=106)

    assert tags(fitted.messages)[0] == "u495"
    assert len(fitted.tokens) == 106
    assert tokenizer.calls <= 12


def test_fit_with_bundled_tokenizer_keeps_most(bundled_tokenizer: BundledTokenizer) -> None:
    system = {"role": "system", "content": "You are a sailor; answer like one."}
    turns = [
        {"role": role, "content": f"Harbour {index} has old ships, quiet water and {role}s."}
        for index in range(40)
        for role in ("user", "assistant")
    ]
    messages = [system, *turns, {"role": "user", "content": "Which harbour is best?"}]
    limit = len(bundled_tokenizer(messages)) // 2

    fitted = fit_messages(messages, bundled_tokenizer, limit=limit)

    assert fitted.messages[0] == system
    assert fitted.messages[-1] == messages[-1]
    assert fitted.tokens == bundled_tokenizer(fitted.messages)
    assert len(fitted.tokens) <= limit
    one_more = [system, *messages[fitted.dropped :]]
    assert len(bundled_tokenizer(one_more)) > limit


@pytest.mark.parametrize(
    ("max_new_tokens", "num_ctx", "room"),
    [(8, 1024, 8), (1024, 1024, 256), (300, 2048, 300), (0, 1024, 1), (5, 2, 1)],
)
def test_answer_room_is_capped(max_new_tokens: int, num_ctx: int, room: int) -> None:
    assert answer_room(max_new_tokens, num_ctx) == room
