"""Retries for object-store calls.

Object stores fail transiently (throttling, 5xx, timeouts, dropped
connections) and permanently (bad credentials, missing permission, missing
bucket).  Each backend supplies a ``classify`` function that turns an SDK
exception into a :class:`Failure`; :class:`Retrier` retries only transient
ones, with exponential backoff and full jitter, and raises the StorageError
the backend chose.  Anything a backend does not recognise (a bug) propagates
unchanged, and so does ObjectExists: a name that is taken stays taken, so a
create-if-absent conflict is never retried.
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TypeVar

import structlog

from ebk.config import StorageConfig
from ebk.errors import ObjectExists, StorageError

T = TypeVar("T")

log = structlog.get_logger("ebk.storage")


@dataclass(frozen=True)
class Failure:
    """How a backend judged an exception: retry it, or raise ``error``."""

    transient: bool
    error: StorageError


Classifier = Callable[[Exception, str], Failure | None]


@dataclass
class Retrier:
    """Runs calls with retries of transient failures only.

    ``classify(exc, what)`` returns None for exceptions that are not the
    store's (they propagate as they are).  ``sleep`` and ``rng`` are injectable
    so tests run without waiting.
    """

    classify: Classifier
    max_retries: int = 5
    base_delay: float = 0.5
    max_delay: float = 20.0
    sleep: Callable[[float], None] = time.sleep
    rng: random.Random = field(default_factory=random.Random)

    @classmethod
    def from_config(cls, classify: Classifier, config: StorageConfig) -> Retrier:
        return cls(classify, config.max_retries, config.retry_base_delay, config.retry_max_delay)

    def delay(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(max, base * 2**attempt)]."""
        return self.rng.uniform(0, min(self.max_delay, self.base_delay * (2**attempt)))

    def call(self, what: str, fn: Callable[[], T]) -> T:
        attempt = 0
        while True:
            try:
                return fn()
            except ObjectExists:
                raise
            except Exception as exc:
                failure = self.classify(exc, what)
                if failure is None:
                    raise
                if not failure.transient:
                    raise failure.error from exc
                if attempt >= self.max_retries:
                    failure.error.message += f" (gave up after {attempt + 1} attempts)"
                    raise failure.error from exc
                wait = self.delay(attempt)
                attempt += 1
                log.warning(
                    "storage call failed, retrying",
                    what=what,
                    attempt=attempt,
                    wait_s=round(wait, 3),
                    error=failure.error.message,
                )
                self.sleep(wait)
