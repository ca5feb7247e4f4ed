"""The chat web app in headless Chromium, with the real bundled model.

Debian's chromium (installed by scripts/install-test-packages) is driven
through Playwright's Python package. Playwright's own browser download is
never used. The web app runs in uvicorn on loopback with two backends: the
engine with smollm2:135m, and a fake backend whose model `fake-model`
answers with markup that would run script if it reached the page as HTML.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Browser, Page, expect

from llmcloud.auth.accounts import approve, find_account
from llmcloud.db import open_database
from llmcloud.db.database import default_database_url
from llmcloud.web import create_app
from tests.conftest import BUNDLED_MODEL, RunningServer
from tests.gateway.fake_backend import FakeBackend
from tests.web.conftest import CHEAP_HASHER, FAKE_MODEL, PASSWORD, needs_chromium, web_settings

HOSTILE_TOKENS = [
    "Look: <script>window.pwned = 'script'</script> ",
    "<img src=x onerror=\"window.pwned = 'img'\"> ",
    "[click](javascript:window.pwned='link') ",
    "done",
]
ANSWER_SECONDS = 120_000
# Enough tokens to see an answer stream in pieces, few enough to keep the test short.
MAX_ANSWER_TOKENS = 48

pytestmark = [
    pytest.mark.model,
    needs_chromium,
]


@pytest.fixture(scope="module")
def hostile_backend() -> Iterator[FakeBackend]:
    backend = FakeBackend((FAKE_MODEL,)).start()
    backend.tokens = list(HOSTILE_TOKENS)
    yield backend
    backend.stop()


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("web-browser")


@pytest.fixture(scope="module")
def web_url(engine_url: str, hostile_backend: FakeBackend, data_dir: Path) -> Iterator[str]:
    backends = [
        {"name": "engine", "kind": "ollama", "base_url": engine_url},
        {"name": "hostile", "kind": "openai", "base_url": hostile_backend.url},
    ]
    settings = web_settings(
        data_dir,
        hostile_backend.url,
        gateway_backends=backends,
        gateway_first_token_timeout=60.0,
        web_default_model=BUNDLED_MODEL,
        web_max_answer_tokens=MAX_ANSWER_TOKENS,
    )
    server = RunningServer(create_app(settings, hasher=CHEAP_HASHER)).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="module")
def admin_page(browser: Browser, web_url: str) -> Iterator[Page]:
    """A page of the first account, which signs up through the form and becomes the admin."""
    context = browser.new_context(base_url=web_url)
    page = context.new_page()
    page.goto("/")
    expect(page.get_by_role("heading", name="Create the first account")).to_be_visible()
    fill_signup(page, "alice")
    expect(page).to_have_url(f"{web_url}/chats")
    yield page
    context.close()


def fill_signup(page: Page, username: str) -> None:
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_label("Password again").fill(PASSWORD)
    page.get_by_role("button", name="Create the admin account").or_(
        page.get_by_role("button", name="Sign up")
    ).click()


def start_chat(page: Page, model: str) -> None:
    page.goto("/chats")
    page.get_by_role("button", name="New chat").click()
    expect(page.get_by_role("heading", name="New chat")).to_be_visible()
    page.get_by_label("Model").select_option(model)


def record_answer_lengths(page: Page) -> None:
    """Record the answer's text length at every change of the conversation, in window.lengths."""
    page.evaluate(
        """() => {
            window.lengths = [];
            const messages = document.getElementById("messages");
            new MutationObserver(() => {
                const answers = messages.querySelectorAll(".message.assistant");
                const last = answers[answers.length - 1];
                if (last) window.lengths.push(last.textContent.length);
            }).observe(messages, {childList: true, subtree: true, characterData: true});
        }"""
    )


def last_answer(page: Page) -> str:
    answer = page.locator(".message.assistant[data-message-id]").last
    expect(answer).not_to_have_attribute("data-message-id", "", timeout=ANSWER_SECONDS)
    return answer.locator(".content").inner_text()


def test_first_user_chats_with_model(admin_page: Page) -> None:
    page = admin_page
    start_chat(page, BUNDLED_MODEL)
    record_answer_lengths(page)
    page.get_by_label("Message").fill("Name three colours.")
    page.get_by_label("Message").press("Enter")

    answer = last_answer(page)
    lengths = page.evaluate("window.lengths")
    assert answer.strip()
    assert len(set(lengths)) > 2, f"the answer arrived in one piece: lengths {lengths}"

    page.reload()
    expect(page.locator(".message.user .content")).to_have_text(["Name three colours."])
    expect(page.locator(".message.assistant .content")).to_have_text([answer])
    expect(page.get_by_role("heading", name="Name three colours.")).to_be_visible()


def test_chat_kept_in_chat_list(admin_page: Page) -> None:
    admin_page.goto("/chats")
    expect(admin_page.get_by_role("link", name="Name three colours.")).to_be_visible()


