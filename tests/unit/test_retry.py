"""The one retry policy object: every loop counts and waits through ``Attempts``."""

from __future__ import annotations

from dockercomms.core._internal.registry.retry import Attempts, RetryPolicy


def test_attempts_wait_the_policy_delay_until_the_count_or_the_budget_is_spent() -> None:
    waited: list[float] = []
    now = [0.0]

    def sleep(seconds: float) -> None:
        waited.append(seconds)
        now[0] += seconds

    policy = RetryPolicy(attempts=4, base_delay=1.0, max_delay=2.0, total_budget=100.0)
    attempts = Attempts(policy, "GET x", sleep=sleep, clock=lambda: now[0])
    tries = 0
    while True:
        tries = attempts.start()
        if not attempts.again("it failed"):
            break
    assert tries == 4 and len(waited) == 3
    assert 0.5 <= waited[0] <= 1.0 and all(1.0 <= w <= 2.0 for w in waited[1:])
    assert attempts.elapsed == sum(waited)

    now[0] = 0.0
    late = Attempts(policy, "GET y", sleep=sleep, clock=lambda: now[0])
    late.start()
    now[0] = 99.5
    assert not late.again("it failed")  # the wait would run past the budget


def test_retry_after_is_honoured_within_the_cap_and_cleanup_runs_only_before_a_wait() -> None:
    waited: list[float] = []
    cleaned: list[int] = []
    policy = RetryPolicy(attempts=2, base_delay=1.0, max_delay=5.0, total_budget=100.0)
    attempts = Attempts(policy, "GET z", sleep=waited.append)
    attempts.start()
    assert attempts.again(
        "got HTTP 503", retry_after=60.0, before_waiting=lambda: cleaned.append(1)
    )
    attempts.start()
    assert not attempts.again("got HTTP 503", before_waiting=lambda: cleaned.append(2))
    assert waited == [5.0] and cleaned == [1]
