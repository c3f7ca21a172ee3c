"""Teacher caching and evaluation run on the configured accelerator when it is there."""

from __future__ import annotations

import pytest
import torch

from endd.engine import inference_device


@pytest.mark.parametrize(
    ("accelerator", "cuda", "expected"),
    [
        ("cpu", True, "cpu"),
        ("gpu", True, "cuda"),
        ("cuda", True, "cuda"),
        ("auto", True, "cuda"),
        ("gpu", False, "cpu"),  # asked for, not there: the CPU, as Lightning would refuse later
        ("auto", False, "cpu"),
    ],
)
def test_inference_device(monkeypatch, accelerator, cuda, expected):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setattr(torch.backends.mps, "is_available", lambda: False)
    assert inference_device({"accelerator": accelerator}).type == expected
