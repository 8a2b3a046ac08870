"""The loopback address and a free port on it: what the test servers and the throwaway
PostgreSQL cluster share, kept free of pytest so that bench/ can start the cluster too."""

from __future__ import annotations

import socket
from typing import Final

LOOPBACK: Final = "127.0.0.1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port
