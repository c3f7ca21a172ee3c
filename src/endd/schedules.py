"""Temperature annealing for distillation: hold T₀, decay linearly to T_final, then stay there.

The EnD² loss is computed at a temperature T (α = exp(z/T), π_m = softmax(t_m/T), loss × T²).
Training starts hot, so that the sharp ensemble predictions and the flat initial Dirichlet share
support, and cools to T_final (normally 1) so that the student ends up fitting the real targets:

    T(s) = T₀                                       for s < hold
    T(s) = T₀ + (T_final − T₀) · (s − hold) / decay for hold ≤ s < hold + decay
    T(s) = T_final                                  for s ≥ hold + decay

`annealed_temperature` is that formula as a pure function of a progress counter (epochs or optimiser
steps, fractional values allowed). `TemperatureSchedule` expresses hold and decay as fractions of a
known training length and keeps everything that defines the curve in a plain, JSON-serialisable
`state_dict`, so that a run resumed from a checkpoint anneals exactly as the original would have.

References:
    Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020
    (arXiv 1905.00076), section 4 and the authors' code (hold T₀, linear decay to 1).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

__all__ = ["TemperatureSchedule", "annealed_temperature"]


def _check_positive_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be finite and > 0, got {value}")


def _check_non_negative_finite(name: str, value: float) -> None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{name} must be a real number, got {type(value).__name__}")
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be finite and >= 0, got {value}")


def annealed_temperature(
    progress: float,
    *,
    initial: float,
    final: float = 1.0,
    hold_steps: float,
    decay_steps: float,
) -> float:
    """Temperature after `progress` units of training (epochs or steps; fractions allowed).

    Args:
        progress: How far training has got, ≥ 0, in the same unit as `hold_steps`.
        initial: T₀ > 0, used while `progress < hold_steps`.
        final: T_final > 0, used once `progress >= hold_steps + decay_steps`.
        hold_steps: Length of the constant-T₀ phase, ≥ 0.
        decay_steps: Length of the linear decay, ≥ 0 (0 jumps from T₀ to T_final at `hold_steps`).

    Returns:
        The temperature as a Python float.

    Raises:
        ValueError: If a temperature is not finite and > 0, or a length or `progress` is negative
            or not finite.
    """
    _check_non_negative_finite("progress", progress)
    _check_positive_finite("initial", initial)
    _check_positive_finite("final", final)
    _check_non_negative_finite("hold_steps", hold_steps)
    _check_non_negative_finite("decay_steps", decay_steps)
    return _interpolate(progress, initial, final, hold_steps, hold_steps + decay_steps)


def _interpolate(progress: float, initial: float, final: float, start: float, end: float) -> float:
    """T₀ before `start`, T_final from `end` on, linear in between (arguments already checked)."""
    if progress < start:
        return float(initial)
    if progress >= end:
        return float(final)
    fraction_decayed = (progress - start) / (end - start)  # end > start here
    temperature = initial + (final - initial) * fraction_decayed
    # Rounding must not step outside [min(T₀, T_final), max(T₀, T_final)]: keeps it monotone.
    return float(min(max(temperature, min(initial, final)), max(initial, final)))


class TemperatureSchedule:
    """The annealing curve over a training run of known length, as fractions of that length.

    With the defaults, T₀ is held for the first 30 % of training, decays linearly to T_final by
    70 %, and stays at T_final for the rest. The schedule is a pure function of the step: calling
    it twice with the same step gives the same value, and nothing advances behind the caller's
    back. The caller passes the step counter it already checkpoints (e.g. Lightning's
    ``global_step``); `state_dict` holds the curve itself, including `total_steps`, so a resumed
    run whose trainer would estimate a different length still anneals as the original did.

    Args:
        initial: T₀ > 0.
        final: T_final > 0 (the paper anneals to 1).
        total_steps: Length of training in the unit the schedule will be called with (optimiser
            steps or epochs), an integer ≥ 1.
        hold_fraction: Fraction of training at T₀, in [0, 1].
        decay_end_fraction: Fraction of training at which T_final is reached, in
            [hold_fraction, 1].

    Raises:
        ValueError: If an argument is outside the ranges above.

    Example:
        >>> schedule = TemperatureSchedule(10.0, total_steps=100)
        >>> schedule(0), schedule(50), schedule(99)
        (10.0, 5.5, 1.0)

    References:
        Malinin, Mlodozeniec & Gales, "Ensemble Distribution Distillation", ICLR 2020.
    """

    _STATE_KEYS = ("initial", "final", "total_steps", "hold_fraction", "decay_end_fraction")

    def __init__(
        self,
        initial: float,
        final: float = 1.0,
        *,
        total_steps: int,
        hold_fraction: float = 0.3,
        decay_end_fraction: float = 0.7,
    ) -> None:
        _check_positive_finite("initial", initial)
        _check_positive_finite("final", final)
        if isinstance(total_steps, bool) or not isinstance(total_steps, int) or total_steps < 1:
            raise ValueError(f"total_steps must be an integer >= 1, got {total_steps!r}")
        _check_non_negative_finite("hold_fraction", hold_fraction)
        _check_non_negative_finite("decay_end_fraction", decay_end_fraction)
        if not hold_fraction <= decay_end_fraction <= 1:
            raise ValueError(
                "need 0 <= hold_fraction <= decay_end_fraction <= 1, got "
                f"hold_fraction={hold_fraction}, decay_end_fraction={decay_end_fraction}"
            )
        self.initial = float(initial)
        self.final = float(final)
        self.total_steps = int(total_steps)
        self.hold_fraction = float(hold_fraction)
        self.decay_end_fraction = float(decay_end_fraction)

    @property
    def hold_steps(self) -> float:
        """Length of the constant-T₀ phase, in steps (may be fractional)."""
        return self.hold_fraction * self.total_steps

    @property
    def decay_end_step(self) -> float:
        """Step from which the temperature is T_final (may be fractional)."""
        return self.decay_end_fraction * self.total_steps

    def __call__(self, step: float) -> float:
        """Temperature at `step` (≥ 0; steps past `total_steps` give T_final).

        Raises:
            ValueError: If `step` is negative or not finite.
        """
        _check_non_negative_finite("step", step)
        # Both ends are computed from their own fraction (not hold + decay) so that the step
        # at decay_end_fraction · total_steps gives exactly T_final despite float rounding.
        return _interpolate(step, self.initial, self.final, self.hold_steps, self.decay_end_step)

    def state_dict(self) -> dict[str, float | int]:
        """Everything that defines the curve, as plain Python numbers (JSON and
        ``torch.load(weights_only=True)`` safe)."""
        return {key: getattr(self, key) for key in self._STATE_KEYS}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore a curve saved by `state_dict`, replacing this schedule's settings.

        Raises:
            ValueError: If keys are missing or unexpected, or the values are invalid.
        """
        restored = type(self).from_state_dict(state)
        for key in self._STATE_KEYS:
            setattr(self, key, getattr(restored, key))

    @classmethod
    def from_state_dict(cls, state: Mapping[str, Any]) -> TemperatureSchedule:
        """Build a schedule from the output of `state_dict`."""
        missing = set(cls._STATE_KEYS) - set(state)
        unexpected = set(state) - set(cls._STATE_KEYS)
        if missing or unexpected:
            raise ValueError(
                f"temperature schedule state: missing keys {sorted(missing)}, "
                f"unexpected keys {sorted(unexpected)}"
            )
        return cls(
            state["initial"],
            state["final"],
            total_steps=state["total_steps"],
            hold_fraction=state["hold_fraction"],
            decay_end_fraction=state["decay_end_fraction"],
        )

    @classmethod
    def from_config(cls, config: Mapping[str, Any], *, total_steps: int) -> TemperatureSchedule:
        """Build a schedule from a config section and the run's length.

        Args:
            config: Mapping with key ``initial`` and optional ``final``, ``hold_fraction``,
                ``decay_end_fraction``; any other key is an error (catches typos).
            total_steps: Length of training, known only once the data and trainer exist.

        Raises:
            ValueError: On unknown keys, a missing ``initial``, or invalid values.
        """
        allowed = {"initial", "final", "hold_fraction", "decay_end_fraction"}
        unknown = set(config) - allowed
        if unknown:
            raise ValueError(
                f"unknown temperature schedule keys {sorted(unknown)}; allowed: {sorted(allowed)}"
            )
        if "initial" not in config:
            raise ValueError("temperature schedule config needs 'initial'")
        return cls(total_steps=total_steps, **dict(config))

    def __repr__(self) -> str:
        settings = ", ".join(f"{key}={getattr(self, key)!r}" for key in self._STATE_KEYS)
        return f"{type(self).__name__}({settings})"

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, TemperatureSchedule):
            return NotImplemented
        return self.state_dict() == other.state_dict()

    __hash__ = None  # mutable through load_state_dict
