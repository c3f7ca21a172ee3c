import io
import itertools
import json
import math

import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from endd.schedules import TemperatureSchedule, annealed_temperature


def test_function_holds_then_decays_linearly_then_stays():
    def temperature(progress):
        return annealed_temperature(progress, initial=10.0, final=2.0, hold_steps=4, decay_steps=8)

    assert temperature(0) == 10.0
    assert temperature(3.999) == 10.0
    assert temperature(4) == 10.0  # start of the decay: still T₀
    assert temperature(6) == pytest.approx(8.0)  # a quarter of the way from 10 to 2
    assert temperature(8) == pytest.approx(6.0)
    assert temperature(12) == 2.0
    assert temperature(1000) == 2.0


def test_function_without_decay_jumps_at_the_end_of_the_hold():
    assert annealed_temperature(2.9, initial=5.0, hold_steps=3, decay_steps=0) == 5.0
    assert annealed_temperature(3, initial=5.0, hold_steps=3, decay_steps=0) == 1.0


def test_function_without_hold_starts_decaying_at_once():
    assert annealed_temperature(0, initial=5.0, hold_steps=0, decay_steps=4) == 5.0
    assert annealed_temperature(1, initial=5.0, hold_steps=0, decay_steps=4) == pytest.approx(4.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": 0.0}, "initial"),
        ({"initial": -1.0}, "initial"),
        ({"initial": math.inf}, "initial"),
        ({"final": 0.0}, "final"),
        ({"final": math.nan}, "final"),
        ({"hold_steps": -1}, "hold_steps"),
        ({"decay_steps": -0.5}, "decay_steps"),
        ({"progress": -1}, "progress"),
        ({"progress": math.nan}, "progress"),
        ({"initial": "10"}, "initial"),
    ],
)
def test_function_rejects_bad_arguments(kwargs, message):
    arguments = {"progress": 0, "initial": 10.0, "final": 1.0, "hold_steps": 3, "decay_steps": 4}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        annealed_temperature(arguments.pop("progress"), **arguments)


def test_schedule_boundaries_with_default_fractions():
    schedule = TemperatureSchedule(10.0, total_steps=100)
    assert schedule(0) == 10.0
    assert schedule(30) == 10.0
    assert schedule(50) == pytest.approx(5.5)
    # exactly T_final at decay_end_fraction · total_steps despite 0.7 · 100 rounding
    assert schedule(70) == 1.0
    assert schedule(99) == 1.0
    assert schedule(10_000) == 1.0


def test_schedule_matches_the_function():
    schedule = TemperatureSchedule(
        20.0, 1.5, total_steps=1000, hold_fraction=0.5, decay_end_fraction=1.0
    )
    for step in range(0, 1100, 37):
        expected = annealed_temperature(
            step, initial=20.0, final=1.5, hold_steps=500, decay_steps=500
        )
        assert schedule(step) == pytest.approx(expected, rel=1e-12)


@given(
    initial=st.floats(0.01, 100),
    final=st.floats(0.01, 100),
    total_steps=st.integers(1, 10_000),
    hold=st.floats(0, 1),
    decay_span=st.floats(0, 1),
)
def test_schedule_is_monotone_between_its_end_values(initial, final, total_steps, hold, decay_span):
    decay_end = min(1.0, hold + decay_span)
    schedule = TemperatureSchedule(
        initial, final, total_steps=total_steps, hold_fraction=hold, decay_end_fraction=decay_end
    )
    steps = [total_steps * i / 50 for i in range(52)]
    values = [schedule(step) for step in steps]
    low, high = min(initial, final), max(initial, final)
    assert all(low <= value <= high for value in values)
    differences = [b - a for a, b in itertools.pairwise(values)]
    if initial >= final:
        assert all(difference <= 0 for difference in differences)
    else:
        assert all(difference >= 0 for difference in differences)
    assert values[-1] == final


def test_schedule_is_constant_when_initial_equals_final():
    schedule = TemperatureSchedule(3.0, 3.0, total_steps=10)
    assert {schedule(step) for step in range(15)} == {3.0}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"initial": 0.0}, "initial"),
        ({"final": -2.0}, "final"),
        ({"total_steps": 0}, "total_steps"),
        ({"total_steps": 10.5}, "total_steps"),
        ({"hold_fraction": -0.1}, "hold_fraction"),
        ({"hold_fraction": 0.8, "decay_end_fraction": 0.7}, "hold_fraction <= decay_end_fraction"),
        ({"decay_end_fraction": 1.2}, "decay_end_fraction <= 1"),
    ],
)
def test_schedule_rejects_bad_arguments(kwargs, message):
    arguments = {"initial": 10.0, "final": 1.0, "total_steps": 100}
    arguments.update(kwargs)
    with pytest.raises(ValueError, match=message):
        TemperatureSchedule(arguments.pop("initial"), arguments.pop("final"), **arguments)


def test_schedule_rejects_negative_step():
    with pytest.raises(ValueError, match="step"):
        TemperatureSchedule(10.0, total_steps=10)(-1)


def test_state_round_trips_through_a_weights_only_checkpoint():
    original = TemperatureSchedule(
        7.5, 1.25, total_steps=333, hold_fraction=0.25, decay_end_fraction=0.8
    )
    buffer = io.BytesIO()
    torch.save({"temperature_schedule": original.state_dict()}, buffer)
    buffer.seek(0)
    state = torch.load(buffer, weights_only=True)["temperature_schedule"]

    # a resumed run builds its schedule from other settings (e.g. a re-estimated length) first
    resumed = TemperatureSchedule(2.0, total_steps=50)
    resumed.load_state_dict(state)
    assert resumed == original
    assert [resumed(step) for step in range(400)] == [original(step) for step in range(400)]


def test_state_is_plain_json():
    schedule = TemperatureSchedule(4.0, total_steps=20)
    state = schedule.state_dict()
    assert json.loads(json.dumps(state)) == state
    assert TemperatureSchedule.from_state_dict(json.loads(json.dumps(state))) == schedule


def test_load_state_dict_rejects_incomplete_or_invalid_state():
    schedule = TemperatureSchedule(4.0, total_steps=20)
    state = schedule.state_dict()
    with pytest.raises(ValueError, match="missing keys"):
        schedule.load_state_dict({k: v for k, v in state.items() if k != "total_steps"})
    with pytest.raises(ValueError, match="unexpected keys"):
        schedule.load_state_dict({**state, "step": 3})
    with pytest.raises(ValueError, match="initial"):
        schedule.load_state_dict({**state, "initial": -1.0})
    assert schedule.state_dict() == state  # a failed load changes nothing


def test_from_config():
    schedule = TemperatureSchedule.from_config(
        {"initial": 10, "hold_fraction": 0.5, "decay_end_fraction": 1.0}, total_steps=40
    )
    assert schedule == TemperatureSchedule(
        10.0, 1.0, total_steps=40, hold_fraction=0.5, decay_end_fraction=1.0
    )
    with pytest.raises(ValueError, match="unknown temperature schedule keys"):
        TemperatureSchedule.from_config({"initial": 10, "hold_epochs": 3}, total_steps=40)
    with pytest.raises(ValueError, match="needs 'initial'"):
        TemperatureSchedule.from_config({"final": 1.0}, total_steps=40)
