"""How a worker paces its claims: the claim-ahead buffer's size, and costly scans from the head."""

from __future__ import annotations

from jobqueue.config import DEFAULT_PREFETCH_CAP, DEFAULT_PREFETCH_HORIZON
from jobqueue.worker.state import WorkerState


def paced(started_per_second: float, floor: int = 40, seconds: float = 1.0) -> int:
    state = WorkerState("w", 10, floor, adaptive=True)
    t0 = state._rate_at
    state.started = int(started_per_second * seconds)
    state.adapt_prefetch(t0 + seconds)
    return state.prefetch


def test_short_jobs_get_what_the_worker_runs_in_the_horizon() -> None:
    assert paced(20_000) == int(20_000 * DEFAULT_PREFETCH_HORIZON)  # 1,000 at 50 ms


def test_long_jobs_keep_the_floor_and_fast_ones_stop_at_the_cap() -> None:
    assert paced(10) == 40
    assert paced(1_000_000) == DEFAULT_PREFETCH_CAP
    # A floor above the cap (a very high concurrency) is kept.
    assert paced(1_000_000, floor=4_000) == 4_000


def test_a_given_prefetch_is_fixed_and_the_room_respects_it() -> None:
    state = WorkerState("w", 10, 5)  # --prefetch 5
    state.started = 100_000
    state.adapt_prefetch(state._rate_at + 1.0)
    assert state.prefetch == 5
    assert state.room == 15


def test_estimates_are_not_taken_over_too_short_a_time() -> None:
    state = WorkerState("w", 10, 40, adaptive=True)
    state.started = 5_000
    state.adapt_prefetch(state._rate_at + 0.01)
    assert state.prefetch == 40


def test_costly_scans_from_the_head_are_spaced_and_cheap_ones_are_not() -> None:
    import time

    from jobqueue.db import jobs
    from jobqueue.worker.claimer import HEAD_EVERY, Claimer, spaced

    assert spaced(0.001) < 0  # about a millisecond: as often as the claims ask
    before = time.monotonic()
    assert spaced(0.1) >= before + 0.9  # 100 ms: at most a tenth of the time from now on
    c = Claimer("jobqueue", "w", ("default",), 30.0, fair_every=0)
    c.positions["default"] = (0, jobs.HEAD[1], 10)
    c._head_allowed = time.monotonic() + 60
    kinds = []
    for _ in range(HEAD_EVERY * 2):
        request = c.request(10)
        assert request is not None
        kinds.append(request.after == [jobs.HEAD])
    assert not any(kinds)  # spaced out: none from the head
    c._head_allowed = -1e9
    assert any(c.request(10).after == [jobs.HEAD]  # type: ignore[union-attr]
               for _ in range(HEAD_EVERY))

