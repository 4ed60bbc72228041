"""Hand-written tokenizer and recursive-descent parser for the SOQL subset crmsandbox serves."""

from __future__ import annotations

import datetime as dt
import re
from dataclasses import dataclass

from .ast import (
    And,
    Comparison,
    Condition,
    DateConstant,
    FieldPath,
    Includes,
    InList,
    Like,
    Literal,
    Not,
    Or,
    OrderItem,
    Query,
)
from .errors import SoqlError, located_error

MAX_OFFSET = 2000

#: words that can never be a field or object name
RESERVED = frozenset(
    {
        "AND", "AS", "ASC", "BY", "CUBE", "DESC", "ELSE", "EXCLUDES", "FALSE", "FIRST", "FOR", "FROM", "GROUP",
        "HAVING", "IN", "INCLUDES", "LAST", "LIKE", "LIMIT", "NOT", "NULL", "NULLS", "OFFSET", "OR", "ORDER",
        "ROLLUP", "SELECT", "TRUE", "TYPEOF", "USING", "WHERE", "WITH",
    }
)  # fmt: skip

#: date constants without a parameter
FIXED_DATE_CONSTANTS = frozenset(
    {
        "TODAY", "YESTERDAY", "TOMORROW",
        "THIS_MONTH", "LAST_MONTH", "NEXT_MONTH",
        "THIS_YEAR", "LAST_YEAR", "NEXT_YEAR",
    }
)  # fmt: skip
#: date constants taking ``:n``
N_DATE_CONSTANTS = frozenset({"LAST_N_DAYS", "NEXT_N_DAYS", "N_DAYS_AGO"})

# token kinds
IDENT = "IDENT"
STRING = "STRING"
NUMBER = "NUMBER"
DATE = "DATE"
DATETIME = "DATETIME"
OP = "OP"
PUNCT = "PUNCT"
EOF = "EOF"

_IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*")
_DATETIME_RE = re.compile(
    r"(\d{4})-(\d{2})-(\d{2})T(\d{2}):(\d{2}):(\d{2})(?:\.(\d{1,9}))?(Z|[+-]\d{2}:?\d{2})(?![A-Za-z0-9_.:])"
)
_DATE_RE = re.compile(r"(\d{4})-(\d{2})-(\d{2})(?![A-Za-z0-9_.:-])")
_NUMBER_RE = re.compile(r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?![A-Za-z_.])")
_OPS = ("!=", "<>", "<=", ">=", "=", "<", ">")
_PUNCT = "(),:"

_SIMPLE_ESCAPES = {
    "n": "\n",
    "t": "\t",
    "r": "\r",
    "b": "\b",
    "f": "\f",
    '"': '"',
    "'": "'",
    "\\": "\\",
}


@dataclass(frozen=True)
class Token:
    kind: str
    text: str  # as written in the query
    pos: int
    value: object = None  # decoded value for literals
    like_pattern: str | None = None  # for strings: the LIKE pattern (``\`` escapes literal % _ \)

    @property
    def upper(self) -> str:
        return self.text.upper()


def _malformed(text: str, pos: int, detail: str) -> SoqlError:
    return located_error("MALFORMED_QUERY", detail, text, pos)


def _unexpected(text: str, tok: Token) -> SoqlError:
    shown = "<EOF>" if tok.kind == EOF else tok.text
    return _malformed(text, tok.pos, f"unexpected token: '{shown}'")


def _decode_string(text: str, start: int) -> tuple[Token, int]:
    """Decode the string literal whose opening quote is at ``start``; returns the token and the end offset."""
    i = start + 1
    value: list[str] = []
    pattern: list[str] = []
    n = len(text)
    while i < n:
        ch = text[i]
        if ch == "'":
            raw = text[start : i + 1]
            return Token(STRING, raw, start, "".join(value), "".join(pattern)), i + 1
        if ch == "\\":
            if i + 1 >= n:
                break
            esc = text[i + 1]
            if esc in ("%", "_"):
                value.append(esc)
                pattern.append("\\" + esc)
                i += 2
                continue
            if esc == "u":
                hexdigits = text[i + 2 : i + 6]
                if len(hexdigits) == 4 and all(c in "0123456789abcdefABCDEF" for c in hexdigits):
                    decoded = chr(int(hexdigits, 16))
                    value.append(decoded)
                    pattern.append("\\" + decoded if decoded in "%_\\" else decoded)
                    i += 6
                    continue
            if esc in _SIMPLE_ESCAPES:
                decoded = _SIMPLE_ESCAPES[esc]
                value.append(decoded)
                pattern.append("\\\\" if decoded == "\\" else decoded)
                i += 2
                continue
            end = text.find("'", i + 2)
            literal = text[start : end + 1] if end >= 0 else text[start:]
            raise _malformed(
                text,
                i,
                f"Invalid string literal {literal}. Illegal character sequence '\\{esc}' in string literal.",
            )
        value.append(ch)
        pattern.append(ch)
        i += 1
    raise _malformed(text, start, f"unexpected token: '{text[start:]}' (unterminated string literal)")


