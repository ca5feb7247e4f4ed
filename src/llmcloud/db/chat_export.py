"""Export of chats to JSON and import back.

One format serves a single chat and all of an account's chats:

    {"format": "llmcloud-chats", "version": 1, "exported_at": "...",
     "chats": [{"id": "...", "title": "...", "model": "...", "system_prompt": null,
                "created_at": "...", "updated_at": "...",
                "messages": [{"role": "user", "content": "...", "status": "complete", ...}]}]}

An import creates new chats with new ids for the importing account and
ignores the ids in the file, so it cannot overwrite or reach another
account's data. The whole file is validated before anything is written, and
all chats are written in one transaction. A bad file gets an InvalidInput
that names the field, and nothing is stored. The checks cover what the
databases cannot store: NUL characters in text, token counts too large for
their INTEGER columns, and times outside the years 1 to 9999 once converted
to UTC.
"""

from __future__ import annotations

import json
import secrets
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Annotated, Any, Literal

import sqlalchemy as sa
from pydantic import (
    AfterValidator,
    AwareDatetime,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
)
from pydantic_core import PydanticCustomError

from llmcloud.db.chats import (
    CHAT_ID_BYTES,
    MAX_CONTENT_LENGTH,
    MAX_MODEL_NAME_LENGTH,
    MAX_SYSTEM_PROMPT_LENGTH,
    MAX_TITLE_LENGTH,
    MAX_TOKEN_COUNT,
    get_chat,
    list_messages,
)
from llmcloud.db.database import Database
from llmcloud.db.errors import InvalidInput, quote_value
from llmcloud.db.models import Chat, Message, MessageRole, MessageStatus, utcnow
from llmcloud.text import (
    control_character,
    json_type_name,
    number_too_long,
    surrogate_problem,
)

FORMAT_NAME = "llmcloud-chats"
FORMAT_VERSION = 1
MAX_IMPORT_CHATS = 10_000
MAX_IMPORT_MESSAGES_PER_CHAT = 10_000
MAX_ERRORS_SHOWN = 5
# Errors whose message already shows the input, so `_describe` adds no "(got ...)".
_VERSION_ERRORS = ("version_not_number", "version_unsupported")


def _check_version(value: object) -> object:
    """Accept only the JSON number 1, and name any other value in the error."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        if value == FORMAT_VERSION:
            return FORMAT_VERSION
        raise PydanticCustomError(
            "version_unsupported",
            "Version {version} is not supported; this llmcloud reads only version 1 of the "
            "export format",
            {"version": _shorten(str(value))},
        )
    if value is None:
        described = "null"
    elif isinstance(value, str | bool):
        described = f"the {json_type_name(value)} {_shorten(json.dumps(value))}"
    else:
        described = f"an {json_type_name(value)}"
    raise PydanticCustomError(
        "version_not_number", "Expected the number 1, not {value}", {"value": described}
    )


def _shorten(text: str, limit: int = 20) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _without_nul(value: str) -> str:
    index = value.find("\x00")
    if index >= 0:
        raise PydanticCustomError(
            "nul_character",
            "Text contains a NUL character (U+0000) at character {index}, which the database "
            "cannot store; remove it",
            {"index": index},
        )
    return value


def _title_without_controls(value: str) -> str:
    title = " ".join(value.split())
    index = control_character(title)
    if index is not None:
        raise PydanticCustomError(
            "control_character",
            "Title contains the control character {code} at character {index}; "
            "remove it or use printable text",
            {"code": f"U+{ord(title[index]):04X}", "index": index},
        )
    return title


def _in_utc_range(value: datetime) -> datetime:
    try:
        return value.astimezone(UTC)
    except OverflowError:
        raise PydanticCustomError(
            "datetime_out_of_range",
            "Time is out of range once converted to UTC; expected a time from "
            "0001-01-01T00:00:00Z to 9999-12-31T23:59:59Z",
        ) from None


Text = Annotated[str, AfterValidator(_without_nul)]
Time = Annotated[AwareDatetime, AfterValidator(_in_utc_range)]
TokenCount = Annotated[int, Field(strict=True, ge=0, le=MAX_TOKEN_COUNT)]


class ExportedMessage(BaseModel):
    model_config = ConfigDict(extra="ignore")

    role: MessageRole
    content: Text = Field(max_length=MAX_CONTENT_LENGTH)
    model: Text | None = Field(None, max_length=MAX_MODEL_NAME_LENGTH)
    created_at: Time | None = None
    status: MessageStatus = MessageStatus.COMPLETE
    prompt_tokens: TokenCount | None = None
    completion_tokens: TokenCount | None = None
    error: Text | None = Field(None, max_length=MAX_CONTENT_LENGTH)


class ExportedChat(BaseModel):
    model_config = ConfigDict(extra="ignore")

    id: str | None = None
    title: Annotated[str, AfterValidator(_title_without_controls)] = Field(
        min_length=1, max_length=MAX_TITLE_LENGTH
    )
    model: Text | None = Field(None, max_length=MAX_MODEL_NAME_LENGTH)
    system_prompt: Text | None = Field(None, max_length=MAX_SYSTEM_PROMPT_LENGTH)
    created_at: Time | None = None
    updated_at: Time | None = None
    messages: list[ExportedMessage] = Field(
        default_factory=list, max_length=MAX_IMPORT_MESSAGES_PER_CHAT
    )


class ChatArchive(BaseModel):
    model_config = ConfigDict(extra="ignore")

    format: Literal["llmcloud-chats"]
    version: Annotated[Literal[1], BeforeValidator(_check_version)]
    exported_at: AwareDatetime | None = None
    chats: list[ExportedChat] = Field(max_length=MAX_IMPORT_CHATS)


def export_chat(db: Database, user_id: int, chat_id: str) -> dict[str, Any]:
    """Return one of the account's chats as a JSON-ready dict. Raises NotFound."""
    chat = get_chat(db, user_id, chat_id)
    return _archive([_exported(chat, list_messages(db, user_id, chat_id))])


