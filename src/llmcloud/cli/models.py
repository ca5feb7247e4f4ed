"""Client commands that talk to a running engine over HTTP, as Ollama's CLI does.

`run`, `list`, `ps`, `show`, `pull`, `create`, `cp` and `rm` each send one or
a few requests through `EngineClient`. The engine's URL comes from `--url`
or the engine_url setting, and its Bearer token from the engine_token
setting. Every failure exits with status 1 and the engine's message.
"""

from __future__ import annotations

import ipaddress
import sys
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager, suppress
from datetime import UTC, datetime
from pathlib import Path

import click
import httpx
import typer
from rich.console import Console

from llmcloud.cli.chat import ChatSession, answer_once
from llmcloud.cli.common import fail
from llmcloud.cli.display import ProgressView, human_bytes, human_time, parse_time, print_table
from llmcloud.cli.model_info import SHOW_FIELDS, render_show
from llmcloud.engine.client import (
    EngineClient,
    EngineClientError,
    EngineUnreachable,
    ModelNotFoundError,
    Stream,
    sha256_digest,
)
from llmcloud.engine.errors import InvalidRequest
from llmcloud.engine.modelfile import local_model_file, parse_modelfile
from llmcloud.settings import ConfigError, load_settings
from llmcloud.units import parse_duration

URL_HELP = "Engine URL; default: the engine_url setting (env LLMCLOUD_ENGINE_URL)."
LOOPBACK_NAMES = frozenset({"localhost", "localhost.localdomain"})


def register(app: typer.Typer) -> None:
    """Add the client commands (run, list, ps, pull, show, rm, cp, create) to the app."""
    app.command("run")(run)
    app.command("list")(list_models)
    app.command("ps")(running_models)
    app.command("show")(show)
    app.command("pull")(pull)
    app.command("create")(create)
    app.command("cp")(copy)
    app.command("rm")(remove)


