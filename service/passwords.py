"""Password hashing with bcrypt (the scheme DHIS2 itself uses, so imported hashes keep working)."""

from __future__ import annotations

import bcrypt

# bcrypt reads at most 72 bytes; longer passwords are refused rather than silently truncated.
MAX_PASSWORD_BYTES = 72
MIN_PASSWORD_LENGTH = 8
_DUMMY_HASH = bcrypt.hashpw(b"not-a-password", bcrypt.gensalt(rounds=12)).decode()


def check_new_password(password: str) -> str | None:
    """Why `password` is not acceptable, or None when it is."""
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"Password must be at least {MIN_PASSWORD_LENGTH} characters."
    if len(password.encode("utf-8")) > MAX_PASSWORD_BYTES:
        return f"Password must be at most {MAX_PASSWORD_BYTES} bytes."
    return None


def hash_password(password: str, rounds: int = 12) -> str:
    return bcrypt.hashpw(password.encode("utf-8"), bcrypt.gensalt(rounds=rounds)).decode()


def verify_password(password: str, password_hash: str | None) -> bool:
    """Constant-time check; a user without a hash still costs one bcrypt round (no timing
    oracle)."""
    raw = password.encode("utf-8")
    if len(raw) > MAX_PASSWORD_BYTES:
        return False
    try:
        if password_hash is None:
            bcrypt.checkpw(raw, _DUMMY_HASH.encode())
            return False
        return bcrypt.checkpw(raw, password_hash.encode())
    except ValueError:
        return False
