"""endd.losses against independent float64 references, closed-form cases and bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.special
import scipy.stats
import torch

from endd.losses import (
    DEFAULT_MAX_PRECISION,
    dirichlet_kl,
    end_loss,
    endd_loss,
    endd_loss_from_mean_log_probs,
    get_loss,
    mean_teacher_log_probs,
    proxy_dirichlet_target,
    proxy_loss,
)

# ---------------------------------------------------------------------------------------------
# Independent float64 references: loops over the batch and the members, numpy / scipy.
# ---------------------------------------------------------------------------------------------


def _member_probs(teacher_row: np.ndarray, temperature: float, smoothing: float) -> np.ndarray:
    """[M, K] heated, smoothed member probabilities of one input."""
    probs = scipy.special.softmax(teacher_row / temperature, axis=-1)
    return (1 - smoothing) * probs + smoothing / probs.shape[-1]


def reference_endd(z, teacher, temperature, smoothing) -> float:
    """T² · mean_b mean_m [−ln Dir(π_m; α)], each member's NLL from scipy.stats.dirichlet."""
    losses = []
    for b in range(z.shape[0]):
        alpha = np.exp(z[b] / temperature)
        members = _member_probs(teacher[b], temperature, smoothing)
        losses.append(np.mean([-scipy.stats.dirichlet.logpdf(p, alpha) for p in members]))
    return temperature**2 * float(np.mean(losses))


def reference_end(z, teacher, temperature) -> float:
    losses = []
    for b in range(z.shape[0]):
        mean = _member_probs(teacher[b], temperature, 0.0).mean(axis=0)
        student = scipy.special.softmax(z[b] / temperature)
        losses.append(sum(p * math.log(p / q) for p, q in zip(mean, student, strict=True) if p > 0))
    return temperature**2 * float(np.mean(losses))


def reference_proxy_target(teacher_row, temperature, smoothing=0.0) -> np.ndarray:
    members = _member_probs(teacher_row, temperature, smoothing)  # [M, K]
    mean = members.mean(axis=0)
    mean_log = np.log(members).mean(axis=0)
    gap = sum(mean[c] * (math.log(mean[c]) - mean_log[c]) for c in range(len(mean)))
    precision = min((len(mean) - 1) / (2 * gap), DEFAULT_MAX_PRECISION)
    return mean * precision + 1


def reference_proxy(z, teacher, temperature, reverse) -> float:
    """KL between Dirichlets from torch.distributions (its own implementation), float64."""
    losses = []
    for b in range(z.shape[0]):
        student = torch.distributions.Dirichlet(torch.from_numpy(np.exp(z[b] / temperature) + 1))
        target = torch.distributions.Dirichlet(
            torch.from_numpy(reference_proxy_target(teacher[b], temperature))
        )
        pair = (student, target) if reverse else (target, student)
        losses.append(torch.distributions.kl_divergence(*pair).item())
    return temperature**2 * float(np.mean(losses))


def _random_logits(seed: int, batch: int, members: int, classes: int):
    generator = torch.Generator().manual_seed(seed)
    student = torch.randn(batch, classes, generator=generator, dtype=torch.float64) * 1.5
    scale = torch.rand(batch, 1, 1, generator=generator, dtype=torch.float64) * 4 + 0.5
    teacher = torch.randn(batch, members, classes, generator=generator, dtype=torch.float64) * scale
    return student, teacher


SHAPES = [(5, 1, 2), (3, 7, 13), (4, 10, 100)]  # (B, M, K)