def run(
    model: str = typer.Argument(..., help="Model to chat with; pulled first when missing."),
    prompt: list[str] | None = typer.Argument(
        None, help="Message to answer; without one (and with a terminal) an interactive chat."
    ),
    keepalive: str | None = typer.Option(
        None, "--keepalive", help="How long the model stays loaded afterwards, such as 5m."
    ),
    insecure: bool = typer.Option(
        False, "--insecure", help="Allow plain HTTP to the registry if the model must be pulled."
    ),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Answer a prompt, or chat with a model in the terminal."""
    text = " ".join(prompt or [])
    if not sys.stdin.isatty():
        piped = sys.stdin.read()
        text = f"{piped}\n{text}" if piped and text else piped or text
    interactive = not text and sys.stdin.isatty() and sys.stdout.isatty()
    if keepalive is not None:
        _check_duration(keepalive)

    with _engine(url) as client:
        ensure_model(client, model, insecure=insecure)
        if interactive:
            _enable_line_editing()
            ChatSession(client, model, keep_alive=keepalive).run(input)
        else:
            answer_once(client, model, text, keep_alive=keepalive)


def list_models(
    prefix: str | None = typer.Argument(
        None, help="Show only models whose names start with this text."
    ),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """List the models in the engine's store."""
    with _engine(url) as client:
        models = client.list_models()
    rows = [
        [
            str(model.get("name", "")),
            _short_id(model.get("digest")),
            human_bytes(int(model.get("size") or 0)),
            human_time(parse_time(model.get("modified_at"))),
        ]
        for model in models
        if not prefix or str(model.get("name", "")).lower().startswith(prefix.lower())
    ]
    print_table(Console(), ["NAME", "ID", "SIZE", "MODIFIED"], rows)


def running_models(url: str | None = typer.Option(None, "--url", help=URL_HELP)) -> None:
    """List the models loaded in memory, and until when they stay loaded."""
    with _engine(url) as client:
        models = client.running_models()
    now = datetime.now(UTC)
    rows = [
        [
            str(model.get("name", "")),
            _short_id(model.get("digest")),
            human_bytes(int(model.get("size") or 0)),
            processor_share(int(model.get("size") or 0), int(model.get("size_vram") or 0)),
            str(model.get("context_length") or ""),
            _until(parse_time(model.get("expires_at")), now),
        ]
        for model in models
    ]
    print_table(Console(), ["NAME", "ID", "SIZE", "PROCESSOR", "CONTEXT", "UNTIL"], rows)


def show(
    model: str = typer.Argument(..., help="Model to describe."),
    modelfile: bool = typer.Option(False, "--modelfile", help="Print the Modelfile only."),
    template: bool = typer.Option(False, "--template", help="Print the prompt template only."),
    system: bool = typer.Option(False, "--system", help="Print the system message only."),
    parameters: bool = typer.Option(False, "--parameters", help="Print the parameters only."),
    license: bool = typer.Option(False, "--license", help="Print the license only."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Show a model's architecture, size, context length, parameters and license."""
    chosen = [
        name
        for name, flag in zip(
            SHOW_FIELDS, (modelfile, template, system, parameters, license), strict=True
        )
        if flag
    ]
    if len(chosen) > 1:
        fail(
            f"--{' and --'.join(chosen)} were given together; choose one of "
            + ", ".join(f"--{name}" for name in SHOW_FIELDS)
        )
    with _engine(url) as client:
        info = client.show(model)
    if chosen:
        text = str(info.get(chosen[0]) or "")
        typer.echo(text, nl=bool(text) and not text.endswith("\n"))
        return
    Console().out(render_show(info), highlight=False, end="")


def pull(
    source: str = typer.Argument(
        ..., help="Model name in a registry, http(s) URL of a GGUF file, or its path."
    ),
    name: str | None = typer.Option(
        None,
        "--name",
        help="Name to save the model as; default: the registry name, or the file name of a "
        "URL or path.",
    ),
    insecure: bool = typer.Option(False, "--insecure", help="Allow plain HTTP to the registry."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Download a model into the engine's store from a registry, a URL or a file."""
    with _engine(url) as client:
        model, origin = pull_target(source, name, client.url)
        pull_with_progress(client, model, source=origin, insecure=insecure)
    if origin is not None and name is None:
        typer.echo(f"saved as {model}")


def create(
    model: str = typer.Argument(..., help="Name of the new model."),
    file: Path = typer.Option(Path("Modelfile"), "--file", "-f", help="Path of the Modelfile."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Create a model from a Modelfile (FROM, PARAMETER, TEMPLATE, SYSTEM, LICENSE)."""
    if not file.is_file():
        fail(f"Modelfile {file} not found; give its path with -f")
    try:
        text = file.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        fail(f"cannot read the Modelfile {file}: {exc}")

    with _engine(url) as client:
        create_from_modelfile(client, model, text, file.resolve().parent)


def copy(
    source: str = typer.Argument(..., help="Model to copy."),
    destination: str = typer.Argument(..., help="New name for it."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Give a model a second name."""
    with _engine(url) as client:
        client.copy(source, destination)
    typer.echo(f"copied '{source}' to '{destination}'")


def remove(
    models: list[str] = typer.Argument(..., help="Models to delete."),
    url: str | None = typer.Option(None, "--url", help=URL_HELP),
) -> None:
    """Delete models from the engine's store; the engine unloads them from memory too."""
    failed = False
    with _engine(url) as client:
        for model in models:
            try:
                client.delete(model)
            except EngineUnreachable:
                raise
            except EngineClientError as exc:
                typer.secho(f"Error: {exc.message}", err=True, fg=typer.colors.RED)
                failed = True
                continue
            typer.echo(f"deleted '{model}'")
    if failed:
        raise typer.Exit(1)


# Steps that the commands share; tests call them directly.


def ensure_model(client: EngineClient, model: str, *, insecure: bool = False) -> None:
    """Pull a model with a progress bar unless the engine already has it."""
    try:
        client.show(model)
    except ModelNotFoundError:
        pull_with_progress(client, model, insecure=insecure)


def pull_with_progress(
    client: EngineClient, model: str, *, source: str | None = None, insecure: bool = False
) -> None:
    _follow(client.pull(model, source=source, insecure=insecure))


def pull_target(source: str, name: str | None, engine_url: str) -> tuple[str, str | None]:
    """Return the model name to pull as and the `from` value (None for a registry name).

    URLs and file paths are classified as the engine does. A relative path
    that exists here is made absolute when the engine runs on this machine.
    """
    from llmcloud.engine.pull import resolve_source

    target = resolve_source(source, name)
    if target.kind == "registry":
        return (name, source) if name else (source, None)
    if target.kind == "file" and is_loopback_url(engine_url):
        path = Path(target.location)
        if path.exists():
            return target.name.display, str(path.resolve())
    return target.name.display, source


def create_from_modelfile(client: EngineClient, model: str, text: str, base_dir: Path) -> None:
    """Create `model` from a Modelfile's text, uploading a local GGUF file named in FROM."""
    modelfile = parse_modelfile(text)
    path = local_model_file(modelfile.from_, base_dir)
    files = None
    if path is not None:
        files = {path.name: upload_with_progress(client, path)}
    licenses = modelfile.licenses
    events = client.create(
        model,
        from_=None if path is not None else modelfile.from_,
        files=files,
        template=modelfile.template,
        system=modelfile.system,
        parameters=modelfile.parameters or None,
        license=licenses[0] if len(licenses) == 1 else licenses or None,
    )
    _follow(events)


def upload_with_progress(client: EngineClient, path: Path) -> str:
    """Hash a file and upload it as a blob unless the engine has it; return its digest."""
    size = path.stat().st_size
    with ProgressView(Console(stderr=True)) as view:
        digest = sha256_digest(path, _byte_progress(view, f"reading {path.name}", size))
        label = f"copying file {_short_id(digest)}"
        client.upload_blob(path, digest, _byte_progress(view, label, size))
    return digest


def processor_share(size: int, size_vram: int) -> str:
    """Describe where a loaded model sits, as `ollama ps` does in Ollama's cmd/cmd.go.

    Returns "100% CPU", "100% GPU", a split such as "48%/52% CPU/GPU", or "Unknown".
    """
    if size_vram == 0:
        return "100% CPU"
    if size_vram == size:
        return "100% GPU"
    if size_vram > size or size == 0:
        return "Unknown"
    cpu = round((size - size_vram) / size * 100)
    return f"{cpu}%/{100 - cpu}% CPU/GPU"


def is_loopback_url(url: str) -> bool:
    host = httpx.URL(url).host.lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Internals


@contextmanager
def _engine(url: str | None) -> Iterator[EngineClient]:
    """Open a client for the engine and turn its errors into CLI errors with exit status 1."""
    # No configure_logging here, because these commands write no log records.
    try:
        settings = load_settings()
    except ConfigError as exc:
        fail(str(exc), code=2)
    engine_url = url or settings.engine_url
    if not engine_url.startswith(("http://", "https://")):
        fail(f"invalid engine URL {engine_url!r}: expected http://HOST:PORT or https://HOST:PORT")
    token = settings.engine_token.get_secret_value() if settings.engine_token else None
    client = EngineClient(engine_url, token)
    try:
        yield client
    except EngineUnreachable as exc:
        fail(
            f"no engine is running at {exc.url}; start one with {_start_command()}, "
            "or give the URL of a running engine with --url or LLMCLOUD_ENGINE_URL"
        )
    except (EngineClientError, InvalidRequest) as exc:
        fail(exc.message)
    finally:
        client.close()


def _start_command() -> str:
    """Name the commands that start an engine, with `llmcloud up` where it exists."""
    context = click.get_current_context(silent=True)
    root = context.find_root().command if context is not None else None
    if isinstance(root, click.Group) and "up" in root.commands:
        return "`llmcloud engine` (or `llmcloud up` for the whole service)"
    return "`llmcloud engine`"


def _follow(events: Stream) -> None:
    with closing(events), ProgressView(Console(stderr=True)) as view:
        for event in events:
            view.update(event)


def _byte_progress(view: ProgressView, label: str, total: int) -> Callable[[int], None]:
    def report(done: int) -> None:
        view.update({"status": label, "total": total, "completed": done})

    return report


def _check_duration(value: str) -> None:
    try:
        parse_duration(value)
    except ValueError as exc:
        fail(str(exc))


def _enable_line_editing() -> None:
    """Give input() line editing and history where the readline module exists."""
    with suppress(ImportError):
        import readline  # noqa: F401


def _short_id(digest: object) -> str:
    return str(digest or "").removeprefix("sha256:")[:12]


def _until(expires: datetime | None, now: datetime) -> str:
    if expires is not None and expires < now:
        return "Stopping..."
    return human_time(expires, now)
