"""The lifecycle table (docs/ARCHITECTURE.md#lifecycle): every pair of statuses is either allowed or
refused."""

import itertools

import pytest

from shared.domain.errors import IllegalTransition
from shared.domain.lifecycle import (
    ALLOWED,
    IN_FLIGHT,
    LIVE,
    TERMINAL,
    Status,
    can_tear_down,
    can_transition,
    check_transition,
)

S = Status
# Written out from the lifecycle diagram (docs/ARCHITECTURE.md#lifecycle), independently of ALLOWED.
DOCUMENTED_MOVES = {
    (S.PENDING, S.PROVISIONING),
    (S.PROVISIONING, S.INITIALIZING),
    (S.INITIALIZING, S.READY),
    (S.READY, S.TEARING_DOWN),
    (S.TEARING_DOWN, S.RETIRED),
    (S.PENDING, S.FAILED),
    (S.PROVISIONING, S.FAILED),
    (S.INITIALIZING, S.FAILED),
    (S.READY, S.LOST),
    # Teardown from every non-terminal state, cancelling in-flight provisioning.
    (S.PENDING, S.TEARING_DOWN),
    (S.PROVISIONING, S.TEARING_DOWN),
    (S.INITIALIZING, S.TEARING_DOWN),
    (S.FAILED, S.TEARING_DOWN),
    (S.LOST, S.TEARING_DOWN),
}
REFUSED_MOVES = sorted(set(itertools.product(Status, repeat=2)) - DOCUMENTED_MOVES)


def test_the_table_names_every_status():
    assert set(ALLOWED) == set(Status)


@pytest.mark.parametrize(("current", "target"), sorted(DOCUMENTED_MOVES))
def test_a_move_the_design_allows_passes(current, target):
    check_transition(current, target)
    assert can_transition(current, target)


@pytest.mark.parametrize(("current", "target"), REFUSED_MOVES)
def test_every_other_move_is_refused(current, target):
    assert not can_transition(current, target)
    with pytest.raises(IllegalTransition) as refused:
        check_transition(current, target)
    assert refused.value.details == {"current": current.value, "target": target.value}
    assert f"from {current.value} to {target.value}" in str(refused.value)


def test_the_refused_moves_include_skipping_steps_and_going_back():
    refused = set(REFUSED_MOVES)
    assert (S.PENDING, S.READY) in refused
    assert (S.READY, S.PENDING) in refused
    assert (S.FAILED, S.PROVISIONING) in refused
    assert (S.LOST, S.READY) in refused
    assert all((status, status) in refused for status in Status)


@pytest.mark.parametrize("status", sorted(set(Status) - TERMINAL - {S.TEARING_DOWN}))
def test_teardown_is_allowed_from_every_non_terminal_state(status):
    check_transition(status, S.TEARING_DOWN)
    assert can_tear_down(status)


def test_a_teardown_in_progress_is_not_started_again():
    assert not can_tear_down(S.TEARING_DOWN)


def test_retired_is_terminal():
    assert {S.RETIRED} == TERMINAL
    assert ALLOWED[S.RETIRED] == frozenset()
    assert not can_tear_down(S.RETIRED)


def test_every_status_is_reachable_from_pending_and_every_path_can_end_retired():
    reachable, frontier = {S.PENDING}, [S.PENDING]
    while frontier:
        for target in ALLOWED[frontier.pop()]:
            if target not in reachable:
                reachable.add(target)
                frontier.append(target)
    assert reachable == set(Status)
    assert all(
        can_transition(status, S.RETIRED) or can_tear_down(status)
        for status in set(Status) - TERMINAL
    )


def test_in_flight_and_live_statuses():
    assert {S.PENDING, S.PROVISIONING, S.INITIALIZING} == IN_FLIGHT
    assert IN_FLIGHT | {S.READY} == LIVE


def test_statuses_read_back_as_strings_are_checked_the_same_way():
    check_transition("ready", "lost")
    with pytest.raises(IllegalTransition):
        check_transition("retired", "tearing_down")
    with pytest.raises(ValueError):
        check_transition("running", "ready")
