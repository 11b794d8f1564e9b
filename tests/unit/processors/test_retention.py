"""The WAL retention rule: the lowest of the oldest checkpoint, the change coverage less the
dedupe window and the live position; nothing without a checkpoint or a known coverage."""

from __future__ import annotations

from lukhas_context.processors.retention import prune_bound


def test_the_lowest_bound_wins_and_never_below_the_log_start() -> None:
    assert prune_bound(0, 500, 400, 100, 250).prune_to == 250  # the checkpoint
    assert prune_bound(0, 500, 300, 100, 250).prune_to == 200  # coverage less the window
    assert prune_bound(0, 150, 400, 100, 250).prune_to == 150  # the live position
    assert prune_bound(260, 500, 400, 100, 250).prune_to == 260  # pruned further already
    assert prune_bound(0, 500, 50, 100, 250).prune_to == 0  # the window reaches past 0


def test_nothing_goes_without_a_checkpoint_or_a_known_coverage() -> None:
    bound = prune_bound(7, 500, None, 100, None)
    assert bound.prune_to == 7
    assert bound.kept_because == ["no valid checkpoint", "the change topic's coverage is unknown"]
    assert prune_bound(7, 500, 0, 100, 300).kept_because == [
        "the change topic's coverage is unknown"
    ]
