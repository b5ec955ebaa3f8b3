"""A compact set of 64-bit key fingerprints: duplicate detection in flat memory.

A Python ``set`` of a million keys costs ~100 MB; this costs 16 MB, at the
price of a 2**-64 chance per pair of calling two keys the same. The
fingerprint is Python's own string hash (SipHash, 64 bits, cached on the
string): stable within a process, which is all a batch's de-duplication needs.

Past :data:`MEMORY_KEYS` keys the set moves into a temporary table of the
batch's control connection (``spill``), so that memory stays bounded whatever
the size of the source: one round trip per chunk of keys from then on.
"""

from __future__ import annotations

from array import array
from typing import Any

from .queries import q

_MASK64 = (1 << 64) - 1
_SIGN = 1 << 63
#: Keys kept in memory (32 MB of slots at most) before the set spills to the database.
MEMORY_KEYS = 1 << 21


def fingerprint(key: str) -> int:
    return (hash(key) & _MASK64) or 1


class KeySet:
    """The keys seen so far in one processor's source."""

    def __init__(self, spill: Any = None) -> None:
        self._slots = array("Q", bytes(8 * 1024))
        self._mask = 1023
        self._used = 0
        self._spill = spill  # a connection (autocommit) to spill to, or None
        self._spilled = False

    def add(self, key: str) -> bool:
        """Add ``key``; return False if it was already there."""
        if self._spilled:
            return self._add_in_database([fingerprint(key)])[0]
        return self._add_fp(fingerprint(key))

    def add_all(self, keys: list[str]) -> list[bool]:
        """Add ``keys`` in order; for each, False if it came before (or earlier in ``keys``)."""
        firsts: list[bool] = []
        for n, key in enumerate(keys):
            if self._spilled:  # (it may spill half-way)
                return firsts + self._add_in_database([fingerprint(k) for k in keys[n:]])
            firsts.append(self._add_fp(fingerprint(key)))
        return firsts

    def _add_in_database(self, fps: list[int]) -> list[bool]:
        local: set[int] = set()
        first = []
        for fp in fps:  # duplicates within the chunk, before the table is asked
            first.append(fp not in local)
            local.add(fp)
        signed = [fp - (1 << 64) if fp >= _SIGN else fp for fp in local]
        with self._spill.cursor() as cur:
            cur.execute(q("add-seen-keys"), (signed,))
            new = {fp & _MASK64 for (fp,) in cur.fetchall()}
        return [is_first and fp in new for fp, is_first in zip(fps, first, strict=True)]

    def _add_fp(self, fp: int) -> bool:
        slots, mask = self._slots, self._mask
        i = fp & mask
        while True:
            found = slots[i]
            if found == 0:
                break
            if found == fp:
                return False
            i = (i + 1) & mask
        slots[i] = fp
        self._used += 1
        if self._used * 2 > len(slots):
            if self._spill is not None and self._used >= MEMORY_KEYS:
                self._move_to_database()
            else:
                self._grow()
        return True

    def _move_to_database(self) -> None:
        with self._spill.cursor() as cur:
            cur.execute(q("create-seen-keys"))
            signed = [fp - (1 << 64) if fp >= _SIGN else fp for fp in self._slots if fp]
            for start in range(0, len(signed), 100_000):
                cur.execute(q("add-seen-keys"), (signed[start : start + 100_000],))
        self._slots = array("Q")
        self._spilled = True

    def _grow(self) -> None:
        old = self._slots
        self._slots = array("Q", bytes(16 * len(old)))
        self._mask = len(self._slots) - 1
        self._used = 0
        for fp in old:
            if fp:
                i = fp & self._mask
                while self._slots[i]:
                    i = (i + 1) & self._mask
                self._slots[i] = fp
                self._used += 1

    def __len__(self) -> int:
        return self._used
