"""Model providers: each turns a ModelRequest into a stream of text chunks."""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Final

from service.config import ConfigError, Settings
from service.generation.providers.base import Provider
from service.generation.providers.offline import OfflineProvider

# The key is read from the environment only, so no config file can leak it.
API_KEY_VARIABLE: Final = "OPENAI_API_KEY"


def make_provider(settings: Settings, environ: Mapping[str, str] | None = None) -> Provider:
    """The provider `generation.provider` names; "auto" is openai when a key is set."""
    environ = os.environ if environ is None else environ
    name = settings.generation.provider
    api_key = environ.get(API_KEY_VARIABLE, "")
    if name == "auto":
        name = "openai" if api_key else "offline"
    if name == "offline":
        return OfflineProvider(settings.offline.tokens_per_second)
    if name == "openai":
        if not api_key:
            raise ConfigError(
                f"generation.provider = openai needs {API_KEY_VARIABLE} in the environment "
                "(any non-empty value for a local server such as Ollama)"
            )
        # Imported here: the openai SDK is slow to import and only this provider needs
        # it; and service.generation.prompts (which it imports) imports this package's base.
        from service.generation.providers.openai_provider import OpenAIProvider

        # The output cap also bounds one event of its stream (openai_provider._SSEDecoder).
        return OpenAIProvider(
            settings.openai, api_key, max_output_chars=settings.generation.max_output_chars
        )
    raise ConfigError(
        f"generation.provider: unknown provider {name!r} (known: offline, openai, auto)"
    )
