"""The Python client, its SSE parser and the genstream CLI: nothing from the server side."""
