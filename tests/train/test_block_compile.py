"""Per-block torch.compile: the compiled blocks (on top of activation checkpointing, as the
stages apply them) give the plain model's outputs and gradients, keep every parameter name, and
were really compiled (Dynamo captured graphs). The aot_eager backend traces forward and backward
through AOTAutograd like inductor does, without needing a C++ compiler on the CI machine."""

import torch
import torch._dynamo
from test_activation_checkpoint import grads_and_saved_bytes, model_and_inputs

from osora.train.activation_checkpoint import apply_checkpointing
from osora.train.block_compile import compile_blocks
from osora.train.dit_setup import MMDIT_SHARD_UNITS


def test_compiled_blocks_equal_the_plain_model():
    model, inputs = model_and_inputs()
    want, _ = grads_and_saved_bytes(model, inputs)
    names = [n for n, _ in model.named_parameters()]
    out = model(*inputs)

    compiled, _ = model_and_inputs()
    apply_checkpointing(compiled, double=1, single=-1)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    assert compile_blocks(compiled, MMDIT_SHARD_UNITS, backend="aot_eager") == 4
    torch.testing.assert_close(compiled(*inputs), out, rtol=1e-12, atol=1e-12)
    got, _ = grads_and_saved_bytes(compiled, inputs)
    assert [n for n, _ in compiled.named_parameters()] == names
    for name in names:
        torch.testing.assert_close(got[name], want[name], rtol=1e-10, atol=1e-12,
                                   msg=lambda m, name=name: f"grad {name}: {m}")
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] >= 2  # double and single


def test_a_model_without_blocks_is_an_error():
    import pytest

    with pytest.raises(ValueError, match="no DoubleStreamBlock, SingleStreamBlock in Linear"):
        compile_blocks(torch.nn.Linear(2, 2), MMDIT_SHARD_UNITS)
