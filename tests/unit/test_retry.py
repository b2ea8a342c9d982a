"""The failure policy on its own: ``Retry.backoff`` (how long) and ``Retry.decide`` (whether).

Backoff is checked as properties over generated policies (never negative,
never above the cap, a ceiling that only grows, full jitter that really spreads
over the whole range); ``decide`` is checked against the table the design
gives: permanent and ``dead_on`` errors die at once, errors outside
``retry_on`` die at once, everything else retries until the attempts run out.
"""

from __future__ import annotations

import asyncio
import random
from fractions import Fraction

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jobqueue import PermanentError, Retry, RetryAfter
from jobqueue.tasks import Decision
from jobqueue.worker.executor import HandlerTimeoutError

# Bases and caps as people configure them: from instant retries to an hour.
seconds = st.floats(min_value=0.0, max_value=3600.0, allow_nan=False, allow_infinity=False)
positive_seconds = st.floats(min_value=0.001, max_value=3600.0)
# Attempts far past any sane max_attempts: 2 ** attempt must not overflow.
attempts = st.integers(min_value=1, max_value=100_000)


@st.composite
def policies(draw: st.DrawFn, jitter: bool) -> Retry:
    return Retry(base=draw(seconds), cap=draw(seconds), jitter=jitter)


@given(policy=policies(jitter=True), attempt=attempts, seed=st.integers(0, 2**32))
def test_backoff_with_jitter_stays_between_zero_and_cap(policy: Retry, attempt: int,
                                                        seed: int) -> None:
    delay = policy.backoff(attempt, random.Random(seed))
    assert 0.0 <= delay <= policy.cap


@given(policy=policies(jitter=False), attempt=attempts)
def test_backoff_without_jitter_is_the_capped_exponential(policy: Retry, attempt: int) -> None:
    delay = policy.backoff(attempt)
    assert 0.0 <= delay <= policy.cap
    # The documented formula, min(cap, base * 2 ** (n - 1)), computed exactly
    # (a Fraction times an int) so that the reference itself cannot overflow.
    exact = Fraction(policy.base) * 2 ** (attempt - 1)
    if exact >= Fraction(policy.cap):
        assert delay == policy.cap
    else:
        assert delay == pytest.approx(float(exact))


@given(policy=policies(jitter=False), first=attempts, step=st.integers(0, 1000))
def test_backoff_ceiling_never_decreases(policy: Retry, first: int, step: int) -> None:
    assert policy.backoff(first) <= policy.backoff(first + step)


@given(base=positive_seconds, cap=positive_seconds, attempt=st.integers(1, 40),
       seed=st.integers(0, 2**32))
@settings(max_examples=50)
def test_full_jitter_covers_the_whole_range(base: float, cap: float, attempt: int,
                                            seed: int) -> None:
    # Full jitter means uniform over [0, ceiling]: not clustered at the ceiling
    # (a thundering herd) and not stuck near zero (no backoff at all).
    ceiling = Retry(base=base, cap=cap, jitter=False).backoff(attempt)
    jittered = Retry(base=base, cap=cap, jitter=True)
    rng = random.Random(seed)
    draws = [jittered.backoff(attempt, rng) for _ in range(2000)]
    assert all(0.0 <= d <= ceiling for d in draws)
    assert min(draws) < 0.05 * ceiling
    assert max(draws) > 0.95 * ceiling
    # Each tenth of the range gets a fair share of 2000 uniform draws (~200 expected).
    tenths = [0] * 10
    for d in draws:
        tenths[min(9, int(10 * d / ceiling))] += 1
    assert min(tenths) > 100, tenths


def test_jitter_is_reproducible_with_a_seeded_rng() -> None:
    policy = Retry(base=1.0, cap=60.0)
    first = [policy.backoff(n, random.Random(7)) for n in range(1, 10)]
    again = [policy.backoff(n, random.Random(7)) for n in range(1, 10)]
    assert first == again
    assert len(set(first)) > 1


def test_attempt_zero_or_negative_is_treated_as_the_first() -> None:
    policy = Retry(base=2.0, cap=100.0, jitter=False)
    assert policy.backoff(0) == policy.backoff(1) == 2.0
    assert policy.backoff(-5) == 2.0


def test_negative_base_or_cap_is_refused() -> None:
    with pytest.raises(ValueError):
        Retry(base=-1.0)
    with pytest.raises(ValueError):
        Retry(cap=-1.0)


# -- decide -------------------------------------------------------------------------------


class FlakyNetwork(ConnectionError):
    pass


class BadOrder(PermanentError):
    pass


