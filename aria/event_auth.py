"""How a source proves that an event is its own: the four modes of ``ARIA_EVENT_AUTH`` (described in aria.events).

`verify` answers with a `Proof` (what the sender authenticated, hashed into the key a replay is recognised by) or a
`Refusal` (why not). Secrets and signatures are compared in constant time: signatures as fixed-length hex digests,
bearer tokens and passwords through their SHA-256 digests, so not even their length leaks.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass

from aria.config import EventAuth

SIGNATURE_HEADER = "x-aria-signature"
TIMESTAMP_HEADER = "x-aria-timestamp"
GITHUB_SIGNATURE_HEADER = "x-hub-signature-256"
AUTHORIZATION_HEADER = "authorization"
FUTURE_SKEW_SECONDS = 60.0
MAX_STAMP_DIGITS = 12  # unix seconds stay 10 digits until the year 2286; more is never a real clock


@dataclass(frozen=True)
class Proof:
    """A verified delivery: the hash of what its sender authenticated, how long a delivery with the same hash is a
    replay (None: for ever), and the signed timestamp, when there is one."""

    replay_key: str
    window: dt.timedelta | None
    stamp: int | None = None


@dataclass(frozen=True)
class Refusal:
    """Why a delivery is not believed (answered 401)."""

    reason: str


def verify(mode: EventAuth, secret: bytes, headers: Mapping[str, str], body: bytes, *, now: float,
           max_age: float) -> Proof | Refusal:
    """Check a delivery by its source's mode; `now` is unix seconds, `max_age` the replay window in seconds."""
    if mode == "hmac":
        return _hmac(secret, headers, body, now, max_age)
    if mode == "github":
        given = headers.get(GITHUB_SIGNATURE_HEADER)
        if given is None:
            return Refusal("missing signature")
        if not _signed(secret, body, given):
            return Refusal("bad signature")
        # The signature covers the body only (X-GitHub-Delivery is not signed), and GitHub sends no timestamp: the
        # body itself is what a replay cannot change, so the same body is a duplicate for ever.
        return Proof(_sha(body), None)
    password = _credential(mode, headers.get(AUTHORIZATION_HEADER))
    if isinstance(password, Refusal):
        return password
    if not hmac.compare_digest(hashlib.sha256(password).digest(), hashlib.sha256(secret).digest()):
        return Refusal("bad credentials")
    # A bearer token or password proves who sent the request, not what it says or when: a captured request can be
    # replayed (or altered) at will, so the same body inside the window is a duplicate.
    return Proof(_sha(body), dt.timedelta(seconds=max_age))


def _hmac(secret: bytes, headers: Mapping[str, str], body: bytes, now: float, max_age: float) -> Proof | Refusal:
    given, stamp = headers.get(SIGNATURE_HEADER), headers.get(TIMESTAMP_HEADER)
    if given is None:
        return Refusal("missing signature")
    material = body if stamp is None else stamp.encode("utf-8", "replace") + b"." + body
    if not _signed(secret, material, given):
        return Refusal("bad signature")
    # A replay must reuse the signed material as it is (a new timestamp or body needs the secret): its hash is the key.
    if stamp is None:
        return Proof(_sha(material), None)
    if not (stamp.isascii() and stamp.isdigit() and len(stamp) <= MAX_STAMP_DIGITS):
        return Refusal("bad timestamp")
    age = now - int(stamp)  # plain arithmetic: no datetime that a year past 9999 could overflow
    if age > max_age:
        return Refusal("stale timestamp")
    if -age > min(FUTURE_SKEW_SECONDS, max_age):
        return Refusal("timestamp in the future")
    return Proof(_sha(material), None, int(stamp))


def _credential(mode: EventAuth, header: str | None) -> bytes | Refusal:
    """The bearer token, or the password of HTTP Basic credentials (any user name), from an Authorization header."""
    if header is None:
        return Refusal("missing credentials")
    scheme, _, value = header.strip().partition(" ")
    if scheme.lower() != mode:
        return Refusal("wrong authorization scheme")
    value = value.strip()
    if mode == "bearer":
        return value.encode("utf-8", "replace")
    try:
        decoded = base64.b64decode(value.encode("ascii"), validate=True)
    except (UnicodeEncodeError, binascii.Error):
        return Refusal("bad credentials")
    _user, colon, password = decoded.partition(b":")
    return password if colon else Refusal("bad credentials")


def _signed(secret: bytes, material: bytes, given: str) -> bool:
    expected = "sha256=" + hmac.new(secret, material, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected.encode(), given.strip().lower().encode("utf-8", "replace"))


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()
