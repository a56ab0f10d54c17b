"""NATS subject rules: checking subjects and patterns, and matching one against the other.

A subject is tokens separated by ``.``: ``orders.created``. A pattern may
also hold wildcards as whole tokens: ``*`` matches exactly one token, ``>``
(only as the last token) matches one or more tokens. No token is empty,
and no character is whitespace.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable

__all__ = ["check_pattern", "check_subject", "matches", "pattern_matcher"]

MAX_SUBJECT_BYTES = 65535  # the wire format's 16-bit subject length
_WHITESPACE = re.compile(r"\s")


def _tokens(text: object, what: str) -> list[str]:
    if not isinstance(text, str):
        raise TypeError(f"a {what} is a str, not {type(text).__name__}")
    if not text:
        raise ValueError(f"empty {what}")
    if _WHITESPACE.search(text):
        raise ValueError(f"bad {what} {text!r}: whitespace is not allowed")
    if len(text.encode()) > MAX_SUBJECT_BYTES:
        raise ValueError(f"bad {what}: longer than {MAX_SUBJECT_BYTES} bytes")
    tokens = text.split(".")
    if "" in tokens:
        raise ValueError(f"bad {what} {text!r}: empty token (a leading, trailing or doubled '.')")
    return tokens


def check_subject(subject: str) -> str:
    """Return ``subject`` if it is a valid subject to publish on (no wildcards).

    Raises:
        ValueError: empty, whitespace, an empty token, or a ``*`` / ``>`` in it.
        TypeError: not a ``str``.
    """
    for token in _tokens(subject, "subject"):
        if "*" in token or ">" in token:
            raise ValueError(f"bad subject {subject!r}: wildcards ('*', '>') are for subscribing only")
    return subject


def check_pattern(pattern: str) -> str:
    """Return ``pattern`` if it is a valid subscription pattern.

    Raises:
        ValueError: as :func:`check_subject`, or a wildcard that is not a whole token, or ``>``
            anywhere but last.
        TypeError: not a ``str``.
    """
    tokens = _tokens(pattern, "pattern")
    for i, token in enumerate(tokens):
        if token in ("*", ">"):
            if token == ">" and i != len(tokens) - 1:
                raise ValueError(f"bad pattern {pattern!r}: '>' may only be the last token")
        elif "*" in token or ">" in token:
            raise ValueError(f"bad pattern {pattern!r}: a wildcard must be a whole token")
    return pattern


def _match_tokens(pattern: list[str], subject: list[str]) -> bool:
    for i, token in enumerate(pattern):
        if token == ">":
            return len(subject) > i
        if i >= len(subject) or (token != "*" and token != subject[i]):
            return False
    return len(pattern) == len(subject)


def matches(pattern: str, subject: str) -> bool:
    """Whether ``subject`` is one that ``pattern`` subscribes to, by NATS rules.

    Raises:
        ValueError: ``pattern`` or ``subject`` is not valid.

    Example::

        >>> matches("orders.>", "orders.eu.created"), matches("orders.*", "orders.eu.created")
        (True, False)
    """
    check_pattern(pattern)
    check_subject(subject)
    return _match_tokens(pattern.split("."), subject.split("."))


def pattern_matcher(patterns: Iterable[str]) -> tuple[tuple[str, ...], Callable[[str], bool]]:
    """Check ``patterns``; return them and a test ``f(subject) -> bool`` for an already checked subject.

    Literal patterns (no wildcard) are tested by a set lookup.

    Raises:
        ValueError: a pattern is not valid, or there is none.
    """
    checked = tuple(dict.fromkeys(check_pattern(p) for p in patterns))
    if not checked:
        raise ValueError("subscribe to at least one subject pattern")
    literal = frozenset(p for p in checked if "*" not in p and ">" not in p)
    wild = [p.split(".") for p in checked if p not in literal]

    def test(subject: str) -> bool:
        if subject in literal:
            return True
        if not wild:
            return False
        tokens = subject.split(".")
        return any(_match_tokens(p, tokens) for p in wild)

    return checked, test
