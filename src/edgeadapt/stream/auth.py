"""Per-device tokens: HMAC-SHA256 of the device id under the trainer's secret.

The trainer keeps one secret (a Kubernetes Secret mounted as a file); a device's token is
``ea1.`` followed by the URL-safe base64 of HMAC-SHA256(secret, device id). Tokens can be minted
for any device without the trainer holding a list, a leaked token is good for one device only,
and rotating the secret revokes every token at once. The agent sends the token and its device
id as call metadata on every stream.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from pathlib import Path

AUTHORIZATION_KEY = "authorization"
DEVICE_KEY = "x-edgeadapt-device"
TOKEN_PREFIX = "ea1."
_DEVICE_ID = re.compile(r"[a-z0-9]([-a-z0-9.]{0,251}[a-z0-9])?")


def valid_device_id(device_id: str) -> bool:
    """A DNS-1123 subdomain, like the EdgeDevice's name (and safe as a directory name)."""
    return bool(_DEVICE_ID.fullmatch(device_id)) and ".." not in device_id


def new_secret() -> bytes:
    return secrets.token_bytes(32)


def load_secret(path: str | Path) -> bytes:
    secret = Path(path).read_bytes().strip()
    if len(secret) < 16:
        raise ValueError(f"token secret in {path} is shorter than 16 bytes")
    return secret


def mint_token(secret: bytes, device_id: str) -> str:
    if not valid_device_id(device_id):
        raise ValueError(f"invalid device id {device_id!r}")
    mac = hmac.new(secret, device_id.encode(), hashlib.sha256).digest()
    return TOKEN_PREFIX + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def status_token(secret: bytes) -> str:
    """The bearer token for the trainer's ``/status``, which the operator derives from the same
    secret. The MAC covers a string no device id can be (it holds a NUL), so it is never a
    device's token."""
    mac = hmac.new(secret, b"\x00status", hashlib.sha256).digest()
    return "ea1s." + base64.urlsafe_b64encode(mac).rstrip(b"=").decode()


def verify_token(secret: bytes, device_id: str, token: str) -> bool:
    if not valid_device_id(device_id):
        return False
    return hmac.compare_digest(mint_token(secret, device_id), token)


def call_metadata(device_id: str, token: str) -> tuple[tuple[str, str], ...]:
    return ((AUTHORIZATION_KEY, f"Bearer {token}"), (DEVICE_KEY, device_id))


def from_metadata(metadata: object) -> tuple[str, str]:
    """(device id, token) from a call's invocation metadata; empty strings where absent."""
    device, token = "", ""
    for key, value in metadata or ():  # type: ignore[attr-defined]
        if key == DEVICE_KEY:
            device = str(value)
        elif key == AUTHORIZATION_KEY and str(value).startswith("Bearer "):
            token = str(value)[len("Bearer ") :]
    return device, token
