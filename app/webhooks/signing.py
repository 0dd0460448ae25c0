"""Webhook messages signed as Standard Webhooks specifies: headers ``webhook-id``, ``webhook-timestamp`` and
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`` keyed with the base64-decoded
part of the ``whsec_…`` secret; and the wait between a failed attempt and the next."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

MAX_BACKOFF_S = 3600.0


def new_secret() -> str:
    return "whsec_" + base64.b64encode(secrets.token_bytes(24)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    """The ``webhook-signature`` header value for one message."""
    key = base64.b64decode(secret.removeprefix("whsec_"))
    mac = hmac.new(key, f"{msg_id}.{timestamp}.".encode() + body, hashlib.sha256).digest()
    return "v1," + base64.b64encode(mac).decode()


def backoff_s(attempts: int, base: float) -> float:
    """Wait after the ``attempts``-th failed attempt: base, 2·base, 4·base, … capped at one hour."""
    return min(base * 2 ** max(attempts - 1, 0), MAX_BACKOFF_S)