TABLE: list[tuple[str, Retry, BaseException, Decision, str]] = [
    # (case, policy, raised on attempt 1 of 5, decision, reason)
    ("any error retries by default", Retry(), RuntimeError("x"), Decision.RETRY, None),
    ("PermanentError dies at once", Retry(), PermanentError("x"), Decision.DEAD, "permanent"),
    ("a PermanentError subclass too", Retry(), BadOrder("x"), Decision.DEAD, "permanent"),
    ("PermanentError beats retry_on", Retry(retry_on=(PermanentError,)), PermanentError("x"),
     Decision.DEAD, "permanent"),
    ("dead_on dies at once", Retry(dead_on=(ValueError,)), ValueError("x"),
     Decision.DEAD, "permanent"),
    ("dead_on matches subclasses", Retry(dead_on=(ValueError,)), UnicodeError("x"),
     Decision.DEAD, "permanent"),
    ("dead_on wins over retry_on", Retry(retry_on=(ValueError,), dead_on=(ValueError,)),
     ValueError("x"), Decision.DEAD, "permanent"),
    ("dead_on leaves other errors alone", Retry(dead_on=(ValueError,)), KeyError("x"),
     Decision.RETRY, None),
    ("retry_on retries its types", Retry(retry_on=(ConnectionError,)), ConnectionError("x"),
     Decision.RETRY, None),
    ("retry_on retries subclasses", Retry(retry_on=(ConnectionError,)), FlakyNetwork("x"),
     Decision.RETRY, None),
    ("outside retry_on dies at once", Retry(retry_on=(ConnectionError,)), KeyError("x"),
     Decision.DEAD, "permanent"),
    ("RetryAfter retries even outside retry_on", Retry(retry_on=(ConnectionError,)),
     RetryAfter(3), Decision.RETRY, None),
    ("a timeout retries even outside retry_on", Retry(retry_on=(ConnectionError,)),
     HandlerTimeoutError("slow"), Decision.RETRY, None),
    ("asyncio's timeout retries", Retry(), asyncio.TimeoutError(), Decision.RETRY, None),
]


@pytest.mark.parametrize(("policy", "exc", "decision", "reason"),
                         [row[1:] for row in TABLE], ids=[row[0] for row in TABLE])
def test_decide_table(policy: Retry, exc: BaseException, decision: Decision,
                      reason: str) -> None:
    assert policy.decide(exc, attempt=1, max_attempts=5) == (decision, reason)


retryable = st.sampled_from([RuntimeError("x"), ConnectionError("x"), RetryAfter(1),
                             KeyError("x"), OSError("x")])
timeouts = st.sampled_from([HandlerTimeoutError("x"), asyncio.TimeoutError(), TimeoutError()])


@given(exc=retryable, max_attempts=st.integers(1, 50), data=st.data())
def test_retryable_errors_retry_until_attempts_run_out(exc: BaseException, max_attempts: int,
                                                       data: st.DataObject) -> None:
    attempt = data.draw(st.integers(1, max_attempts + 5))
    decision, reason = Retry().decide(exc, attempt, max_attempts)
    if attempt < max_attempts:
        assert (decision, reason) == (Decision.RETRY, None)
    else:
        assert (decision, reason) == (Decision.DEAD, "exhausted")


@given(exc=timeouts, max_attempts=st.integers(1, 50), data=st.data())
def test_timeouts_that_run_out_of_attempts_die_as_timeout(exc: BaseException, max_attempts: int,
                                                          data: st.DataObject) -> None:
    attempt = data.draw(st.integers(1, max_attempts + 5))
    decision, reason = Retry().decide(exc, attempt, max_attempts)
    expected = (Decision.RETRY, None) if attempt < max_attempts else (Decision.DEAD, "timeout")
    assert (decision, reason) == expected


@given(attempt=st.integers(1, 100), max_attempts=st.integers(1, 100))
def test_permanent_errors_die_on_any_attempt(attempt: int, max_attempts: int) -> None:
    policy = Retry(dead_on=(ValueError,))
    for exc in (PermanentError("x"), BadOrder("x"), ValueError("x")):
        assert policy.decide(exc, attempt, max_attempts) == (Decision.DEAD, "permanent")


@given(policy=policies(jitter=True), attempt=attempts, wait=seconds)
def test_retry_after_overrides_the_backoff(policy: Retry, attempt: int, wait: float) -> None:
    assert policy.delay_for(RetryAfter(wait), attempt) == wait


def test_retry_after_refuses_a_negative_delay() -> None:
    with pytest.raises(ValueError):
        RetryAfter(-1)


@given(attempt=attempts)
def test_other_errors_use_the_backoff(attempt: int) -> None:
    policy = Retry(base=0.5, cap=30.0, jitter=False)
    assert policy.delay_for(RuntimeError("x"), attempt) == policy.backoff(attempt)
