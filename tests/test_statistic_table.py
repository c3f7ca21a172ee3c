"""Teacher statistic tables (endd.losses.statistic): exact at the stored temperatures."""

from __future__ import annotations

import pytest
import torch

from endd.losses import (
    endd_loss,
    endd_loss_from_mean_log_probs,
    mean_teacher_log_probs,
    statistic_at,
    statistic_rows,
    table_is_exact_for,
    teacher_statistic_table,
)
from endd.losses.endd import _mean_teacher_log_probs


@pytest.fixture
def one_thread():
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def ensemble_logits(seed: int, rows: int, members: int, classes: int) -> torch.Tensor:
    """Ensemble-like logits [N, M, K]: a per-input centre the members share (margins from ≈ 0,
    ambiguous, to ≈ 40, as confident as the spiral ensemble) plus a per-input member spread."""
    generator = torch.Generator().manual_seed(seed)
    scale = torch.rand(rows, 1, 1, generator=generator) * 15
    centre = torch.randn(rows, 1, classes, generator=generator) * scale
    spread = torch.rand(rows, 1, 1, generator=generator) * 3
    return centre + torch.randn(rows, members, classes, generator=generator) * spread


def student_logits(teacher: torch.Tensor, seed: int) -> torch.Tensor:
    """A trained-looking Prior Network: α = p̄ · α₀ with the ensemble mean p̄, α₀ in [3, 3000]."""
    generator = torch.Generator().manual_seed(seed)
    mean = torch.softmax(teacher, dim=-1).mean(dim=1)
    precision = 3 * 1000 ** torch.rand(len(teacher), 1, generator=generator)
    return torch.log(mean * precision)


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("smoothing", [0.0, 1e-4])
@pytest.mark.parametrize("classes", [3, 10, 100])
def test_table_rows_give_the_per_batch_loss_bit_for_bit(classes, smoothing, threads):
    before = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        teacher = ensemble_logits(0, 700, 10, classes)
        student = student_logits(teacher, 1)
        tables = teacher_statistic_table(teacher, [5.0, 2.5, 1.0], smoothing=smoothing)
        generator = torch.Generator().manual_seed(2)
        checked = 0
        for batch in (32, 64, 128, 96):
            if not table_is_exact_for(batch, 10, classes, "cpu"):
                continue
            for temperature in (5.0, 2.5, 1.0):
                rows = torch.randperm(700, generator=generator)[:batch]
                z_batch = student[rows].clone().requires_grad_(True)
                z_table = student[rows].clone().requires_grad_(True)
                per_batch = endd_loss(
                    z_batch, teacher[rows], temperature=temperature, smoothing=smoothing
                )
                statistic = statistic_at(tables, temperature, rows)
                from_table = endd_loss_from_mean_log_probs(
                    z_table, statistic, temperature=temperature
                )
                per_batch.backward()
                from_table.backward()
                assert torch.equal(per_batch, from_table)
                assert torch.equal(z_batch.grad, z_table.grad)
                checked += 1
        assert checked >= 3  # K = 100 with two threads: only batches of 32 rows qualify
    finally:
        torch.set_num_threads(before)


@pytest.mark.parametrize("smoothing", [0.0, 1e-3])
def test_table_equals_the_statistic_of_the_whole_set(smoothing, one_thread):
    teacher = ensemble_logits(3, 320, 7, 5)
    table = teacher_statistic_table(teacher, 2.0, smoothing=smoothing)[2.0]
    assert torch.equal(table, mean_teacher_log_probs(teacher, temperature=2.0, smoothing=smoothing))
    # and it keeps the layout of the per-batch computation (a [K, N] tensor transposed, K < 32)
    whole = _mean_teacher_log_probs(teacher, 2.0, smoothing, torch.float32)
    assert table.stride() == whole.stride() == (1, 320)
    rows = torch.arange(64, 128)
    assert statistic_rows(table, rows).stride() == (1, 64)


def test_chunking_does_not_change_the_table(one_thread):
    teacher = ensemble_logits(4, 1000, 10, 40)  # 1000 = 31 chunks of 32 rows + 8 rows, padded
    reference = teacher_statistic_table(teacher, 3.0, smoothing=1e-4)[3.0]
    for chunk_rows in (32, 100, 1, 10**6):
        table = teacher_statistic_table(teacher, 3.0, smoothing=1e-4, chunk_rows=chunk_rows)
        assert torch.equal(table[3.0], reference)
    assert reference.is_contiguous() and reference.shape == (1000, 40)


def test_tables_per_temperature_dtype_and_keys():
    teacher = ensemble_logits(5, 50, 4, 3)
    tables = teacher_statistic_table(teacher.double(), [2, 1.5, 2.0], smoothing=0.01)
    assert sorted(tables) == [1.5, 2.0]
    assert all(table.dtype == torch.float64 and table.shape == (50, 3) for table in tables.values())
    torch.testing.assert_close(
        tables[1.5], mean_teacher_log_probs(teacher.double(), temperature=1.5, smoothing=0.01)
    )