def _decode_datetime(m: re.Match[str], text: str, pos: int) -> dt.datetime:
    year, month, day, hour, minute, second = (int(m.group(i)) for i in range(1, 7))
    frac = m.group(7) or ""
    micro = int((frac + "000000")[:6]) if frac else 0
    micro -= micro % 1000  # Salesforce keeps milliseconds
    tz = m.group(8)
    if tz == "Z":
        offset = dt.timedelta(0)
    else:
        digits = tz[1:].replace(":", "")
        offset = dt.timedelta(hours=int(digits[:2]), minutes=int(digits[2:]))
        if tz[0] == "-":
            offset = -offset
    try:
        value = dt.datetime(year, month, day, hour, minute, second, micro, tzinfo=dt.timezone(offset))
    except ValueError as exc:
        raise _malformed(text, pos, f"unexpected token: '{m.group(0)}' (invalid date)") from exc
    return value.astimezone(dt.UTC)


def tokenize(text: str) -> list[Token]:
    tokens: list[Token] = []
    i = 0
    n = len(text)
    while i < n:
        ch = text[i]
        if ch.isspace():
            i += 1
            continue
        if ch == "'":
            tok, i = _decode_string(text, i)
            tokens.append(tok)
            continue
        if ch.isdigit() or (ch in "+-." and i + 1 < n and (text[i + 1].isdigit() or text[i + 1] == ".")):
            m = _DATETIME_RE.match(text, i)
            if m:
                tokens.append(Token(DATETIME, m.group(0), i, _decode_datetime(m, text, i)))
                i = m.end()
                continue
            m = _DATE_RE.match(text, i)
            if m:
                try:
                    value = dt.date(int(m.group(1)), int(m.group(2)), int(m.group(3)))
                except ValueError as exc:
                    raise _malformed(text, i, f"unexpected token: '{m.group(0)}'") from exc
                tokens.append(Token(DATE, m.group(0), i, value))
                i = m.end()
                continue
            m = _NUMBER_RE.match(text, i)
            if m:
                raw = m.group(0)
                num: int | float = float(raw) if "." in raw else int(raw)
                tokens.append(Token(NUMBER, raw, i, num))
                i = m.end()
                continue
            end = i + 1
            while end < n and not text[end].isspace() and text[end] not in "(),'=<>!":
                end += 1
            raise _malformed(text, i, f"unexpected token: '{text[i:end]}'")
        m = _IDENT_RE.match(text, i) if (ch.isalpha() or ch == "_") else None
        if m is not None:  # non-ASCII letters are not identifiers: they fall through to "unexpected token"
            end = m.end()
            if end < n and text[end] == ".":
                # a dangling dot, e.g. "Owner." -> report what follows
                raise _malformed(text, end, f"unexpected token: '{text[i : end + 1]}'")
            tokens.append(Token(IDENT, m.group(0), i))
            i = end
            continue
        matched = False
        for op in _OPS:
            if text.startswith(op, i):
                tokens.append(Token(OP, op, i))
                i += len(op)
                matched = True
                break
        if matched:
            continue
        if ch in _PUNCT:
            tokens.append(Token(PUNCT, ch, i))
            i += 1
            continue
        raise _malformed(text, i, f"unexpected token: '{ch}'")
    tokens.append(Token(EOF, "", n))
    return tokens


