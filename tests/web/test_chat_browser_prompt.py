"""The chat page's prompt form in headless Chromium, against a fake model backend.

The prompt stays a draft until the server confirms it. A rejected prompt or
regenerate keeps what the user had, a second tab shows the first tab's answer
as it streams, and the page fits a phone screen. The
app runs in uvicorn on loopback with the fake backend as its only backend,
which answers "Hello, world!".
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from llmcloud.auth.accounts import find_account
from llmcloud.db import chats
from llmcloud.db.models import MessageRole
from llmcloud.web import create_app
from tests.conftest import RunningServer
from tests.gateway.fake_backend import DEFAULT_TOKENS, FakeBackend
from tests.web.conftest import CHEAP_HASHER, FAKE_MODEL, PASSWORD, needs_chromium, web_settings

ANSWER = "Hello, world!"
UNKNOWN_MODEL = "no-such-model"
PHONE = {"width": 375, "height": 667}

pytestmark = needs_chromium


@pytest.fixture(scope="module")
def backend() -> Iterator[FakeBackend]:
    backend = FakeBackend((FAKE_MODEL,)).start()
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def app(backend: FakeBackend, tmp_path_factory: pytest.TempPathFactory) -> Any:
    data_dir: Path = tmp_path_factory.mktemp("chat-browser-prompt")
    return create_app(web_settings(data_dir, backend.url), hasher=CHEAP_HASHER)


@pytest.fixture(scope="module")
def web_url(app: Any, browser: Browser) -> Iterator[str]:
    server = RunningServer(app).start()
    context = browser.new_context(base_url=server.url)
    page = context.new_page()
    page.goto("/signup")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create the admin account").click()
    expect(page).to_have_url(f"{server.url}/chats")
    context.close()
    yield server.url
    server.stop()


def log_in(page: Page) -> None:
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()


def open_new_chat(browser: Browser, web_url: str, **options: Any) -> Page:
    page = browser.new_context(base_url=web_url, **options).new_page()
    page.goto("/login")
    log_in(page)
    page.get_by_role("button", name="New chat").click()
    expect(page.get_by_role("heading", name="New chat")).to_be_visible()
    return page


def pick_unknown_model(page: Page) -> None:
    """Add a model that no backend lists to the picker, as if it had left the backends."""
    page.get_by_label("Model").evaluate(
        "(select, name) => select.add(new Option(name, name, true, true))", UNKNOWN_MODEL
    )


def test_rejected_prompt_kept_until_accepted(browser: Browser, web_url: str) -> None:
    page = open_new_chat(browser, web_url)
    chat_path = page.url.removeprefix(web_url)
    prompt = page.get_by_label("Message")
    draft = "A carefully written prompt."
    prompt.fill(draft)
    page.reload()
    expect(prompt).to_have_value(draft)

    pick_unknown_model(page)
    prompt.press("Enter")
    expect(page.get_by_role("status")).to_contain_text(f"Not sent: model '{UNKNOWN_MODEL}'")
    expect(prompt).to_have_value(draft)
    expect(page.locator(".message.user")).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    page.get_by_label("Model").select_option(FAKE_MODEL)

    other_tab = page.context.new_page()
    other_tab.goto("/chats")
    other_tab.get_by_role("button", name="Log out").click()
    # Chromium may never finish closing a tab whose navigation is committing,
    # so the tab closes only once the log-in page has loaded.
    expect(other_tab.get_by_role("button", name="Log in")).to_be_visible()
    other_tab.wait_for_load_state()
    other_tab.close()
    prompt.press("Enter")
    login_link = page.get_by_role("link", name="Log in again")
    expect(login_link).to_be_visible()
    expect(login_link).to_have_attribute("href", f"/login?next={chat_path}")
    expect(prompt).to_have_value(draft)
    expect(page.locator(".message.user")).to_have_count(0)

    login_link.click()
    log_in(page)
    expect(page).to_have_url(f"{web_url}{chat_path}")
    expect(prompt).to_have_value(draft)
    prompt.press("Enter")
    expect(page.locator(".message.assistant[data-message-id] .content")).to_have_text(ANSWER)
    expect(prompt).to_have_value("")
    expect(page.get_by_role("heading", name=draft)).to_be_visible()
    expect(page.get_by_label("Title")).to_have_value(draft)
    expect(page).to_have_title(f"{draft} · llmcloud")

    page.reload()
    expect(page.locator(".message.user .content")).to_have_text([draft])
    expect(prompt).to_have_value("")

    # After a reload before `accepted`, a prompt that the server saved is not offered again,
    # only the text typed after it. A prompt that the server did not save comes back whole.
    for sent, restored in ((draft, "typed later"), ("lost", "lost\n\ntyped later")):
        page.evaluate(
            "([key, sent]) => sessionStorage.setItem(key, "
            "JSON.stringify({sent, typed: 'typed later'}))",
            [f"llmcloud.draft.{chat_path.rsplit('/', 1)[-1]}", sent],
        )
        page.reload()
        expect(prompt).to_have_value(restored)
    prompt.fill("")

    pick_unknown_model(page)
    page.get_by_role("button", name="Regenerate").click()
    expect(page.get_by_role("status")).to_contain_text("Not regenerated")
    expect(page.locator(".message.assistant .content")).to_have_text([ANSWER])

    # The answer shown since the reload has no data-tokens; only a streamed answer has them.
    page.get_by_label("Model").select_option(FAKE_MODEL)
    page.get_by_role("button", name="Regenerate").click()
    answers = page.locator(".message.assistant")
    expect(answers).to_have_attribute("data-tokens", re.compile(r"^\d+$"))
    expect(answers).to_have_attribute("data-message-id", re.compile(r"^\d+$"))
    expect(answers).to_have_count(1)
    page.context.close()


@pytest.fixture
def stalled_backend(backend: FakeBackend) -> Iterator[FakeBackend]:
    """The backend, sending three words of five and then nothing until the client leaves."""
    backend.tokens = [f"word{index} " for index in range(5)]
    backend.stall_after = 3
    yield backend
    backend.tokens = list(DEFAULT_TOKENS)
    backend.stall_after = None


def start_stalled_answer(browser: Browser, web_url: str) -> Page:
    page = open_new_chat(browser, web_url)
    page.get_by_label("Message").fill("Count slowly")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".message.assistant .content")).to_contain_text("word2")
    return page


def test_second_tab_follows_answer(
    browser: Browser, web_url: str, stalled_backend: FakeBackend
) -> None:
    page = start_stalled_answer(browser, web_url)
    other_tab = page.context.new_page()
    other_tab.goto(page.url)
    notice = other_tab.get_by_role("note").filter(has_text="another tab")
    expect(notice).to_contain_text("shows below as it streams")
    answer = other_tab.locator(".message.assistant")
    expect(answer.locator(".content")).to_have_text("word0 word1 word2")
    expect(other_tab.get_by_role("button", name="Send")).to_be_disabled()
    expect(other_tab.get_by_role("button", name="Stop")).to_be_disabled()

    page.get_by_role("button", name="Stop").click()
    expect(answer).to_have_attribute("data-message-id", re.compile(r"^\d+$"))
    expect(answer).to_have_class(re.compile(r"\binterrupted\b"))
    expect(answer.get_by_role("note")).to_have_text("Interrupted: stopped by the user")
    expect(notice).to_have_count(0)
    expect(other_tab.get_by_role("button", name="Send")).to_be_enabled()
    expect(other_tab.locator(".message.user .content")).to_have_text(["Count slowly"])

    # Having shown that answer, the tab stops following: a later answer's prompt is not on it.
    stalled_backend.stall_after = None
    stalled_backend.tokens = ["late"]
    page.get_by_label("Message").fill("Once more")
    page.get_by_label("Message").press("Enter")
    expect(page.locator(".message.assistant .content").last).to_have_text("late")
    expect(other_tab.locator(".message.assistant")).to_have_count(1)
    page.context.close()


def test_reload_during_answer_shows_it(
    browser: Browser, web_url: str, stalled_backend: FakeBackend
) -> None:
    page = start_stalled_answer(browser, web_url)
    page.reload()
    # The answer stops with the page's socket. The reloaded page may have been
    # rendered before it was saved, and then fetches the conversation again.
    answer = page.locator(".message.assistant")
    expect(answer.locator(".content")).to_have_text("word0 word1 word2")
    expect(answer.get_by_role("note")).to_have_text(
        "Interrupted: the browser disconnected during the answer"
    )
    expect(page.get_by_role("note").filter(has_text="has ended")).to_have_count(0)
    expect(page.get_by_role("button", name="Send")).to_be_enabled()
    page.context.close()


def test_failure_note_scrolled_into_view(
    browser: Browser, web_url: str, backend: FakeBackend
) -> None:
    page = open_new_chat(browser, web_url)
    backend.chat_status = 400
    try:
        page.get_by_label("Message").fill("A line of a long prompt.\n" * 400)
        page.get_by_label("Message").press("Enter")
        note = page.locator(".message.assistant").get_by_role("note")
        expect(note).to_contain_text("Failed: model")
        expect(note).to_be_in_viewport()
    finally:
        backend.chat_status = 200
    page.context.close()


def test_stale_tab_asked_to_reload(browser: Browser, web_url: str) -> None:
    page = open_new_chat(browser, web_url)
    prompt = page.get_by_label("Message")
    prompt.fill("First")
    prompt.press("Enter")
    expect(page.locator(".message.assistant[data-message-id] .content")).to_have_text(ANSWER)

    stale_tab = page.context.new_page()
    stale_tab.goto(page.url)
    prompt.fill("Second")
    prompt.press("Enter")
    expect(page.locator(".message.assistant[data-message-id]")).to_have_count(2)

    stale_tab.get_by_role("button", name="Regenerate").click()
    expect(stale_tab.get_by_role("status")).to_contain_text(
        "Not regenerated: this chat has new messages from another tab"
    )
    stale_prompt = stale_tab.get_by_label("Message")
    stale_prompt.fill("Third")
    stale_prompt.press("Enter")
    expect(stale_tab.get_by_role("status")).to_contain_text("Not sent: this chat has new messages")
    expect(stale_prompt).to_have_value("Third")

    stale_tab.reload()
    expect(stale_prompt).to_have_value("Third")
    stale_prompt.press("Enter")
    expect(stale_tab.locator(".message.assistant[data-message-id]")).to_have_count(3)
    expect(stale_tab.locator(".message.user .content")).to_have_text(["First", "Second", "Third"])
    page.context.close()


def test_chat_page_on_phone(browser: Browser, web_url: str, app: Any) -> None:
    page = open_new_chat(browser, web_url, viewport=PHONE)
    chat_id = page.url.rsplit("/", 1)[-1]
    db = app.state.web.db
    account = find_account(db, "alice")
    assert account is not None
    chats.add_message(db, account.id, chat_id, MessageRole.SYSTEM, "Answer in French.")
    page.reload()

    system = page.locator(".message.system")
    expect(system.get_by_role("heading", name="System prompt")).to_be_visible()
    assert page.locator("#messages").get_by_text("Answer", exact=True).count() == 0

    form = page.locator("#prompt-form").bounding_box()
    model = page.get_by_label("Model").bounding_box()
    send = page.get_by_role("button", name="Send").bounding_box()
    assert form is not None
    assert model is not None
    assert send is not None
    assert form["height"] <= 0.25 * PHONE["height"], f"prompt form is {form['height']} px high"
    assert abs(model["y"] - send["y"]) < 4, "model picker and Send are not on one line"
    width = page.evaluate("document.documentElement.scrollWidth")
    assert width <= PHONE["width"], f"page is {width} px wide"
    page.get_by_label("Message").focus()
    page.keyboard.press("Tab")
    expect(page.get_by_label("Model")).to_be_focused()

    page.get_by_text("Chat settings").click()
    page.get_by_label("Title").fill("   ")
    page.get_by_role("button", name="Rename").click()
    expect(page.get_by_role("alert").filter(has_text="Not renamed")).to_contain_text("chat title")
    expect(page.get_by_label("Title")).to_have_value("   ")
    expect(page.get_by_role("heading", name="New chat")).to_be_visible()

    # A pasted NUL character is the kind of mistake that the field's maxlength does not stop.
    typed = "Answer in the style of a ship's log. " * 100
    system_field = page.get_by_label("System prompt")
    system_field.evaluate("(field, text) => { field.value = text + '\\u0000'; }", typed)
    page.get_by_role("button", name="Save system prompt").click()
    expect(page.get_by_role("alert").filter(has_text="Not saved")).to_contain_text("system prompt")
    field_value = system_field.input_value()
    assert field_value.startswith(typed), f"typed system prompt lost: {field_value[:80]!r}"
    page.context.close()
