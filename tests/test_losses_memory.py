"""Many classes: no loss materialises anything quadratic in K (nothing of size B·M·K·K or B·K·K).

Every tensor that any aten op produces during forward + backward — inside the losses' custom
autograd Functions and the autograd engine's own ops included — is seen by a
``TorchDispatchMode`` (``Recorder``), which keeps the largest. The bound asserted is B·M·K
elements, the size of the teacher logits themselves, at K = 1000 where a [B, K, K] tensor would be
K / M = 100 times larger. ``test_recorder_*`` show that the recorder catches a quadratic op in a
forward and in a hand-written backward, so the bound can fail.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from endd.losses import (
    end_loss,
    endd_loss,
    endd_loss_from_mean_log_probs,
    mean_teacher_log_probs,
    proxy_loss,
)

BATCH, MEMBERS, CLASSES = 8, 10, 1000


class Recorder(TorchDispatchMode):
    """Records the size of every tensor any op produces.

    ``largest`` counts every output, views and in-place results included (an expanded [B, K, K]
    view counts although it allocates nothing: stricter than memory); ``largest_new`` counts only
    outputs on storage that none of the op's inputs uses, i.e. fresh allocations.
    """

    def __init__(self) -> None:
        super().__init__()
        self.largest = 0
        self.largest_op = ""
        self.largest_shape: tuple[int, ...] = ()
        self.largest_new = 0
        self.largest_new_op = ""
        self.shapes: list[tuple[str, tuple[int, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        inputs = {
            leaf.untyped_storage().data_ptr()
            for leaf in pytree.tree_leaves((args, kwargs))
            if isinstance(leaf, torch.Tensor)
        }
        for tensor in pytree.tree_leaves(out):
            if isinstance(tensor, torch.Tensor):
                shape = tuple(tensor.shape)
                self.shapes.append((str(func), shape))
                if tensor.numel() > self.largest:
                    self.largest = tensor.numel()
                    self.largest_op = str(func)
                    self.largest_shape = shape
                fresh = tensor.untyped_storage().data_ptr() not in inputs
                if fresh and tensor.numel() > self.largest_new:
                    self.largest_new = tensor.numel()
                    self.largest_new_op = f"{func}{shape}"
        return out


def _record_forward_backward(loss_of, student: torch.Tensor) -> Recorder:
    recorder = Recorder()
    with recorder:
        loss = loss_of(student)
        loss.backward()
    assert torch.isfinite(loss)
    assert student.grad is not None and torch.isfinite(student.grad).all()
    assert recorder.shapes, "the recorder saw no op"
    return recorder


def _assert_at_most(recorder: Recorder, bound: int) -> None:
    assert recorder.largest <= bound, (
        f"{recorder.largest_op} produced a tensor of shape {recorder.largest_shape} "
        f"({recorder.largest} elements > {bound})"
    )


def _problem(batch: int, teacher_grad: bool = False):
    generator = torch.Generator().manual_seed(0)
    student = torch.randn(batch, CLASSES, generator=generator).requires_grad_(True)
    teacher = torch.randn(batch, MEMBERS, CLASSES, generator=generator) * 3.0
    return student, teacher.requires_grad_(teacher_grad)


def _losses(temperature: float, smoothing: float):
    """(name, loss of (student, teacher)) for every loss at K classes."""
    return [
        ("endd", lambda z, t: endd_loss(z, t, temperature=temperature, smoothing=smoothing)),
        (
            "endd_from_mean_log_probs",
            lambda z, t: endd_loss_from_mean_log_probs(
                z,
                mean_teacher_log_probs(t, temperature=temperature, smoothing=smoothing),
                temperature=temperature,
            ),
        ),
        (
            "proxy_reverse",
            lambda z, t: proxy_loss(z, t, temperature=temperature, smoothing=smoothing),
        ),
        (
            "proxy_forward",
            lambda z, t: proxy_loss(
                z, t, temperature=temperature, smoothing=smoothing, reverse=False
            ),
        ),
        ("end", lambda z, t: end_loss(z, t, temperature=temperature)),
    ]


LOSS_NAMES = [name for name, _ in _losses(1.0, 0.0)]


def _loss(name: str, temperature: float, smoothing: float):
    return dict(_losses(temperature, smoothing))[name]


@pytest.mark.parametrize("smoothing", [0.0, 1e-3])
@pytest.mark.parametrize("teacher_grad", [False, True], ids=["teacher_const", "teacher_grad"])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_nothing_quadratic_in_classes(name, teacher_grad, smoothing):
    """K = 1000: the largest tensor of forward + backward has at most B·M·K elements.

    ``teacher_grad`` covers both teacher paths: a constant CPU teacher goes through the fast
    in-place statistic of ``_ops``; one that needs a gradient through the differentiable formulas
    (the path every non-CPU device takes).
    """
    student, teacher = _problem(BATCH, teacher_grad)
    loss = _loss(name, 2.0, smoothing)
    recorder = _record_forward_backward(lambda z: loss(z, teacher), student)
    _assert_at_most(recorder, BATCH * MEMBERS * CLASSES)
    assert recorder.largest < BATCH * CLASSES * CLASSES  # what the bound rules out: 100× larger


def test_cached_statistic_stays_batch_by_classes():
    """From the cached statistic [B, K] nothing needs more than O(B·K): no member axis at all."""
    student, teacher = _problem(BATCH)
    statistic = mean_teacher_log_probs(teacher, temperature=2.0, smoothing=1e-3)
    recorder = _record_forward_backward(
        lambda z: endd_loss_from_mean_log_probs(z, statistic, temperature=2.0), student
    )
    # α and α₀ share one flat [B·(K + 1)] buffer.
    _assert_at_most(recorder, BATCH * (CLASSES + 1))


@pytest.mark.parametrize("smoothing", [0.0, 1e-3])
@pytest.mark.parametrize("name", LOSS_NAMES)
def test_chunked_teacher_path_on_cpu(name, smoothing):
    """B = 256, M = 10, K = 1000 (the benchmark's size): the teacher is reduced in batch chunks.

    The constant CPU teacher is processed a batch chunk at a time (``_ops``), which the recorder
    sees as teacher slices [b < B, M, K]; the bound B·M·K holds, and no op produces a tensor as
    large as the whole teacher (the point of chunking: no full-size [B, M, K] temporaries;
    views of the teacher, such as the proxy target's ``detach``, allocate nothing).
    """
    batch = 256
    student, teacher = _problem(batch)
    loss = _loss(name, 2.0, smoothing)
    recorder = _record_forward_backward(lambda z: loss(z, teacher), student)
    bound = batch * MEMBERS * CLASSES
    _assert_at_most(recorder, bound)
    chunks = {
        shape
        for _, shape in recorder.shapes
        if len(shape) == 3 and shape[1:] == (MEMBERS, CLASSES) and shape[0] < batch
    }
    assert chunks, "the teacher was not reduced in batch chunks"
    assert recorder.largest_new < bound, (
        f"{recorder.largest_new_op} allocated a teacher-sized tensor"
    )


# ---------------------------------------------------------------------------------------------
# The recorder can fail: it sees a quadratic op in a forward and in a backward.
# ---------------------------------------------------------------------------------------------


def test_recorder_catches_quadratic_forward():
    """An outer product [B, K, K] of the student's probabilities breaks the bound."""
    student, teacher = _problem(BATCH)

    def quadratic_loss(z: torch.Tensor) -> torch.Tensor:
        probs = torch.softmax(z, dim=-1)
        outer = probs.unsqueeze(2) * probs.unsqueeze(1)  # [B, K, K]
        return outer.sum() + endd_loss(z, teacher)

    recorder = _record_forward_backward(quadratic_loss, student)
    assert recorder.largest == recorder.largest_new == BATCH * CLASSES * CLASSES
    with pytest.raises(AssertionError, match=r"\(8, 1000, 1000\)"):
        _assert_at_most(recorder, BATCH * MEMBERS * CLASSES)


class _SoftmaxJacobianCrossEntropy(torch.autograd.Function):
    """Cross-entropy whose hand-written backward builds the full softmax Jacobian [B, K, K]."""

    @staticmethod
    def forward(ctx, logits, labels):
        log_probs = torch.log_softmax(logits, dim=-1)
        ctx.save_for_backward(log_probs.exp(), labels)
        return F.nll_loss(log_probs, labels)

    @staticmethod
    def backward(ctx, grad_output):
        probs, labels = ctx.saved_tensors
        jacobian = torch.diag_embed(probs) - probs.unsqueeze(2) * probs.unsqueeze(1)
        grad_log_probs = -F.one_hot(labels, probs.shape[-1]).to(probs) / probs / probs.shape[0]
        grad_logits = torch.bmm(jacobian, grad_log_probs.unsqueeze(2)).squeeze(2)
        return grad_logits * grad_output, None


def test_recorder_catches_quadratic_backward():
    """Ops run by the autograd engine (here a hand-written backward) are recorded too."""
    student, _ = _problem(BATCH)
    labels = torch.arange(BATCH)
    recorder = Recorder()
    with recorder:
        loss = _SoftmaxJacobianCrossEntropy.apply(student, labels)
    assert recorder.largest <= BATCH * CLASSES
    with recorder:
        loss.backward()
    expected = F.cross_entropy(student.detach().requires_grad_(True), labels)
    assert torch.allclose(loss, expected)
    assert recorder.largest == recorder.largest_new == BATCH * CLASSES * CLASSES
    with pytest.raises(AssertionError, match=r"diag_embed|mul|sub"):
        _assert_at_most(recorder, BATCH * MEMBERS * CLASSES)