def test_second_user_waits_for_approval(browser: Browser, web_url: str, data_dir: Path) -> None:
    context = browser.new_context(base_url=web_url)
    page = context.new_page()
    page.goto("/signup")
    fill_signup(page, "bob")
    expect(page).to_have_url(f"{web_url}/pending")
    expect(page.get_by_text("is waiting for an admin's approval")).to_be_visible()
    page.goto("/chats")
    expect(page).to_have_url(f"{web_url}/login?next=/chats")
    page.goto("/pending")
    expect(page.get_by_text("is waiting for an admin's approval")).to_be_visible()

    database = open_database(default_database_url(data_dir))
    try:
        approve(database, find_account(database, "bob").id)  # type: ignore[union-attr]
    finally:
        database.dispose()
    # The waiting page checks every 5 seconds, without a reload.
    expect(page.get_by_text("is approved")).to_be_visible(timeout=15_000)
    page.get_by_role("link", name="Log in").click()
    page.get_by_label("Username").fill("bob")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    expect(page).to_have_url(f"{web_url}/chats")
    context.close()


def test_script_in_answer_does_not_run(admin_page: Page) -> None:
    page = admin_page
    start_chat(page, FAKE_MODEL)
    page.get_by_label("Message").fill("Show me some HTML.")
    page.get_by_role("button", name="Send").click()

    answer = last_answer(page)
    assert "<script>window.pwned = 'script'</script>" in answer
    assert page.evaluate("window.pwned") is None
    page.reload()
    expect(page.locator(".message.assistant .content")).to_contain_text(["<script>"])
    assert page.evaluate("window.pwned") is None
    assert page.locator(".message.assistant a[href^='javascript']").count() == 0


def tab_to(page: Page, name: str, limit: int = 30) -> None:
    """Press Tab until the element with this id or text has the focus."""
    for _ in range(limit):
        page.keyboard.press("Tab")
        focused = page.evaluate(
            "() => [document.activeElement.id, (document.activeElement.innerText || '').trim()]"
        )
        if name in focused:
            return
    pytest.fail(f"{name!r} cannot be reached with the Tab key")


def test_keyboard_only_login_and_chat(browser: Browser, web_url: str, admin_page: Page) -> None:
    context = browser.new_context(base_url=web_url)
    page = context.new_page()
    page.goto("/login")
    # Chromium may apply autofocus after the load event, and keys typed before that are lost.
    expect(page.get_by_label("Username")).to_be_focused()
    page.keyboard.type("alice")
    page.keyboard.press("Tab")
    page.keyboard.type(PASSWORD)
    page.keyboard.press("Enter")
    expect(page).to_have_url(f"{web_url}/chats")

    tab_to(page, "New chat")
    page.keyboard.press("Enter")
    expect(page.get_by_role("heading", name="New chat")).to_be_visible()
    tab_to(page, "model")
    page.keyboard.press("ArrowUp")
    expect(page.get_by_label("Model")).to_have_value(FAKE_MODEL)
    tab_to(page, "prompt")
    page.keyboard.type("Show me some HTML.")
    page.keyboard.press("Enter")
    assert last_answer(page).endswith("done")
    context.close()


def test_chat_page_fits_phone_screen(browser: Browser, web_url: str, admin_page: Page) -> None:
    context = browser.new_context(base_url=web_url, viewport={"width": 360, "height": 740})
    page = context.new_page()
    page.goto("/login")
    page.get_by_label("Username").fill("alice")
    page.get_by_label("Password").fill(PASSWORD)
    page.get_by_role("button", name="Log in").click()
    page.get_by_role("link", name="Name three colours.").first.click()
    expect(page.get_by_role("button", name="Send")).to_be_visible()
    assert page.evaluate("document.documentElement.scrollWidth") <= 360
    context.close()


def test_stop_button_keeps_partial_answer(admin_page: Page, hostile_backend: FakeBackend) -> None:
    page = admin_page
    hostile_backend.tokens = [f"word{index} " for index in range(200)]
    hostile_backend.token_interval = 0.05
    try:
        start_chat(page, FAKE_MODEL)
        page.get_by_label("Message").fill("Talk for a while.")
        page.get_by_role("button", name="Send").click()
        expect(page.locator(".message.assistant")).to_contain_text("word2")
        page.get_by_role("button", name="Stop").click()
        expect(page.get_by_text("Interrupted: stopped by the user")).to_be_visible()
    finally:
        hostile_backend.tokens = list(HOSTILE_TOKENS)
        hostile_backend.token_interval = 0.0

    page.reload()
    expect(page.get_by_text("Interrupted: stopped by the user")).to_be_visible()
    expect(page.locator(".message.assistant .content")).to_contain_text(["word0 word1 word2"])
    expect(page.get_by_role("button", name="Regenerate")).to_be_enabled()