@pytest.mark.parametrize(("batch", "members", "classes"), SHAPES)
@pytest.mark.parametrize(("temperature", "smoothing"), [(1.0, 0.0), (2.5, 1e-3), (10.0, 1e-4)])
def test_endd_matches_float64_reference(batch, members, classes, temperature, smoothing):
    student, teacher = _random_logits(classes + members, batch, members, classes)
    loss = endd_loss(student, teacher, temperature=temperature, smoothing=smoothing)
    expected = reference_endd(student.numpy(), teacher.numpy(), temperature, smoothing)
    assert loss.dtype == torch.float64 and loss.ndim == 0
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("batch", "members", "classes"), SHAPES)
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_end_matches_float64_reference(batch, members, classes, temperature):
    student, teacher = _random_logits(classes * members, batch, members, classes)
    loss = end_loss(student, teacher, temperature=temperature)
    expected = reference_end(student.numpy(), teacher.numpy(), temperature)
    assert loss.item() == pytest.approx(expected, rel=1e-6)


@pytest.mark.parametrize(("batch", "members", "classes"), [(3, 7, 13), (4, 10, 100)])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
@pytest.mark.parametrize("reverse", [True, False])
def test_proxy_matches_float64_reference(batch, members, classes, temperature, reverse):
    student, teacher = _random_logits(classes + 3, batch, members, classes)
    loss = proxy_loss(student, teacher, temperature=temperature, reverse=reverse)
    expected = reference_proxy(student.numpy(), teacher.numpy(), temperature, reverse)
    assert loss.item() == pytest.approx(expected, rel=1e-6)
    target = proxy_dirichlet_target(teacher, temperature=temperature)
    for b in range(batch):
        np.testing.assert_allclose(
            target[b].numpy(), reference_proxy_target(teacher[b].numpy(), temperature), rtol=1e-9
        )


def test_proxy_target_with_smoothing_matches_float64_reference():
    _, teacher = _random_logits(32, 5, 6, 20)
    target = proxy_dirichlet_target(teacher, temperature=2.0, smoothing=1e-3)
    for b in range(5):
        np.testing.assert_allclose(
            target[b].numpy(),
            reference_proxy_target(teacher[b].numpy(), 2.0, smoothing=1e-3),
            rtol=1e-9,
        )


@pytest.mark.parametrize(
    ("dtype", "smoothing", "members", "rtol"),
    [
        (torch.float64, 1e-200, 40, 1e-10),  # members multiplied in groups of 2
        (torch.float32, 1e-30, 7, 1e-5),  # groups of 2, 2, 2 and 1
        (torch.float32, 1e-42, 3, 1e-5),  # no product: one log per member
        (torch.float32, 1e-3, 10, 1e-5),  # one product over all members
        (torch.float32, 0.0, 10, 1e-5),  # no elementwise log
    ],
)
@pytest.mark.parametrize("classes", [5, 40])  # both CPU layouts (short and long class axis)
def test_teacher_statistic_matches_float64_reference(dtype, smoothing, members, rtol, classes):
    _, teacher = _random_logits(31, 6, members, classes)
    statistic = mean_teacher_log_probs(teacher.to(dtype), temperature=1.5, smoothing=smoothing)
    assert statistic.dtype == dtype and statistic.is_contiguous()
    expected = np.stack(
        [np.log(_member_probs(row, 1.5, smoothing)).mean(axis=0) for row in teacher.numpy()]
    )
    np.testing.assert_allclose(statistic.double().numpy(), expected, rtol=rtol, atol=rtol)


def test_float32_losses_are_close_to_float64():
    student, teacher = _random_logits(11, 64, 10, 100)
    for loss_function, kwargs in [
        (endd_loss, {"temperature": 2.0, "smoothing": 1e-3}),
        (end_loss, {"temperature": 2.0}),
        (proxy_loss, {}),
    ]:
        exact = loss_function(student, teacher, **kwargs)
        single = loss_function(student.float(), teacher.float(), **kwargs)
        assert single.dtype == torch.float32
        assert single.item() == pytest.approx(exact.item(), rel=1e-4, abs=1e-4), loss_function


# ---------------------------------------------------------------------------------------------
# Gradients
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_endd_hand_written_gradient_passes_gradcheck(temperature):
    student, teacher = _random_logits(5, 4, 3, 6)
    student.requires_grad_(True)
    teacher.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z, t: endd_loss(z, t, temperature=temperature, smoothing=1e-2), (student, teacher)
    )


