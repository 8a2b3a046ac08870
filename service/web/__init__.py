"""The HTTP edge: the app, the API, the SSE stream handler, metrics, the server."""
