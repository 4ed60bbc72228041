"""Fault and latency injection for API calls.

Configuration (``faults.json`` in the data dir, or ``POST /_sandbox/faults``)::

    {"latency_ms": 50, "jitter_ms": 20, "error_rates": {"UNABLE_TO_LOCK_ROW": 0.05, "DROP": 0.01},
     "daily_api_limit": 100, "seed": 42, "apply_to_oauth": false}

Error codes: ``UNABLE_TO_LOCK_ROW`` (400), ``SERVER_UNAVAILABLE`` (503), ``500`` (plain internal error),
``DROP`` (connection closed without an answer), ``TIMEOUT`` (hang ``timeout_seconds``, default 60, then drop),
``REQUEST_LIMIT_EXCEEDED`` (403), ``LOST_RESPONSE`` (the request *is processed*, then the connection is closed
without an answer: the client cannot know whether its write happened — what idempotent retries must survive). Draws come from ``random.Random(seed)``: the same sequence of requests gets the
same faults.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

KNOWN_CODES = ("UNABLE_TO_LOCK_ROW", "SERVER_UNAVAILABLE", "500", "DROP", "TIMEOUT", "REQUEST_LIMIT_EXCEEDED",
               "LOST_RESPONSE")


class FaultConfigError(ValueError):
    pass


@dataclass
class Faults:
    latency_ms: float = 0.0
    jitter_ms: float = 0.0
    error_rates: dict[str, float] = field(default_factory=dict)
    daily_api_limit: int | None = None
    seed: int | None = None
    apply_to_oauth: bool = False
    timeout_seconds: float = 60.0
    writes_only: bool = False  # faults hit only calls that write records (a lost answer to a write, say)

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)

    @classmethod
    def from_dict(cls, d: dict[str, Any] | None) -> Faults:
        d = dict(d or {})
        rates = d.get("error_rates") or {}
        if isinstance(rates, list):  # ["CODE=0.1", ...]
            rates = parse_rates(rates)
        if not isinstance(rates, dict):
            raise FaultConfigError("error_rates must be an object {CODE: fraction}")
        clean: dict[str, float] = {}
        for code, frac in rates.items():
            code = str(code).upper()
            if code not in KNOWN_CODES:
                raise FaultConfigError(f"unknown fault code {code!r} (known: {', '.join(KNOWN_CODES)})")
            try:
                frac = float(frac)
            except (TypeError, ValueError):
                raise FaultConfigError(f"bad fraction for {code}: {frac!r}") from None
            if not 0 <= frac <= 1:
                raise FaultConfigError(f"fraction for {code} must be within 0..1")
            clean[code] = frac
        if sum(clean.values()) > 1.0 + 1e-9:
            raise FaultConfigError("error rates add up to more than 1")
        try:
            limit = d.get("daily_api_limit")
            return cls(
                latency_ms=float(d.get("latency_ms") or 0), jitter_ms=float(d.get("jitter_ms") or 0),
                error_rates=clean, daily_api_limit=int(limit) if limit is not None else None,
                seed=int(d["seed"]) if d.get("seed") is not None else None,
                apply_to_oauth=bool(d.get("apply_to_oauth", False)),
                timeout_seconds=float(d.get("timeout_seconds", 60)),
                writes_only=bool(d.get("writes_only", False)),
            )
        except (TypeError, ValueError) as e:
            raise FaultConfigError(str(e)) from None

    def to_dict(self) -> dict[str, Any]:
        return {"latency_ms": self.latency_ms, "jitter_ms": self.jitter_ms, "error_rates": dict(self.error_rates),
                "daily_api_limit": self.daily_api_limit, "seed": self.seed, "apply_to_oauth": self.apply_to_oauth,
                "timeout_seconds": self.timeout_seconds, "writes_only": self.writes_only}

    @property
    def active(self) -> bool:
        return bool(self.latency_ms or self.jitter_ms or any(self.error_rates.values()))

    def draw(self) -> tuple[float, str | None]:
        """(delay in seconds, fault code or None) for one request."""
        delay = self.latency_ms
        if self.jitter_ms:
            delay += self.rng.uniform(0, self.jitter_ms)
        code = None
        if self.error_rates:
            r = self.rng.random()
            acc = 0.0
            for c, frac in self.error_rates.items():
                acc += frac
                if r < acc:
                    code = c
                    break
        return max(0.0, delay) / 1000.0, code


def parse_rates(items: list[str]) -> dict[str, float]:
    out: dict[str, float] = {}
    for item in items:
        if "=" not in item:
            raise FaultConfigError(f"expected CODE=FRACTION, got {item!r}")
        code, frac = item.split("=", 1)
        try:
            out[code.strip().upper()] = float(frac)
        except ValueError:
            raise FaultConfigError(f"bad fraction in {item!r}") from None
    return out
