"""Selective activation checkpointing: the chosen blocks keep far less for the backward, and
the gradients are those of the plain model (float64)."""

import copy
import dataclasses

import pytest
import torch

from osora.models.mmdit import MMDIT_TINY, MMDiT
from osora.train.activation_checkpoint import apply_checkpointing

CFG = dataclasses.replace(MMDIT_TINY, depth_double=2, depth_single=2)


def model_and_inputs():
    torch.manual_seed(0)
    model = MMDiT(CFG).double()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.05)
    g = torch.Generator().manual_seed(1)
    x = torch.randn(2, 16, 2, 4, 4, generator=g, dtype=torch.float64)
    inputs = (x, torch.rand(2, generator=g, dtype=torch.float64),
              torch.randn(2, 5, CFG.text_dim, generator=g, dtype=torch.float64),
              torch.randn(2, CFG.vec_dim, generator=g, dtype=torch.float64))
    return model, inputs


def grads_and_saved_bytes(model, inputs):
    saved = []

    def pack(t):
        saved.append(t.numel() * t.element_size())
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        loss = model(*inputs).square().mean()
    loss.backward()
    return {n: p.grad.clone() for n, p in model.named_parameters()}, sum(saved)


@pytest.mark.parametrize("double,single,offload", [(-1, -1, False), (1, -1, False),
                                                   (1, 0, True), (-1, -1, True)])
def test_same_gradients_less_kept(double, single, offload):
    plain, inputs = model_and_inputs()
    wrapped = copy.deepcopy(plain)
    # copy_cpu: the offloaded tensors really are copies here, as they are on a GPU
    done = apply_checkpointing(wrapped, double, single, offload, copy_cpu=True)
    expected = {f"double_blocks.{i}" for i in range(2 if double == -1 else double)} | \
        {f"single_blocks.{i}" for i in range(2 if single == -1 else single)}
    assert {k for k, v in done.items() if v.startswith("checkpoint")} == expected
    assert all(v == "offload" for k, v in done.items() if k not in expected)
    assert list(wrapped.state_dict()) == list(plain.state_dict())  # names unchanged
    want, plain_bytes = grads_and_saved_bytes(plain, inputs)
    got, wrapped_bytes = grads_and_saved_bytes(wrapped, inputs)
    for name, g in want.items():
        torch.testing.assert_close(got[name], g, rtol=1e-12, atol=1e-14, msg=name)
    if double == -1 and single == -1 and not offload:
        assert wrapped_bytes < 0.25 * plain_bytes, (wrapped_bytes, plain_bytes)
    with pytest.raises(ValueError, match="already wrapped"):
        apply_checkpointing(wrapped, double, single, offload)


def test_async_offload_gives_back_equal_copies_and_keeps_small_tensors():
    from osora.train.offload import AsyncOffload

    mover = AsyncOffload(min_bytes=64, copy_cpu=True)
    big, small = torch.randn(4, 8), torch.randn(3)  # 128 and 12 bytes
    packed = mover.pack(big)
    assert packed is not big and mover.unpack(packed) is not big
    assert torch.equal(mover.unpack(packed), big)
    assert mover.pack(small) is small
    assert AsyncOffload(min_bytes=0).pack(big) is big  # CPU tensors stay without copy_cpu


def test_offloaded_saved_tensors_are_the_copies(monkeypatch):
    """Every tensor the offloaded blocks save goes through the hooks: break the copies and the
    gradients change."""
    from osora.train import offload

    plain, inputs = model_and_inputs()
    wrapped = copy.deepcopy(plain)
    apply_checkpointing(wrapped, 0, 0, offload=True, copy_cpu=True)
    want, _ = grads_and_saved_bytes(plain, inputs)
    monkeypatch.setattr(offload.AsyncOffload, "unpack",
                        staticmethod(lambda p: p.host * 1.01 if isinstance(p, offload._Offloaded)
                                     else p))
    got, _ = grads_and_saved_bytes(wrapped, inputs)
    assert any(not torch.allclose(got[n], want[n]) for n in want)
