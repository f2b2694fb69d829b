# -*- test-case-name: mailproto.test.test_extensions -*-
# Copyright (c) mailproto authors. See LICENSE for details.
"""
The service extensions a server lists in its EHLO reply (RFC 5321 section
4.1.1.1), as a value both sides use: the client reads one from the reply,
the server formats its own.  RFC 5321's grammar of a line::

    ehlo-line      = ehlo-keyword *( SP ehlo-param )
    ehlo-keyword   = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
    ehlo-param     = 1*(%d33-126)
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping

from mailproto import _grammar


class Extensions(Mapping):
    """
    What a server offers: a read-only mapping from upper-case keyword
    (C{b"SIZE"}) to the tuple of its parameters (C{(b"10240000",)}), in the
    order the server listed them.  Lookups ignore case.

    The old C{AUTH=MECH ...} form that some servers still send beside
    C{AUTH MECH ...} is read as C{AUTH}.  Lines that are not extensions are
    skipped.
    """

    __slots__ = ("_items",)

    def __init__(self, items: Mapping | Iterable[tuple[bytes, Iterable[bytes]]] = ()) -> None:
        """
        @param items: keywords and their parameters, as a mapping or as
            pairs.
        @raise ValueError: if a keyword is not an C{ehlo-keyword} or a
            parameter is not an C{ehlo-param}.
        """
        pairs = items.items() if isinstance(items, Mapping) else items
        merged: dict[bytes, tuple[bytes, ...]] = {}
        for keyword, params in pairs:
            if not _grammar.isKeyword(keyword):
                raise ValueError(f"not an EHLO keyword: {keyword!r}")
            params = tuple(params)
            for param in params:
                if not param or any(c < 33 or c > 126 for c in param):
                    raise ValueError(f"not an EHLO parameter: {param!r}")
            keyword = keyword.upper()
            existing = merged.get(keyword, ())
            merged[keyword] = existing + tuple(p for p in params if p not in existing)
        self._items = merged

    @classmethod
    def fromLines(cls, lines: Iterable[bytes]) -> Extensions:
        """
        Read extensions from the lines of an EHLO reply after the first
        (which greets).

        @param lines: the text of each line, reply code removed.
        @return: the extensions; malformed lines are skipped.
        """
        pairs = []
        for line in lines:
            words = line.split()
            if not words:
                continue
            keyword, params = words[0], words[1:]
            if keyword[:5].upper() == b"AUTH=":
                keyword, params = b"AUTH", [keyword[5:], *params] if keyword[5:] else params
            if not _grammar.isKeyword(keyword):
                continue
            params = [p for p in params if all(33 <= c <= 126 for c in p)]
            pairs.append((keyword, params))
        return cls(pairs)

    @classmethod
    def fromReply(cls, reply) -> Extensions:
        """
        Read extensions from a whole EHLO reply.

        @param reply: a L{mailproto._replies.Reply}.
        @return: the extensions.
        """
        return cls.fromLines(reply.lines[1:])

    def lines(self) -> list[bytes]:
        """
        @return: one EHLO reply line per extension, such as
            C{b"SIZE 10240000"}, in order.
        """
        return [b" ".join((keyword, *params)) for keyword, params in self._items.items()]

    def __getitem__(self, keyword: bytes) -> tuple[bytes, ...]:
        return self._items[keyword.upper()]

    def __contains__(self, keyword: object) -> bool:
        return isinstance(keyword, bytes) and keyword.upper() in self._items

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._items)

    def __len__(self) -> int:
        return len(self._items)

    def __repr__(self) -> str:
        return f"Extensions({self._items!r})"

    @property
    def size(self) -> int | None:
        """
        The server's message size limit (RFC 1870): C{None} if SIZE is not
        offered, 0 if it is offered with no fixed limit, else the limit in
        octets.
        """
        params = self._items.get(b"SIZE")
        if params is None:
            return None
        if params and params[0].isdigit():
            return int(params[0])
        return 0

    @property
    def authMechanisms(self) -> tuple[bytes, ...]:
        """
        The SASL mechanisms offered with AUTH (RFC 4954), upper-case, in the
        server's order.
        """
        return tuple(dict.fromkeys(p.upper() for p in self._items.get(b"AUTH", ())))
