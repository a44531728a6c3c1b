"""The service's limits and patterns, in one place: validation, the views and the OpenAPI
description all read them from here, so they cannot drift apart."""
from __future__ import annotations

# Rooms are Kafka record keys and URL path segments: keep them plain.
ROOM_PATTERN = r"[A-Za-z0-9_-]{1,64}"
MAX_USER = 64
# The default longest message text (KCHAT_MAX_TEXT), in characters.
MAX_TEXT = 4000
# The default largest request body (KCHAT_MAX_BODY), and the smallest it may be set to.
MAX_BODY = 64 * 1024
MIN_BODY = 1024

# GET .../messages?limit=N
DEFAULT_HISTORY = 50
MAX_HISTORY = 500

# A resume token is "partition:offset"; offset -1 means "before the partition's first record".
EVENT_ID_PATTERN = r"[0-9]+:-?[0-9]+"
# The event id of a stored message (never -1).
STORED_EVENT_ID_PATTERN = r"[0-9]+:[0-9]+"

# Idempotency-Key: visible ASCII, as HTTP header values and payment APIs' keys are. A retry with
# the same key within the window (KCHAT_IDEMPOTENCY_WINDOW, seconds) of the previous attempt
# that reached the log is the same message.
IDEMPOTENCY_KEY_PATTERN = r"[!-~]{1,128}"
IDEMPOTENCY_WINDOW = 600.0
# How long a key is kept beyond that, in table idempotency_keys (KCHAT_IDEMPOTENCY_RETENTION, seconds).
IDEMPOTENCY_RETENTION = 86400.0
