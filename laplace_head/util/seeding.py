"""Stable hashing and seed derivation: every random draw of the workflow is seeded here.

A seed depends only on the config seed and the keys given (e.g. a sample id), never on Python's
salted ``hash()``, call order, process or platform.
"""

from __future__ import annotations

import hashlib


def stable_hash(text: str, n_bytes: int = 8) -> int:
    """Stable non-negative integer hash of ``text`` (BLAKE2b; never Python's salted ``hash``)."""
    digest = hashlib.blake2b(text.encode("utf-8"), digest_size=n_bytes).digest()
    return int.from_bytes(digest, "big")


def derive_seed(base_seed: int, *keys: str | int) -> int:
    """A 63-bit seed from a config seed and any number of keys (e.g. a sample id).

    The result depends only on the values, not on call order, process or platform, so a draw
    seeded with it is the same whichever shard or worker makes it.
    """
    text = "\x1f".join([str(base_seed), *map(str, keys)])
    return stable_hash(text, n_bytes=8) >> 1
