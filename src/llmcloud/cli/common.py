"""Helpers shared by the command modules: settings loading and error exits."""

from __future__ import annotations

from typing import NoReturn

import typer

from llmcloud.logs import configure_logging
from llmcloud.settings import ConfigError, Settings, load_settings


def fail(message: str, code: int = 1) -> NoReturn:
    typer.secho(f"Error: {message}", err=True, fg=typer.colors.RED)
    raise typer.Exit(code)


def settings_or_exit(**overrides: object) -> Settings:
    """Load the settings and set up logging, or exit with the configuration error."""
    try:
        settings = load_settings(**{k: v for k, v in overrides.items() if v is not None})
    except ConfigError as exc:
        fail(str(exc), code=2)
    configure_logging(settings.log_level, settings.log_format)
    return settings