def export_chats(db: Database, user_id: int) -> dict[str, Any]:
    """Return all of the account's chats, most recently updated first."""
    with db.session() as session:
        chats = session.scalars(
            sa.select(Chat).where(Chat.user_id == user_id).order_by(Chat.updated_at.desc())
        ).all()
        messages = session.scalars(
            sa.select(Message)
            .join(Chat, Chat.id == Message.chat_id)
            .where(Chat.user_id == user_id)
            .order_by(Message.id)
        ).all()
    by_chat: dict[str, list[Message]] = {}
    for message in messages:
        by_chat.setdefault(message.chat_id, []).append(message)
    return _archive([_exported(chat, by_chat.get(chat.id, [])) for chat in chats])


def import_chats(db: Database, user_id: int, data: str | bytes | dict[str, Any]) -> list[Chat]:
    """Store the chats of an export as new chats of the account and return them.

    `data` is the JSON text or the parsed object. Raises InvalidInput, naming
    the field, for anything that is not a valid export; then nothing is stored.
    """
    archive = parse_archive(data)
    now = utcnow()
    created: list[Chat] = []
    with db.transaction() as session:
        for exported in archive.chats:
            chat = Chat(
                id=secrets.token_urlsafe(CHAT_ID_BYTES),
                user_id=user_id,
                title=exported.title or "Imported chat",
                model=exported.model or None,
                system_prompt=exported.system_prompt or None,
                created_at=exported.created_at or now,
                updated_at=exported.updated_at or exported.created_at or now,
            )
            session.add(chat)
            session.add_all(_message_rows(chat, exported.messages))
            created.append(chat)
    return created


def parse_archive(data: str | bytes | dict[str, Any]) -> ChatArchive:
    """Validate an export, raising InvalidInput that names the first bad fields."""
    if isinstance(data, bytes):
        data = _decode_utf8(data)
    if isinstance(data, str):
        try:
            data = json.loads(data)
        except json.JSONDecodeError as exc:
            raise InvalidInput(
                f"import file is not valid JSON: {exc.msg} at line {exc.lineno} column "
                f"{exc.colno}; expected a file made by the chat export"
            ) from None
        except ValueError:
            # Python's limit on the digits of an integer (4,300 by default) raises ValueError.
            raise InvalidInput(number_too_long("import file")) from None
        except RecursionError:
            raise InvalidInput(
                "import file is not valid JSON: it is nested too deeply; expected a file made "
                "by the chat export"
            ) from None
    problem = surrogate_problem(data)
    if problem is not None:
        raise InvalidInput(f"import file field {problem[1]}")
    try:
        return ChatArchive.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(_describe(exc)) from None


def _decode_utf8(data: bytes) -> str:
    """Decode the file as UTF-8, with or without a byte order mark."""
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise InvalidInput(
            f"import file is not UTF-8 text: byte 0x{data[exc.start]:02x} at offset "
            f"{exc.start} is invalid there; an export from llmcloud is UTF-8 JSON, so upload "
            "the exported file unchanged"
        ) from None


def _message_rows(chat: Chat, messages: Sequence[ExportedMessage]) -> list[Message]:
    return [
        Message(
            chat_id=chat.id,
            role=message.role,
            content=message.content,
            model=message.model,
            status=message.status,
            prompt_tokens=message.prompt_tokens,
            completion_tokens=message.completion_tokens,
            error=message.error,
            created_at=message.created_at or chat.updated_at,
        )
        for message in messages
    ]


def _exported(chat: Chat, messages: Sequence[Message]) -> ExportedChat:
    # Stored rows are exported without validation, so text stored before a check was added,
    # such as a title with a control character, is still exported. The import names the field.
    return ExportedChat.model_construct(
        id=chat.id,
        title=chat.title,
        model=chat.model,
        system_prompt=chat.system_prompt,
        created_at=chat.created_at,
        updated_at=chat.updated_at,
        messages=[
            ExportedMessage.model_construct(
                role=message.role,
                content=message.content,
                model=message.model,
                created_at=message.created_at,
                status=message.status,
                prompt_tokens=message.prompt_tokens,
                completion_tokens=message.completion_tokens,
                error=message.error,
            )
            for message in messages
        ],
    )


def _archive(chats: list[ExportedChat]) -> dict[str, Any]:
    archive = ChatArchive(
        format=FORMAT_NAME, version=FORMAT_VERSION, exported_at=utcnow(), chats=chats
    )
    return archive.model_dump(mode="json")


def _describe(exc: ValidationError) -> str:
    problems = []
    for error in exc.errors()[:MAX_ERRORS_SHOWN]:
        location = ".".join(str(part) for part in error["loc"]) or "top level"
        value = error.get("input")
        shows_value = isinstance(value, str | int | float) and error["type"] not in _VERSION_ERRORS
        got = f" (got {quote_value(str(value))})" if shows_value else ""
        problems.append(f"{location}: {error['msg']}{got}")
    more = exc.error_count() - MAX_ERRORS_SHOWN
    if more > 0:
        problems.append(f"and {more} more problems")
    return "invalid chat import file: " + "; ".join(problems)
