from __future__ import annotations

from pacs.services import retry_delay_seconds


def test_retry_delay_grows_exponentially_with_full_jitter_up_to_the_cap(settings):
    settings.PACS_RETRY_BASE_SECONDS = 30
    settings.PACS_RETRY_MAX_SECONDS = 3600

    first = [retry_delay_seconds(attempt=1) for _ in range(300)]
    fourth = [retry_delay_seconds(attempt=4) for _ in range(300)]
    late = [retry_delay_seconds(attempt=10_000) for _ in range(300)]

    assert all(0 <= d <= 30 for d in first)
    assert all(0 <= d <= 240 for d in fourth) and max(fourth) > 120
    assert all(0 <= d <= 3600 for d in late) and max(late) > 1800
    assert len(set(first)) > 250  # jittered, not a fixed schedule
    assert 0 <= retry_delay_seconds(attempt=0) <= 30
