"""Standard Webhooks signatures (https://www.standardwebhooks.com/).

``webhook-signature`` is ``v1,<base64 HMAC-SHA256 of "<id>.<timestamp>.<body>">``, one per
signing secret, space-separated, so a receiver keeps verifying while a secret is rotated.
Written here rather than with the ``standardwebhooks`` package's ``sign`` so that several secrets
sign one message; the tests verify every notification with that package.

An account may also ask for the Webex-style ``x-hub-signature: sha256=<hex HMAC-SHA256 of the
body>`` (``accounts.notify_hub_signature``), keyed with its newest secret (the bytes after
``whsec_``, base64-decoded: the same key as the Standard Webhooks signature). That scheme has one
signature and no timestamp, so it neither survives a rotation nor resists a replay; receivers
that can should verify ``webhook-signature``.
"""

from __future__ import annotations

import base64
import hashlib
import hmac

SECRET_PREFIX = "whsec_"  # noqa: S105 - a prefix, not a secret


def secret_bytes(secret: str) -> bytes:
    return base64.b64decode(secret.removeprefix(SECRET_PREFIX))


def sign(secrets: list[str], message_id: str, timestamp: int, body: bytes) -> str:
    signed = f"{message_id}.{timestamp}.".encode() + body
    digests = (hmac.new(secret_bytes(s), signed, hashlib.sha256).digest() for s in secrets)
    return " ".join("v1," + base64.b64encode(d).decode() for d in digests)


def hub_signature(secret: str, body: bytes) -> str:
    return "sha256=" + hmac.new(secret_bytes(secret), body, hashlib.sha256).hexdigest()


def headers(
    secrets: list[str], message_id: str, timestamp: int, body: bytes, *, hub: bool = False
) -> dict[str, str]:
    result = {
        "content-type": "application/json",
        "webhook-id": message_id,
        "webhook-timestamp": str(timestamp),
    }
    if secrets:
        result["webhook-signature"] = sign(secrets, message_id, timestamp, body)
        if hub:
            result["x-hub-signature"] = hub_signature(secrets[0], body)
    return result
