"""A compact set of 64-bit key fingerprints: duplicate detection in flat memory.

A Python ``set`` of a million keys costs ~100 MB; this costs 16 MB, at the
price of a 2**-64 chance per pair of calling two keys the same. The
fingerprint is Python's own string hash (SipHash, 64 bits, cached on the
string): stable within a process, which is all a batch's de-duplication needs.
"""

from __future__ import annotations

from array import array

_MASK64 = (1 << 64) - 1


class KeySet:
    def __init__(self) -> None:
        self._slots = array("Q", bytes(8 * 1024))
        self._mask = 1023
        self._used = 0

    def add(self, key: str) -> bool:
        """Add ``key``; return False if it was already there."""
        fp = (hash(key) & _MASK64) or 1
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
            self._grow()
        return True

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