class _Parser:
    def __init__(self, text: str) -> None:
        self.text = text
        self.tokens = tokenize(text)
        self.i = 0

    # -- token helpers -------------------------------------------------------------------------------
    @property
    def tok(self) -> Token:
        return self.tokens[self.i]

    def peek(self, ahead: int = 1) -> Token:
        return self.tokens[min(self.i + ahead, len(self.tokens) - 1)]

    def advance(self) -> Token:
        tok = self.tokens[self.i]
        if tok.kind != EOF:
            self.i += 1
        return tok

    def is_kw(self, word: str, tok: Token | None = None) -> bool:
        tok = tok or self.tok
        return tok.kind == IDENT and tok.upper == word

    def accept_kw(self, word: str) -> bool:
        if self.is_kw(word):
            self.advance()
            return True
        return False

    def expect_kw(self, word: str) -> Token:
        if not self.is_kw(word):
            raise self.unexpected()
        return self.advance()

    def is_punct(self, ch: str) -> bool:
        return self.tok.kind == PUNCT and self.tok.text == ch

    def expect_punct(self, ch: str) -> Token:
        if not self.is_punct(ch):
            raise self.unexpected()
        return self.advance()

    def unexpected(self, tok: Token | None = None) -> SoqlError:
        return _unexpected(self.text, tok or self.tok)

    # -- grammar -----------------------------------------------------------------------------------------
    def parse(self) -> Query:
        self.expect_kw("SELECT")
        fields: list[FieldPath] = []
        is_count = False
        if self.is_kw("COUNT") and self.peek().kind == PUNCT and self.peek().text == "(":
            count_tok = self.advance()
            self.advance()
            if not self.is_punct(")"):
                raise _malformed(
                    self.text,
                    count_tok.pos,
                    "crmsandbox supports only COUNT() (no aggregate functions): "
                    f"unexpected token: '{self.tok.text or '<EOF>'}'",
                )
            self.advance()
            is_count = True
            if self.is_punct(","):
                raise self.unexpected()
        else:
            fields.append(self.field_path(select=True))
            while self.is_punct(","):
                self.advance()
                fields.append(self.field_path(select=True))
        self.expect_kw("FROM")
        obj_tok = self.tok
        order_by_follows = obj_tok.upper == "ORDER" and self.is_kw("BY", self.peek())
        if obj_tok.kind != IDENT or obj_tok.upper in ("WHERE", "LIMIT", "OFFSET") or order_by_follows:
            raise self.unexpected()
        if "." in obj_tok.text:
            raise _malformed(self.text, obj_tok.pos + obj_tok.text.index("."), "unexpected token: '.'")
        self.advance()
        where = None
        order_by: tuple[OrderItem, ...] = ()
        limit = offset = None
        if self.accept_kw("WHERE"):
            where = self.condition()
        if self.is_kw("ORDER"):
            self.advance()
            self.expect_kw("BY")
            order_by = self.order_list()
        if self.is_kw("LIMIT"):
            self.advance()
            limit = self.non_negative_int()
        if self.is_kw("OFFSET"):
            self.advance()
            off_tok = self.tok
            offset = self.non_negative_int()
            if offset > MAX_OFFSET:
                raise located_error(
                    "NUMBER_OUTSIDE_VALID_RANGE",
                    f"Maximum SOQL offset allowed is {MAX_OFFSET}",
                    self.text,
                    off_tok.pos,
                )
        if self.tok.kind != EOF:
            raise self.unexpected()
        return Query(
            text=self.text,
            object_name=obj_tok.text,
            object_pos=obj_tok.pos,
            fields=tuple(fields),
            is_count=is_count,
            where=where,
            order_by=order_by,
            limit=limit,
            offset=offset,
        )

    def field_path(self, *, select: bool = False) -> FieldPath:
        tok = self.tok
        if tok.kind != IDENT or any(part.upper() in RESERVED for part in tok.text.split(".")):
            raise self.unexpected()
        if self.peek().kind == PUNCT and self.peek().text == "(":
            # a function call: toLabel(), FIELDS(), aggregates, ...
            raise _malformed(
                self.text,
                tok.pos,
                f"unexpected token: '{tok.text}' (crmsandbox does not support SOQL functions here)",
            )
        self.advance()
        return FieldPath(tuple(tok.text.split(".")), tok.pos)

    def non_negative_int(self) -> int:
        tok = self.tok
        if tok.kind != NUMBER or not isinstance(tok.value, int) or tok.value < 0 or tok.text[0] in "+-":
            raise self.unexpected()
        self.advance()
        return tok.value

    def order_list(self) -> tuple[OrderItem, ...]:
        items = [self.order_item()]
        while self.is_punct(","):
            self.advance()
            items.append(self.order_item())
        return tuple(items)

    def order_item(self) -> OrderItem:
        field = self.field_path()
        descending = False
        if self.accept_kw("DESC"):
            descending = True
        else:
            self.accept_kw("ASC")
        nulls_first = not descending
        if self.accept_kw("NULLS"):
            if self.accept_kw("FIRST"):
                nulls_first = True
            elif self.accept_kw("LAST"):
                nulls_first = False
            else:
                raise self.unexpected()
        return OrderItem(field, descending, nulls_first)

    def condition(self) -> Condition:
        """A WHERE condition, with Salesforce's restrictions (which Salesforce reports as unexpected tokens):

        * ``a AND b AND c`` or ``a OR b OR c``: mixing AND and OR needs parentheses;
        * ``NOT x`` negates a whole condition: it may only open one (the WHERE clause or a parenthesised
          group) and cannot be followed by AND/OR — ``a AND NOT b`` must be written ``a AND (NOT b)``.
        """
        if self.accept_kw("NOT"):
            item = self.operand()
            if self.is_kw("AND") or self.is_kw("OR"):
                raise self.unexpected()
            return Not(item)
        first = self.operand()
        if self.is_kw("AND") or self.is_kw("OR"):
            word = self.tok.upper
            items = [first]
            while self.accept_kw(word):
                items.append(self.operand())
            if self.is_kw("AND") or self.is_kw("OR"):
                raise self.unexpected()
            return And(tuple(items)) if word == "AND" else Or(tuple(items))
        return first

    def operand(self) -> Condition:
        if self.is_punct("("):
            self.advance()
            inner = self.condition()
            self.expect_punct(")")
            return inner
        return self.predicate()

    def predicate(self) -> Condition:
        field = self.field_path()
        tok = self.tok
        if tok.kind == OP:
            self.advance()
            op = "!=" if tok.text == "<>" else tok.text
            return Comparison(field, op, self.value())
        if self.is_kw("LIKE"):
            self.advance()
            vtok = self.tok
            if vtok.kind != STRING:
                raise self.unexpected()
            self.advance()
            literal = Literal("string", vtok.value, vtok.pos, vtok.text)
            assert vtok.like_pattern is not None
            return Like(field, vtok.like_pattern, literal)
        if self.is_kw("INCLUDES") or self.is_kw("EXCLUDES"):
            excludes = self.advance().upper == "EXCLUDES"
            self.expect_punct("(")
            values = [self.string_literal()]
            while self.is_punct(","):
                self.advance()
                values.append(self.string_literal())
            self.expect_punct(")")
            return Includes(field, tuple(values), excludes)
        negated = False
        if self.is_kw("NOT") and self.is_kw("IN", self.peek()):
            self.advance()
            negated = True
        if self.is_kw("IN"):
            self.advance()
            self.expect_punct("(")
            if self.is_kw("SELECT"):
                raise _malformed(
                    self.text,
                    self.tok.pos,
                    "unexpected token: 'SELECT' (crmsandbox does not support semi-join subqueries)",
                )
            values = [self.value(in_list=True)]
            while self.is_punct(","):
                self.advance()
                values.append(self.value(in_list=True))
            self.expect_punct(")")
            return InList(field, tuple(values), negated)
        raise self.unexpected()

    def string_literal(self) -> Literal:
        tok = self.tok
        if tok.kind != STRING:
            raise self.unexpected()
        self.advance()
        return Literal("string", tok.value, tok.pos, tok.text)

    def value(self, *, in_list: bool = False) -> Literal:
        tok = self.tok
        if tok.kind in (STRING, NUMBER, DATE, DATETIME):
            self.advance()
            kind = {STRING: "string", NUMBER: "number", DATE: "date", DATETIME: "datetime"}[tok.kind]
            return Literal(kind, tok.value, tok.pos, tok.text)
        if tok.kind == IDENT:
            word = tok.upper
            if word == "NULL":
                self.advance()
                return Literal("null", None, tok.pos, tok.text)
            if word in ("TRUE", "FALSE"):
                self.advance()
                return Literal("boolean", word == "TRUE", tok.pos, tok.text)
            if word in FIXED_DATE_CONSTANTS and not in_list:
                self.advance()
                return Literal("date_constant", DateConstant(word), tok.pos, tok.text)
            if word in N_DATE_CONSTANTS and not in_list:
                self.advance()
                self.expect_punct(":")
                ntok = self.tok
                if ntok.kind != NUMBER or not isinstance(ntok.value, int) or ntok.text[0] in "+-":
                    raise self.unexpected()
                self.advance()
                return Literal(
                    "date_constant",
                    DateConstant(word, ntok.value),
                    tok.pos,
                    self.text[tok.pos : ntok.pos + len(ntok.text)],
                )
        raise self.unexpected()


def parse(text: str) -> Query:
    """Parse a SOQL query. Raises :class:`SoqlError` (``MALFORMED_QUERY`` / ``NUMBER_OUTSIDE_VALID_RANGE``)."""
    if not isinstance(text, str) or not text.strip():
        raise SoqlError("MALFORMED_QUERY", "unexpected token: '<EOF>'", detail="unexpected token: '<EOF>'")
    return _Parser(text).parse()
