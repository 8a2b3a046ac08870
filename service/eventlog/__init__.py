"""The event log: an event and its SSE frame, the journal, the broker, retention."""
