"""Signed image links that look like the service's TOS (object storage) pre-signed URLs.

The query string holds ``&`` separators and ``%2F`` escapes like the real one, so a client
that re-encodes, unescapes or cuts the link is caught: the emulator compares the raw query
string it receives byte for byte with the one it issued.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import time

#: The body TOS answers a link that does not match its signature, or has expired.
ACCESS_DENIED_BODY = b'{"Code":"AccessDenied","Message":"Access Denied","EC":"0003-00000015"}'
REGION = "cn-beijing"


class UrlSigner:
    """Issue TOS-style signature query strings for image files.

    :param secret: the HMAC key; random per signer when not given.
    """

    def __init__(self, secret: bytes | None = None) -> None:
        self._secret = secret if secret is not None else os.urandom(32)

    def query(self, file_name: str, issued_at: float, ttl: float) -> str:
        """Return the query string (without ``?``) that signs ``file_name`` for ``ttl`` seconds."""
        stamp = time.gmtime(issued_at)
        day = time.strftime("%Y%m%d", stamp)
        moment = time.strftime("%Y%m%dT%H%M%SZ", stamp)
        expires = f"{int(ttl)}" if float(ttl).is_integer() else f"{ttl:g}"
        credential = f"emulator%2F{day}%2F{REGION}%2Ftos%2Frequest"
        signed = "\n".join(("TOS4-HMAC-SHA256", file_name, moment, expires, credential)).encode()
        signature = hmac.new(self._secret, signed, hashlib.sha256).hexdigest()
        return (
            "X-Tos-Algorithm=TOS4-HMAC-SHA256"
            "&X-Tos-Content-Sha256=UNSIGNED-PAYLOAD"
            f"&X-Tos-Credential={credential}"
            f"&X-Tos-Date={moment}"
            f"&X-Tos-Expires={expires}"
            f"&X-Tos-Signature={signature}"
            "&X-Tos-SignedHeaders=host"
        )


def matches(issued: str, received: bytes) -> bool:
    """Whether the raw query string ``received`` is exactly the ``issued`` one."""
    return hmac.compare_digest(issued.encode("ascii"), received)
