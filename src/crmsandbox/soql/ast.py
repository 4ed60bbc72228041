"""The parsed form of a SOQL query."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Union


@dataclass(frozen=True)
class FieldPath:
    """A field reference as written: ``("Email",)`` or ``("Owner", "Email")``."""

    parts: tuple[str, ...]
    pos: int = 0  # offset in the query text

    @property
    def text(self) -> str:
        return ".".join(self.parts)


@dataclass(frozen=True)
class Literal:
    """A value in a WHERE clause.

    kind / value:
      ``string``        str (escapes resolved)
      ``number``        int or float
      ``null``          None
      ``boolean``       bool
      ``date``          datetime.date
      ``datetime``      aware datetime.datetime in UTC, truncated to milliseconds
      ``date_constant`` DateConstant
    """

    kind: str
    value: object
    pos: int = 0
    text: str = ""


@dataclass(frozen=True)
class DateConstant:
    """``TODAY``, ``LAST_N_DAYS:7``... ``n`` is None for the fixed ones."""

    name: str  # upper case
    n: int | None = None


@dataclass(frozen=True)
class Comparison:
    field: FieldPath
    op: str  # one of = != < <= > >=   (<> is normalised to !=)
    value: Literal


@dataclass(frozen=True)
class InList:
    field: FieldPath
    values: tuple[Literal, ...]
    negated: bool = False  # NOT IN


@dataclass(frozen=True)
class Like:
    field: FieldPath
    #: the pattern with ``%`` / ``_`` as wildcards and ``\`` escaping a literal ``%``, ``_`` or ``\``
    pattern: str
    value: Literal


@dataclass(frozen=True)
class Includes:
    """``field INCLUDES ('a;b', 'c')`` (multi-select picklists): the field holds a and b, or c.
    ``EXCLUDES`` is ``negated=True``: none of the value sets is fully held."""

    field: FieldPath
    values: tuple[Literal, ...]
    negated: bool = False


@dataclass(frozen=True)
class And:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Or:
    items: tuple[Condition, ...]


@dataclass(frozen=True)
class Not:
    item: Condition


Condition = Union[Comparison, InList, Like, Includes, And, Or, Not]  # noqa: UP007


@dataclass(frozen=True)
class OrderItem:
    field: FieldPath
    descending: bool = False
    nulls_first: bool = True  # resolved: Salesforce default is NULLS FIRST for ASC, NULLS LAST for DESC


@dataclass(frozen=True)
class Query:
    text: str
    object_name: str
    object_pos: int = 0
    fields: tuple[FieldPath, ...] = ()
    is_count: bool = False
    where: Condition | None = None
    order_by: tuple[OrderItem, ...] = ()
    limit: int | None = None
    offset: int | None = None


__all__ = [
    "And",
    "Comparison",
    "Condition",
    "DateConstant",
    "FieldPath",
    "InList",
    "Includes",
    "Like",
    "Literal",
    "Not",
    "Or",
    "OrderItem",
    "Query",
]
