"""Per-group schedules (docs/design.md §1, paper Eq. 8 and Table 1)."""

import numpy as np
import pytest

from grouplat import HIDDEN, PAPER_GENERATE, PAPER_TRAIN, Schedule


def test_table1_cut_notation_parses_to_the_design_intervals():
    schedule = Schedule.from_cuts(PAPER_TRAIN)
    # S1 [.9, 1], S2 [.8, .9], S3 [.6, .8], S4 [0, .6]: the finest group goes first in forward time
    np.testing.assert_allclose(schedule.intervals, [[0.9, 1], [0.8, 0.9], [0.6, 0.8], [0, 0.6]])
    assert schedule.cuts == PAPER_TRAIN
    assert Schedule.from_cuts(PAPER_GENERATE).cuts == PAPER_GENERATE


def test_eq8_levels_at_and_between_knots():
    schedule = Schedule.from_cuts("0.6,0.8,0.9")
    np.testing.assert_allclose(schedule.levels(0.0), [1, 1, 1, 1])
    np.testing.assert_allclose(schedule.levels(0.3), [1, 1, 1, 0.5])
    np.testing.assert_allclose(schedule.levels(0.6), [1, 1, 1, 0])
    np.testing.assert_allclose(schedule.levels(0.7), [1, 1, 0.5, 0])
    np.testing.assert_allclose(schedule.levels(0.85), [1, 0.5, 0, 0])
    np.testing.assert_allclose(schedule.levels(0.975), [0.25, 0, 0, 0])
    np.testing.assert_allclose(schedule.levels(1.0), [0, 0, 0, 0])
    assert schedule.levels(np.array([[0.1, 0.7]])).shape == (1, 2, 4)


def test_rates_are_the_derivative_of_the_levels():
    schedule = Schedule.from_cuts("0.6,0.8,0.9")
    t = np.random.default_rng(0).uniform(0.001, 0.999, 200)
    h = 1e-7
    numeric = (schedule.levels(t + h) - schedule.levels(t - h)) / (2 * h)
    inside_one_interval = np.abs(t[:, None] - np.array([0.6, 0.8, 0.9])).min(-1) > 1e-5
    np.testing.assert_allclose(
        schedule.rates(t)[inside_one_interval], numeric[inside_one_interval], atol=1e-5
    )
    np.testing.assert_allclose(schedule.rates(0.95), [-10, 0, 0, 0])


def test_scalar_baseline():
    for spec in ("-", "", []):
        schedule = Schedule.from_cuts(spec)
        assert schedule.k == 1 and schedule.cuts == "-"
        np.testing.assert_allclose(schedule.levels(0.25), [0.75])
        np.testing.assert_allclose(schedule.conditioning(0.25), [0.75])  # nothing to hide


def test_hidden_groups_name_the_active_group_at_a_boundary():
    schedule = Schedule.from_cuts("0.6,0.8,0.9")
    np.testing.assert_allclose(schedule.conditioning(0.7), [1, 1, 0.5, HIDDEN])
    # t = 0.8 is the end of S2's phase and the start of S3's (decode order: S2 then S3)
    np.testing.assert_allclose(schedule.conditioning(0.8, phase=1), [1, 1, HIDDEN, HIDDEN])
    np.testing.assert_allclose(schedule.conditioning(0.8, phase=2), [1, 1, 0, HIDDEN])
    np.testing.assert_allclose(schedule.conditioning(0.7, hide=False), [1, 1, 0.5, 0])
    batch = schedule.conditioning(np.array([0.3, 0.95]))
    np.testing.assert_allclose(batch, [[1, 1, 1, 0.5], [0.5, HIDDEN, HIDDEN, HIDDEN]])


def test_explicit_intervals_in_any_order():
    schedule = Schedule([[0, 0.5], [0.5, 1]])  # S1 first in forward time: decode makes S2 first
    assert schedule.cuts is None
    np.testing.assert_allclose(schedule.conditioning(0.25), [0.5, 1])
    np.testing.assert_allclose(schedule.conditioning(0.75), [HIDDEN, 0.5])
    assert Schedule.from_description(schedule.describe()) == schedule


@pytest.mark.parametrize(
    ("spec", "k", "message"),
    [
        ("0.6,0.8", 4, "needs 3 cut points"),
        ("0.8,0.6,0.9", None, "increase strictly"),
        ("0,0.5", None, r"inside \(0, 1\)"),
        ("0.5,1.2", None, r"inside \(0, 1\)"),
        ("a,b", None, "comma-separated numbers"),
    ],
)
def test_bad_cuts_are_refused_with_a_reason(spec, k, message):
    with pytest.raises(ValueError, match=message):
        Schedule.from_cuts(spec, k)


@pytest.mark.parametrize(
    ("intervals", "message"),
    [
        ([[0, 0.6], [0.5, 1]], "overlap"),
        ([[0, 0.4], [0.5, 1]], "gap"),
        ([[0.1, 0.5], [0.5, 1]], "cover"),
        ([[0, 0.5], [0.5, 1.5]], r"lie in \[0, 1\]"),
        ([[0, 0.5], [0.5, 0.5], [0.5, 1]], "start < end"),
        ([0, 1], "one \\(start, end\\) pair"),
    ],
)
def test_bad_intervals_are_refused_with_a_reason(intervals, message):
    with pytest.raises(ValueError, match=message):
        Schedule(intervals)


def test_parse_checks_the_number_of_groups():
    with pytest.raises(ValueError, match="needs 1 cut points"):
        Schedule.parse("0.5,0.7", 2)
    with pytest.raises(ValueError, match="schedule has 3 groups, the model has 2"):
        Schedule.parse(Schedule.from_cuts("0.5,0.7"), 2)


def test_text_form_round_trips_through_parse():
    for schedule in (Schedule.from_cuts("0.6,0.8,0.9"), Schedule([[0, 0.5], [0.5, 1]])):
        assert Schedule.parse(schedule.text, schedule.k) == schedule
    with pytest.raises(ValueError, match="JSON list"):
        Schedule.parse("[[0, 0.5], [0.5", 2)
