"""Bearer-key check shared by the HTTP and gRPC edges (the same keys, the same comparison)."""
from __future__ import annotations

import hashlib
import hmac
from typing import Sequence

from .errors import Unauthenticated


def tenant_of(key: str) -> str:
    """The tenant a key stands for: a digest, so the key itself is never stored beside its sessions."""
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def check_bearer(header: str, keys: Sequence[str], how: str) -> str:
    """The caller's tenant, or Unauthenticated unless `header` is "Bearer <one of keys>"; `how`
    tells the client how to send it."""
    given = header[7:].strip() if header.lower().startswith("bearer ") else ""
    # compare against every key, in constant time, so timing reveals nothing
    if not any([hmac.compare_digest(given.encode(), k.encode()) for k in keys]) or not given:
        raise Unauthenticated(f"missing or invalid API key: send {how}")
    return tenant_of(given)
