"""N:M patterns written as text: ``"2:4"`` is ``(n, m) = (2, 4)``, at most 2 nonzeros in every 4."""
from __future__ import annotations

from ._groups import check_nm

__all__ = ["parse_pattern"]


def parse_pattern(pattern: str) -> tuple[int, int]:
    """``"2:4"`` → ``(2, 4)``; ValueError for anything that is not ``n:m`` with ``0 < n < m``.

    Examples:
        >>> parse_pattern("2:4"), parse_pattern("1:8")
        ((2, 4), (1, 8))
        >>> parse_pattern("4:2")
        Traceback (most recent call last):
            ...
        ValueError: an N:M pattern needs 0 < n < m (n kept of every m), got n=4, m=2
    """
    parts = pattern.split(":") if isinstance(pattern, str) else []
    if len(parts) != 2 or not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"pattern {pattern!r} is not of the form 'n:m' (e.g. '2:4': 2 kept of every 4)")
    n, m = int(parts[0]), int(parts[1])
    check_nm(n, m)
    return n, m
