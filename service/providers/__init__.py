"""Model providers: each turns a ModelRequest into a stream of text chunks."""

from __future__ import annotations

from service.config import ConfigError, Settings
from service.providers.base import Provider
from service.providers.offline import OfflineProvider


def make_provider(settings: Settings) -> Provider:
    """The provider `generation.provider` names."""
    name = settings.generation.provider
    if name == "offline":
        return OfflineProvider(settings.offline.tokens_per_second)
    raise ConfigError(f"generation.provider: unknown provider {name!r} (known: offline)")
