"""The core suite's reader, hub and property tests, run as they are against a Redis Cluster.

They are imported, not copied: pytest collects them here again, with this directory's fixtures
(``conftest.py``: the cluster's ``settings``). Our writer and our readers meet through hash-tagged
keys (``sse:run:{<id>}``), and the hub follows runs through shard channels.
"""

from tests.test_lifecycle import (  # noqa: F401
    producer,
    test_a_killed_producer_gets_a_stored_lost_that_every_reader_sees,
    test_a_queued_run_never_claimed_gets_a_stored_timeout,
    test_a_quiet_writer_learns_of_the_ending_on_its_next_lease_refresh,
    test_a_reader_joining_brings_a_followed_runs_check_forward,
    test_a_reader_reconnecting_often_learns_lost_as_soon_as_a_holding_one,
    test_a_stalled_producer_that_comes_back_writes_nothing,
    test_status_carries_the_stored_times,
    test_the_guarded_ending_never_ends_a_run_with_a_live_lease,
    test_the_guarded_ending_waits_for_the_requeue_grace,
    test_the_hub_stores_a_queued_runs_timeout_when_its_deadline_comes,
)
from tests.test_property import test_every_reader_sees_every_seq_exactly_once  # noqa: F401
from tests.test_reader import (  # noqa: F401
    client,
    test_a_dead_producer_ends_the_read_with_a_stored_lost,
    test_a_key_of_another_type_is_not_a_run,
    test_a_new_reader_is_followed_at_once_not_after_the_block,
    test_a_queued_run_is_waited_for,
    test_a_slow_reader_is_detached_and_catches_up_exactly_once,
    test_cursor_at_the_end_yields_nothing_and_reports_the_ending,
    test_cursor_past_the_end_is_refused_at_once,
    test_disconnecting_a_reader_detaches_it,
    test_hub_reports_gaps_and_lost_producers_like_the_blocking_reader,
    test_hub_serves_many_readers_from_one_blocking_read,
    test_hundreds_of_readers_joining_at_once_wait_for_connections,
    test_reads_everything_after_the_cursor_and_stops_at_the_end,
    test_status_and_cancel_request,
    test_trimmed_history_is_an_explicit_gap,
    test_unknown_run_ends_at_once_with_not_found,
)
