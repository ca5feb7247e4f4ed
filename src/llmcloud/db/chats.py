"""Chats and their messages, always seen through the account that owns them.

Every function takes the owner's user id and filters on it in the query, so
another account's chat id gives the same NotFound, with the same message, as
an id that does not exist. Chat ids are 16 random URL-safe characters.
Functions return detached objects: their columns are readable, but changing
them saves nothing.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Sequence
from typing import TypeVar

import sqlalchemy as sa
from sqlalchemy.orm import Session

from llmcloud.db.database import Database
from llmcloud.db.errors import InvalidInput, NotFound, quote_value
from llmcloud.db.models import Chat, Message, MessageRole, MessageStatus, utcnow
from llmcloud.text import describe_control_character, describe_nul

log = logging.getLogger("llmcloud.db")

CHAT_ID_BYTES = 12
DEFAULT_TITLE = "New chat"
MAX_TITLE_LENGTH = 200
MAX_MODEL_NAME_LENGTH = 200
MAX_SYSTEM_PROMPT_LENGTH = 100_000
MAX_CONTENT_LENGTH = 1_000_000
MAX_SEARCH_LENGTH = 200
MAX_PAGE_SIZE = 200
# OFFSET takes a signed 64-bit integer on PostgreSQL and SQLite.
MAX_OFFSET = 2**63 - 1
# The token count columns are INTEGER, which is 32 bits on PostgreSQL.
MAX_TOKEN_COUNT = 2**31 - 1

_Member = TypeVar("_Member", MessageRole, MessageStatus)


def create_chat(
    db: Database,
    user_id: int,
    *,
    title: str | None = None,
    model: str | None = None,
    system_prompt: str | None = None,
) -> Chat:
    now = utcnow()
    chat = Chat(
        id=secrets.token_urlsafe(CHAT_ID_BYTES),
        user_id=user_id,
        title=validate_title(title) if title is not None else DEFAULT_TITLE,
        model=validate_model_name(model),
        system_prompt=validate_system_prompt(system_prompt),
        created_at=now,
        updated_at=now,
    )
    with db.transaction() as session:
        session.add(chat)
    return chat


def get_chat(db: Database, user_id: int, chat_id: str) -> Chat:
    """Return the account's chat. Raises NotFound for a missing or foreign id alike."""
    with db.session() as session:
        return _owned_chat(session, user_id, chat_id)


def list_chats(
    db: Database, user_id: int, *, search: str | None = None, limit: int = 50, offset: int = 0
) -> Sequence[Chat]:
    """Return the account's chats, most recently updated first.

    `search` keeps the chats whose title or any message contains the text,
    ignoring case.
    """
    # NOTE: SQLite's lower() folds only ASCII letters, so there a search for "É"
    # does not find "é"; PostgreSQL's ILIKE folds all letters.
    if not 1 <= limit <= MAX_PAGE_SIZE:
        raise InvalidInput(f"limit {limit} is out of range; expected 1 to {MAX_PAGE_SIZE}")
    if not 0 <= offset <= MAX_OFFSET:
        raise InvalidInput(f"offset {offset} is out of range; expected 0 to {MAX_OFFSET}")
    query = sa.select(Chat).where(Chat.user_id == user_id)
    if search and search.strip():
        query = query.where(_matches(_validate_search(search.strip())))
    query = query.order_by(Chat.updated_at.desc(), Chat.id).limit(limit).offset(offset)
    with db.session() as session:
        return session.scalars(query).all()


def rename_chat(db: Database, user_id: int, chat_id: str, title: str) -> Chat:
    title = validate_title(title)
    with db.transaction() as session:
        chat = _owned_chat(session, user_id, chat_id)
        chat.title = title
        chat.updated_at = utcnow()
    return chat


def set_chat_model(db: Database, user_id: int, chat_id: str, model: str | None) -> Chat:
    model = validate_model_name(model)
    with db.transaction() as session:
        chat = _owned_chat(session, user_id, chat_id)
        chat.model = model
    return chat


def set_system_prompt(db: Database, user_id: int, chat_id: str, prompt: str | None) -> Chat:
    """Set the chat's system prompt; None or blank text removes it."""
    prompt = validate_system_prompt(prompt)
    with db.transaction() as session:
        chat = _owned_chat(session, user_id, chat_id)
        chat.system_prompt = prompt
        chat.updated_at = utcnow()
    return chat


def delete_chat(db: Database, user_id: int, chat_id: str) -> None:
    """Delete the chat and its messages."""
    with db.transaction() as session:
        _owned_chat(session, user_id, chat_id)
        session.execute(sa.delete(Chat).where(Chat.id == chat_id))
    log.info("chat %s of account %s deleted", chat_id, user_id)