def test_endd_gradient_equals_autograd_of_the_formula():
    student, teacher = _random_logits(6, 8, 5, 10)
    student.requires_grad_(True)
    temperature, smoothing = 3.0, 1e-3
    endd_loss(student, teacher, temperature=temperature, smoothing=smoothing).backward()
    hand_written = student.grad.clone()
    student.grad = None
    alphas = torch.exp(student / temperature)
    probs = (1 - smoothing) * torch.softmax(teacher / temperature, dim=-1) + smoothing / 10
    mean_log = probs.log().mean(dim=1)
    nll = (
        torch.lgamma(alphas).sum(-1)
        - torch.lgamma(alphas.sum(-1))
        - ((alphas - 1) * mean_log).sum(-1)
    )
    (temperature**2 * nll.mean()).backward()
    torch.testing.assert_close(hand_written, student.grad, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("reverse", [True, False])
@pytest.mark.parametrize("temperature", [1.0, 2.0])
def test_proxy_hand_written_gradient_passes_gradcheck(reverse, temperature):
    student, teacher = _random_logits(7, 4, 3, 6)
    student.requires_grad_(True)
    assert torch.autograd.gradcheck(
        lambda z: proxy_loss(z, teacher, temperature=temperature, reverse=reverse), (student,)
    )


@pytest.mark.parametrize("reverse", [True, False])
def test_proxy_gradient_equals_autograd_of_the_formula(reverse):
    student, teacher = _random_logits(8, 8, 5, 10)
    student.requires_grad_(True)
    temperature = 3.0
    proxy_loss(student, teacher, temperature=temperature, reverse=reverse).backward()
    hand_written = student.grad.clone()
    student.grad = None
    alphas = torch.exp(student / temperature) + 1
    target = proxy_dirichlet_target(teacher, temperature=temperature)
    kl = dirichlet_kl(alphas, target) if reverse else dirichlet_kl(target, alphas)
    (temperature**2 * kl.mean()).backward()
    torch.testing.assert_close(hand_written, student.grad, rtol=1e-6, atol=1e-12)


# ---------------------------------------------------------------------------------------------
# EnD² recovers a known Dirichlet
# ---------------------------------------------------------------------------------------------


def test_endd_recovers_known_dirichlet():
    true_alphas = torch.tensor([2.0, 5.0, 1.0, 8.0, 0.5], dtype=torch.float64)
    torch.manual_seed(0)
    members = torch.distributions.Dirichlet(true_alphas).sample((20_000,))  # [M, K]
    teacher = members.log().unsqueeze(0)  # member log-probabilities are valid logits
    statistic = mean_teacher_log_probs(teacher)  # computed once, reused for every step
    logits = torch.zeros(1, 5, dtype=torch.float64, requires_grad=True)
    optimiser = torch.optim.LBFGS([logits], lr=1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimiser.zero_grad()
        loss = endd_loss_from_mean_log_probs(logits, statistic)
        loss.backward()
        return loss

    optimiser.step(closure)
    fitted = logits.detach().exp()[0]
    relative_error = (fitted / true_alphas - 1).abs()
    assert relative_error.max().item() < 0.05, fitted
    # The same minimum through the full loss on the [B, M, K] teacher.
    assert endd_loss(logits.detach(), teacher).item() == pytest.approx(closure().item())


# ---------------------------------------------------------------------------------------------
# Numerical robustness
# ---------------------------------------------------------------------------------------------


def _extreme_teacher(batch: int, members: int, classes: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(0)
    teacher = torch.randn(batch, members, classes, generator=generator) * 1e4
    teacher[0] = 0.0  # all members uniform
    teacher[1, :, 0] = 1e30  # every member certain
    teacher[2, 0, :] = -float("inf")  # log-probabilities with zeros ...
    teacher[2, 0, 1] = 0.0  # ... but one class left
    teacher[3] = torch.where(torch.arange(classes) % 2 == 0, 3e38, -3e38)  # near float32 max
    return teacher


STUDENT_EXTREMES = [
    torch.full((6, 10), 30.0),
    torch.full((6, 10), -30.0),
    torch.linspace(-30, 30, 60).reshape(6, 10),
    torch.where(torch.arange(60).reshape(6, 10) % 10 == 0, 30.0, -30.0),
]


@pytest.mark.parametrize("student", STUDENT_EXTREMES)
@pytest.mark.parametrize("temperature", [1.0, 10.0])
def test_endd_finite_for_extreme_logits(student, temperature):
    teacher = _extreme_teacher(6, 5, 10)
    student = student.clone().requires_grad_(True)
    loss = endd_loss(student, teacher, temperature=temperature, smoothing=1e-3)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()


@pytest.mark.parametrize("student", STUDENT_EXTREMES)
def test_end_and_proxy_finite_for_extreme_logits(student):
    teacher = _extreme_teacher(6, 5, 10)
    for loss_function in (end_loss, proxy_loss):
        logits = student.clone().requires_grad_(True)
        loss = loss_function(logits, teacher)
        loss.backward()
        assert torch.isfinite(loss) and torch.isfinite(logits.grad).all(), loss_function


def test_endd_finite_far_outside_the_logit_range():
    student = torch.tensor([[1e3, -1e3, 0.0], [-1e4, -1e4, -1e4]], requires_grad=True)
    loss = endd_loss(student, torch.randn(2, 4, 3), smoothing=1e-4)
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(student.grad).all()
    assert student.grad[0, 0] > 0  # the runaway concentration is still pushed down


@pytest.mark.parametrize("loss_function", [endd_loss, end_loss, proxy_loss])
def test_losses_under_bf16_autocast(loss_function):
    torch.manual_seed(0)
    model = torch.nn.Linear(8, 10)
    inputs = torch.randn(32, 8) * 5
    teacher = torch.randn(32, 5, 10) * 20
    kwargs = {"smoothing": 1e-3} if loss_function is endd_loss else {}
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(inputs)
        assert logits.dtype == torch.bfloat16
        loss = loss_function(logits, teacher.bfloat16(), temperature=2.0, **kwargs)
    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    loss.backward()
    assert all(torch.isfinite(parameter.grad).all() for parameter in model.parameters())
    exact = loss_function(logits.float(), teacher.bfloat16().float(), temperature=2.0, **kwargs)
    assert loss.item() == pytest.approx(exact.item(), rel=1e-6)


@pytest.mark.parametrize("loss_function", [endd_loss, end_loss, proxy_loss])
@pytest.mark.parametrize("classes", [10, 100])
def test_losses_run_off_the_cpu_without_mixing_devices(loss_function, classes):
    """The non-CPU code path, on the meta device: like CUDA, it refuses any CPU operand other
    than a zero-dimensional one, so a device-mixing bug fails here without a GPU."""
    student = torch.randn(8, classes, device="meta", requires_grad=True)
    teacher = torch.randn(8, 5, classes, device="meta")
    kwargs = {"smoothing": 1e-3} if loss_function is endd_loss else {}
    loss = loss_function(student, teacher, temperature=2.0, **kwargs)
    loss.backward()
    assert loss.device.type == "meta" and loss.shape == ()
    assert student.grad.device.type == "meta" and student.grad.shape == student.shape
    with pytest.raises(RuntimeError, match="device"):  # the check this test relies on
        torch.ones(3) + torch.ones(3, device="meta")


# ---------------------------------------------------------------------------------------------
# Definitions: averages over members, temperature, teacher log-probabilities, closed forms
# ---------------------------------------------------------------------------------------------


def test_end_loss_is_kl_to_the_mean_by_hand():
    student, teacher = _random_logits(21, 6, 4, 5)
    mean = torch.softmax(teacher, dim=-1).mean(dim=1)
    by_hand = (mean * (mean.log() - torch.log_softmax(student, dim=-1))).sum(-1).mean()
    torch.testing.assert_close(end_loss(student, teacher), by_hand)
    # Zero exactly at the ensemble mean.
    assert end_loss(mean.log(), teacher).item() == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("loss_function", [endd_loss, end_loss, proxy_loss])
def test_losses_average_over_members(loss_function):
    """Repeating every member leaves the loss unchanged (a sum over members would double it)."""
    student, teacher = _random_logits(22, 5, 3, 7)
    doubled = torch.cat([teacher, teacher], dim=1)
    torch.testing.assert_close(loss_function(student, doubled), loss_function(student, teacher))


@pytest.mark.parametrize("loss_function", [endd_loss, end_loss, proxy_loss])
def test_losses_average_over_the_batch(loss_function):
    student, teacher = _random_logits(23, 6, 3, 7)
    per_row = torch.stack([loss_function(student[i : i + 1], teacher[i : i + 1]) for i in range(6)])
    torch.testing.assert_close(loss_function(student, teacher), per_row.mean())


@pytest.mark.parametrize("loss_function", [endd_loss, end_loss, proxy_loss])
@pytest.mark.parametrize("temperature", [0.5, 4.0])
def test_temperature_scales_logits_and_multiplies_by_t_squared(loss_function, temperature):
    student, teacher = _random_logits(24, 4, 3, 6)
    heated = loss_function(student, teacher, temperature=temperature)
    cold = loss_function(student / temperature, teacher / temperature)
    torch.testing.assert_close(heated, temperature**2 * cold)


@pytest.mark.parametrize("loss_function", [endd_loss, end_loss, proxy_loss])
@pytest.mark.parametrize("temperature", [1.0, 3.0])
def test_teacher_log_probabilities_are_valid_logits(loss_function, temperature):
    student, teacher = _random_logits(25, 4, 3, 6)
    log_probs = torch.log_softmax(teacher, dim=-1)
    torch.testing.assert_close(
        loss_function(student, log_probs, temperature=temperature),
        loss_function(student, teacher, temperature=temperature),
    )


def test_smoothing_mixes_teacher_probabilities_towards_uniform():
    teacher = torch.tensor([[[5.0, 0.0, -5.0]]], dtype=torch.float64)
    smoothing = 0.1
    expected = (0.9 * torch.softmax(teacher, dim=-1) + 0.1 / 3).log()[:, 0]
    torch.testing.assert_close(mean_teacher_log_probs(teacher, smoothing=smoothing), expected)


def test_endd_from_statistic_equals_full_loss():
    student, teacher = _random_logits(26, 5, 4, 8)
    statistic = mean_teacher_log_probs(teacher, temperature=2.0, smoothing=1e-3)
    assert statistic.shape == (5, 8)
    torch.testing.assert_close(
        endd_loss_from_mean_log_probs(student, statistic, temperature=2.0),
        endd_loss(student, teacher, temperature=2.0, smoothing=1e-3),
    )


@pytest.mark.parametrize("reverse", [True, False])
def test_proxy_loss_is_zero_with_zero_gradient_at_the_target(reverse):
    _, teacher = _random_logits(27, 4, 6, 5)
    target = proxy_dirichlet_target(teacher)
    at_target = torch.log(target - 1).requires_grad_(True)  # α = exp(z) + 1 = β
    loss = proxy_loss(at_target, teacher, reverse=reverse)
    loss.backward()
    assert loss.item() == pytest.approx(0.0, abs=1e-10)
    assert at_target.grad.abs().max().item() < 1e-8
    generator = torch.Generator().manual_seed(1)
    for _ in range(5):
        nudged = at_target.detach() + 0.1 * torch.randn(at_target.shape, generator=generator)
        assert proxy_loss(nudged, teacher, reverse=reverse).item() > 1e-6


def test_proxy_target_precision_matches_a_dirichlet_ensemble():
    """Members drawn from Dir(β*) give a proxy precision β̂ close to β*₀ (Stirling regime)."""
    true_alphas = torch.tensor([100.0, 60.0, 40.0], dtype=torch.float64)
    torch.manual_seed(0)
    members = torch.distributions.Dirichlet(true_alphas).sample((5000,))
    target = proxy_dirichlet_target(members.log().unsqueeze(0))[0]
    assert (target - 1).sum().item() == pytest.approx(200.0, rel=0.05)
    torch.testing.assert_close(
        (target - 1) / (target - 1).sum(), true_alphas / 200, atol=0.01, rtol=0
    )


def test_proxy_target_precision_is_capped_when_members_agree():
    teacher = torch.randn(3, 1, 6).expand(3, 4, 6)  # identical members: β̂ would be infinite
    target = proxy_dirichlet_target(teacher)
    torch.testing.assert_close(target.sum(-1) - 6, torch.full((3,), DEFAULT_MAX_PRECISION))
    capped = proxy_dirichlet_target(teacher, max_precision=50.0)
    torch.testing.assert_close(capped.sum(-1) - 6, torch.full((3,), 50.0))
    assert torch.isfinite(proxy_loss(torch.randn(3, 6), teacher))


def test_dirichlet_kl_matches_torch_distributions():
    generator = torch.Generator().manual_seed(2)
    alphas = torch.rand(5, 7, generator=generator, dtype=torch.float64) * 10 + 0.1
    betas = torch.rand(5, 7, generator=generator, dtype=torch.float64) * 10 + 0.1
    expected = torch.distributions.kl_divergence(
        torch.distributions.Dirichlet(alphas), torch.distributions.Dirichlet(betas)
    )
    torch.testing.assert_close(dirichlet_kl(alphas, betas), expected)


# ---------------------------------------------------------------------------------------------
# Factory and invalid input
# ---------------------------------------------------------------------------------------------


def test_get_loss():
    assert get_loss("end") is end_loss
    assert get_loss("endd") is endd_loss
    assert get_loss("proxy") is proxy_loss
    assert get_loss("EnDD") is endd_loss
    with pytest.raises(ValueError, match="unknown loss 'kd'"):
        get_loss("kd")


_STUDENT = torch.randn(4, 5)
_TEACHER = torch.randn(4, 3, 5)


@pytest.mark.parametrize("loss_function", [endd_loss, end_loss, proxy_loss])
@pytest.mark.parametrize(
    ("student", "teacher", "message"),
    [
        (torch.randn(5), _TEACHER, r"student_logits must have shape \[B, K\]"),
        (_STUDENT, torch.randn(4, 5), r"teacher_logits must have shape \[B, M, K\]"),
        (_STUDENT, torch.randn(3, 3, 5), "batch size mismatch"),
        (_STUDENT, torch.randn(4, 3, 6), "number of classes mismatch"),
        (_STUDENT.long(), _TEACHER, "floating-point"),
        (_STUDENT, torch.randn(4, 0, 5), "no members"),
        (torch.randn(4, 1), torch.randn(4, 3, 1), "at least 2 classes"),
        (torch.randn(0, 5), torch.randn(0, 3, 5), "empty batch"),
        (_STUDENT.numpy(), _TEACHER, "torch.Tensor"),
    ],
)
def test_losses_reject_bad_shapes(loss_function, student, teacher, message):
    with pytest.raises(ValueError, match=message):
        loss_function(student, teacher)


@pytest.mark.parametrize("loss_function", [endd_loss, end_loss, proxy_loss])
@pytest.mark.parametrize("temperature", [0.0, -1.0, float("nan"), float("inf"), "2"])
def test_losses_reject_bad_temperature(loss_function, temperature):
    with pytest.raises(ValueError, match="temperature"):
        loss_function(_STUDENT, _TEACHER, temperature=temperature)


@pytest.mark.parametrize("loss_function", [endd_loss, proxy_loss])
@pytest.mark.parametrize("smoothing", [-0.1, 1.0, 1.5, float("nan")])
def test_losses_reject_bad_smoothing(loss_function, smoothing):
    with pytest.raises(ValueError, match="smoothing"):
        loss_function(_STUDENT, _TEACHER, smoothing=smoothing)


def test_proxy_rejects_bad_max_precision():
    with pytest.raises(ValueError, match="max_precision"):
        proxy_loss(_STUDENT, _TEACHER, max_precision=0.0)


def test_statistic_helpers_reject_bad_shapes():
    with pytest.raises(ValueError, match="mean_log_probs must have the student's shape"):
        endd_loss_from_mean_log_probs(_STUDENT, torch.randn(4, 6))
    with pytest.raises(ValueError, match=r"\[B, M, K\]"):
        mean_teacher_log_probs(torch.randn(4, 5))
    with pytest.raises(ValueError, match=r"\[B, M, K\]"):
        proxy_dirichlet_target(torch.randn(4, 3, 1))


# ---------------------------------------------------------------------------------------------
# CPU fast paths (private helpers): same results as torch's kernels
# ---------------------------------------------------------------------------------------------


def test_fast_float32_digamma_matches_float64_digamma():
    from endd.losses._ops import digamma

    x = torch.cat([torch.logspace(-34, 26, 2000), torch.linspace(0.01, 20, 2000)])
    exact = torch.digamma(x.double())
    error = (digamma(x).double() - exact).abs() / exact.abs().clamp_min(1.0)
    assert error.max().item() < 2e-6
    torch.testing.assert_close(digamma(x.double()), exact)  # float64: torch's own digamma


@pytest.mark.parametrize("classes", [2, 10, 31, 32, 100])
def test_softmax_paths_match_torch(classes):
    from endd.losses._ops import log_softmax, softmax

    logits = (torch.randn(7, 3, classes, dtype=torch.float64) * 20).requires_grad_(True)
    logits.data[0, 0, 0] = -float("inf")  # a zero probability
    torch.testing.assert_close(softmax(logits), torch.softmax(logits, dim=-1))
    torch.testing.assert_close(log_softmax(logits), torch.log_softmax(logits, dim=-1))
    finite = logits.detach()[1:3, :2].clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda x: log_softmax(x).sin(), (finite,), fast_mode=True)
    assert torch.autograd.gradcheck(lambda x: softmax(x).sin(), (finite,), fast_mode=True)


def test_float32_endd_gradient_matches_float64():
    student, teacher = _random_logits(28, 64, 10, 100)
    gradients = []
    for dtype in (torch.float32, torch.float64):
        logits = student.detach().to(dtype).requires_grad_(True)
        endd_loss(logits, teacher.to(dtype), temperature=2.0, smoothing=1e-3).backward()
        gradients.append(logits.grad.double())
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("reverse", [True, False])
def test_float32_proxy_gradient_matches_float64(reverse):
    student, teacher = _random_logits(30, 64, 10, 100)
    gradients = []
    for dtype in (torch.float32, torch.float64):
        logits = student.detach().to(dtype).requires_grad_(True)
        proxy_loss(logits, teacher.to(dtype), temperature=2.0, reverse=reverse).backward()
        gradients.append(logits.grad.double())
    torch.testing.assert_close(gradients[0], gradients[1], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("loss_function", [endd_loss, end_loss, proxy_loss])
def test_cpu_chunking_of_the_teacher_gives_the_same_loss(loss_function, monkeypatch):
    import endd.losses._ops

    student, teacher = _random_logits(29, 37, 4, 6)
    whole = loss_function(student, teacher, temperature=2.0)
    monkeypatch.setattr(endd.losses._ops, "_CPU_CHUNK_ELEMENTS", 5 * 4 * 6)  # 5 rows per chunk
    torch.testing.assert_close(loss_function(student, teacher, temperature=2.0), whole)
