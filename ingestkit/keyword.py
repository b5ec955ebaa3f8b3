"""``-k EXPR`` (plugin ``keyword``): select processors by substring expression.

As pytest: ``and``, ``or``, ``not`` and parentheses over case-insensitive
substrings of a processor's name, its file name and its directories.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

from .outcomes import UsageError

if TYPE_CHECKING:
    from .collection import Processor
    from .config import Config
    from .session import Session

hookimpl = pluggy.HookimplMarker("ingestkit")

_TOKEN = re.compile(r"\s*(\(|\)|[^\s()]+)")
Matcher = Callable[[set[str]], bool]


def compile_expression(text: str) -> Matcher:
    """Parse ``text`` into a predicate over a set of lower-cased keywords."""
    tokens: list[str] = _TOKEN.findall(text)
    pos = 0

    def peek() -> str | None:
        return tokens[pos] if pos < len(tokens) else None

    def take() -> str:
        nonlocal pos
        if pos >= len(tokens):
            raise UsageError(f"-k {text!r}: unexpected end of expression")
        pos += 1
        return tokens[pos - 1]

    def expr() -> Matcher:
        left = term()
        while peek() == "or":
            take()
            right = term()
            left = (lambda a, b: lambda kw: a(kw) or b(kw))(left, right)
        return left

    def term() -> Matcher:
        left = factor()
        while peek() == "and":
            take()
            right = factor()
            left = (lambda a, b: lambda kw: a(kw) and b(kw))(left, right)
        return left

    def factor() -> Matcher:
        token = take()
        if token == "not":
            inner = factor()
            return lambda kw: not inner(kw)
        if token == "(":
            inner = expr()
            if take() != ")":
                raise UsageError(f"-k {text!r}: expected ')'")
            return inner
        if token in ("and", "or", ")"):
            raise UsageError(f"-k {text!r}: unexpected {token!r}")
        needle = token.lower()
        return lambda kw: any(needle in k for k in kw)

    if not tokens:
        return lambda kw: True
    matcher = expr()
    if pos != len(tokens):
        raise UsageError(f"-k {text!r}: unexpected {tokens[pos]!r}")
    return matcher


@hookimpl
def ingestkit_collection_modifyitems(
    session: Session, config: Config, processors: list[Processor]
) -> None:
    expression = config.option.keyword
    if not expression:
        return
    matcher = compile_expression(expression)
    processors[:] = [p for p in processors if matcher({k.lower() for k in p.keywords})]