def add_message(
    db: Database,
    user_id: int,
    chat_id: str,
    role: MessageRole | str,
    content: str,
    *,
    model: str | None = None,
    status: MessageStatus | str = MessageStatus.COMPLETE,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    error: str | None = None,
) -> Message:
    """Append a message to the chat and mark the chat as updated.

    An assistant message that a failing backend cut off is stored with its
    partial content, status `interrupted` and the error text.
    """
    role = _parse(MessageRole, role, "message role")
    content = validate_content(content)
    if role == MessageRole.ASSISTANT:
        # An answer is kept whatever the backend sent; PostgreSQL cannot store NUL.
        content = content.replace("\x00", "\ufffd")
    else:
        _check_no_nul(content, "message")
    message = Message(
        chat_id=chat_id,
        role=role,
        content=content,
        model=validate_model_name(model),
        status=_parse(MessageStatus, status, "message status"),
        prompt_tokens=_token_count(prompt_tokens, "prompt_tokens"),
        completion_tokens=_token_count(completion_tokens, "completion_tokens"),
        error=error,
        created_at=utcnow(),
    )
    with db.transaction() as session:
        chat = _owned_chat(session, user_id, chat_id)
        chat.updated_at = message.created_at
        session.add(message)
    return message


def list_messages(db: Database, user_id: int, chat_id: str) -> Sequence[Message]:
    """Return the chat's messages in the order they were added."""
    with db.session() as session:
        _owned_chat(session, user_id, chat_id)
        query = sa.select(Message).where(Message.chat_id == chat_id).order_by(Message.id)
        return session.scalars(query).all()


def last_message_id(db: Database, user_id: int, chat_id: str) -> int:
    """Return the id of the chat's newest message, or 0 for a chat without messages."""
    with db.session() as session:
        _owned_chat(session, user_id, chat_id)
        query = sa.select(sa.func.max(Message.id)).where(Message.chat_id == chat_id)
        return session.scalar(query) or 0


def remove_last_answer(db: Database, user_id: int, chat_id: str) -> Message | None:
    """Delete the chat's last message if it is from the assistant, so it can be regenerated.

    Returns the deleted message, or None when the last message is not from
    the assistant.
    """
    with db.transaction() as session:
        _owned_chat(session, user_id, chat_id)
        last = session.scalars(
            sa.select(Message).where(Message.chat_id == chat_id).order_by(Message.id.desc())
        ).first()
        if last is None or last.role != MessageRole.ASSISTANT:
            return None
        session.delete(last)
    return last


def validate_title(title: str) -> str:
    title = " ".join(title.split())
    if not 1 <= len(title) <= MAX_TITLE_LENGTH:
        raise InvalidInput(
            f"chat title {quote_value(title)} has {len(title)} characters; "
            f"expected 1 to {MAX_TITLE_LENGTH}"
        )
    problem = describe_control_character(title, f"chat title {quote_value(title)}")
    if problem is not None:
        raise InvalidInput(problem)
    return title


def validate_model_name(model: str | None) -> str | None:
    if model is None or not model.strip():
        return None
    model = model.strip()
    if len(model) > MAX_MODEL_NAME_LENGTH:
        raise InvalidInput(
            f"model name {quote_value(model)} has {len(model)} characters; "
            f"expected at most {MAX_MODEL_NAME_LENGTH}"
        )
    _check_no_nul(model, f"model name {quote_value(model)}")
    return model


def validate_system_prompt(prompt: str | None) -> str | None:
    if prompt is None or not prompt.strip():
        return None
    if len(prompt) > MAX_SYSTEM_PROMPT_LENGTH:
        raise InvalidInput(
            f"system prompt has {len(prompt)} characters; "
            f"expected at most {MAX_SYSTEM_PROMPT_LENGTH}"
        )
    _check_no_nul(prompt, "system prompt")
    return prompt


def validate_content(content: str) -> str:
    if len(content) > MAX_CONTENT_LENGTH:
        raise InvalidInput(
            f"message has {len(content)} characters; expected at most {MAX_CONTENT_LENGTH}"
        )
    return content


def _check_no_nul(text: str, where: str) -> None:
    problem = describe_nul(text, where)
    if problem is not None:
        raise InvalidInput(problem)


def _owned_chat(session: Session, user_id: int, chat_id: str) -> Chat:
    chat = session.scalars(
        sa.select(Chat).where(Chat.id == chat_id, Chat.user_id == user_id)
    ).one_or_none()
    if chat is None:
        raise NotFound(f"chat {quote_value(chat_id)} not found")
    return chat


def _matches(text: str) -> sa.ColumnElement[bool]:
    in_messages = (
        sa.select(Message.id)
        .where(Message.chat_id == Chat.id, Message.content.icontains(text, autoescape=True))
        .exists()
    )
    return sa.or_(Chat.title.icontains(text, autoescape=True), in_messages)


def _validate_search(text: str) -> str:
    if len(text) > MAX_SEARCH_LENGTH:
        raise InvalidInput(
            f"search text has {len(text)} characters; expected at most {MAX_SEARCH_LENGTH}"
        )
    return text


def _parse(kind: type[_Member], value: _Member | str, label: str) -> _Member:
    try:
        return kind(value)
    except ValueError:
        choices = ", ".join(member.value for member in kind)
        message = f"{label} {quote_value(str(value))} is unknown; expected one of: {choices}"
        raise InvalidInput(message) from None


def _token_count(value: int | None, name: str) -> int | None:
    if value is not None and value < 0:
        raise InvalidInput(f"{name} {value} is negative; expected a count of 0 or more")
    if value is not None and value > MAX_TOKEN_COUNT:
        raise InvalidInput(
            f"{name} {value} is too large; expected a count of at most {MAX_TOKEN_COUNT}"
        )
    return value