def test_exactness_needs_whole_vector_blocks_and_one_thread_share(one_thread):
    assert table_is_exact_for(128, 10, 3, "cpu")
    assert table_is_exact_for(32, 10, 1000, "cpu")
    for rows in (1, 56, 125, 129):  # a remainder past the last 32-element block
        assert not table_is_exact_for(rows, 10, 3, "cpu")
    assert not table_is_exact_for(128, 10, 3, "cuda")
    assert not table_is_exact_for(128, 10, 1000, "cpu")  # chunked by the per-batch code
    torch.set_num_threads(2)
    assert table_is_exact_for(128, 10, 3, "cpu")  # 3840 elements: below torch's grain
    assert not table_is_exact_for(128, 10, 100, "cpu")  # split over the threads


def test_statistic_at_returns_stored_tables_untouched():
    teacher = ensemble_logits(6, 40, 3, 4)
    tables = teacher_statistic_table(teacher, [1.0, 3.0])
    assert statistic_at(tables, 3.0) is tables[3.0]
    rows = torch.tensor([5, 0, 39])
    assert torch.equal(statistic_at(tables, 1, rows), tables[1.0][rows])


def test_statistic_at_interpolates_linearly_in_t_or_in_inverse_t():
    teacher = ensemble_logits(7, 40, 3, 4)
    tables = teacher_statistic_table(teacher, [1.0, 2.0, 4.0])
    midpoint = (tables[2.0] + tables[4.0]) / 2
    torch.testing.assert_close(statistic_at(tables, 3.0), midpoint)
    # 1/T = 1/3 lies 2/3 of the way from 1/2 to 1/4
    expected = tables[2.0] + (tables[4.0] - tables[2.0]) * (2 / 3)
    got = statistic_at(tables, 3.0, interpolation="inverse_temperature")
    torch.testing.assert_close(got, expected)
    rows = torch.tensor([3, 1])
    torch.testing.assert_close(statistic_at(tables, 1.5, rows), statistic_at(tables, 1.5)[rows])


@pytest.mark.parametrize(
    ("levels", "interpolation", "bound"),
    # Largest loss error measured here (the loss runs from -40 to 103 over the decay):
    # linear in T 7.05 (5 levels), 3.53 (9 levels); linear in 1/T 2.66, 0.98.
    [
        (5, "temperature", 8.5),
        (9, "temperature", 4.3),
        (5, "inverse_temperature", 3.2),
        (9, "inverse_temperature", 1.2),
    ],
)
def test_interpolation_error_of_the_loss_across_a_decay(levels, interpolation, bound):
    """Between stored levels the loss is off by a bounded amount that shrinks with more levels;
    at the levels it is exact. (On the spiral run: benchmarks/statistic_interpolation.py.)"""
    teacher = ensemble_logits(8, 2000, 10, 3)
    student = student_logits(teacher, 9)
    levels_t = torch.linspace(1, 5, levels).tolist()
    stored = teacher_statistic_table(teacher, levels_t, smoothing=1e-4)
    errors = []
    for temperature in torch.linspace(1, 5, 81).tolist():
        exact = endd_loss(student, teacher, temperature=temperature, smoothing=1e-4)
        statistic = statistic_at(stored, temperature, interpolation=interpolation)
        interpolated = endd_loss_from_mean_log_probs(student, statistic, temperature=temperature)
        errors.append(abs(interpolated - exact).item())
        if temperature in stored:
            assert errors[-1] == 0.0
    assert 0.0 < max(errors) < bound


def test_more_levels_interpolate_better():
    teacher = ensemble_logits(10, 500, 10, 3)
    temperatures = torch.linspace(1, 5, 41).tolist()
    exact = teacher_statistic_table(teacher, temperatures, smoothing=1e-4)
    worst = []
    for levels in (3, 5, 9, 17):
        stored = teacher_statistic_table(
            teacher, torch.linspace(1, 5, levels).tolist(), smoothing=1e-4
        )
        worst.append(
            max((statistic_at(stored, t) - exact[t]).abs().max().item() for t in temperatures)
        )
    assert worst == sorted(worst, reverse=True) and worst[-1] < worst[0] / 3


def test_statistic_table_rejects_bad_arguments():
    teacher = ensemble_logits(11, 10, 3, 4)
    for bad, message in [
        (teacher[0], "shape"),
        (teacher[:, :, :1], "shape"),
        (teacher.long(), "floating-point"),
    ]:
        with pytest.raises(ValueError, match=message):
            teacher_statistic_table(bad, 1.0)
    with pytest.raises(ValueError, match="at least one temperature"):
        teacher_statistic_table(teacher, [])
    with pytest.raises(ValueError, match="temperature"):
        teacher_statistic_table(teacher, [1.0, 0.0])
    with pytest.raises(ValueError, match="smoothing"):
        teacher_statistic_table(teacher, 1.0, smoothing=1.0)
    with pytest.raises(ValueError, match="chunk_rows"):
        teacher_statistic_table(teacher, 1.0, chunk_rows=0)


def test_statistic_at_rejects_bad_arguments():
    tables = teacher_statistic_table(ensemble_logits(12, 10, 3, 4), [1.0, 2.0])
    with pytest.raises(ValueError, match="outside the stored range"):
        statistic_at(tables, 2.5)
    with pytest.raises(ValueError, match="outside the stored range"):
        statistic_at(tables, 0.5)
    with pytest.raises(ValueError, match="empty"):
        statistic_at({}, 1.0)
    with pytest.raises(ValueError, match="interpolation"):
        statistic_at(tables, 1.5, interpolation="cubic")
    with pytest.raises(ValueError, match="temperature"):
        statistic_at(tables, -1.0)
