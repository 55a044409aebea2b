"""Low-rank adapters (LoRA) on any MMDiT, built with peft, the library diffusers uses.

A targeted linear layer y = W·x + b becomes y = W·x + b + (alpha / r)·B·A·dropout(x), A (r, in)
random and B (out, r) zero at the start, so the adapted model starts as the base. peft's
`inject_adapter_in_model` replaces each targeted `nn.Linear` in place by a peft `lora.Linear`
that holds it as `base_layer`: parameter names gain `.base_layer` (`...qkv.base_layer.weight`)
and the adapters are `...qkv.lora_A.default.weight` / `lora_B`. No PeftModel wrapper: the
MMDiT stays the module that trains, checkpoints and shards (its `.config` is osora's dataclass,
not a transformers config).

Inject before activation checkpointing, block compilation and FSDP2 sharding: they wrap the
modules that exist, and the names they see must be the adapted ones.

peft is imported at the top: only stages that configure LoRA import this module.
"""

from __future__ import annotations

import re

import torch
from peft import LoraConfig, get_peft_model_state_dict, inject_adapter_in_model
from peft import set_peft_model_state_dict as _set_peft_state
from peft.tuners.lora import LoraLayer
from torch import nn

from osora.models.mmdit import MMDiT

ADAPTER = "default"  # peft's adapter name; one adapter per model here
NAME_EXAMPLES = 6  # module or tensor names an error lists


def lora_config(rank: int, alpha: float, dropout: float, target_modules: str) -> LoraConfig:
    """peft's LoraConfig of params/dit.yaml `train.stages.<stage>.lora` (the fields of
    osora.config.dit.LoraParams); target_modules is a regex a module's full name must
    match whole (peft: re.fullmatch for a str)."""
    return LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout,
                      target_modules=target_modules)


def lora_targets(model: nn.Module, pattern: str, source: str = "target_modules") -> list[str]:
    """The names of the linear layers `pattern` matches whole, as peft picks them; an error
    naming `source` (the params key) when it matches none or matches a layer that is not
    linear."""
    try:
        regex = re.compile(pattern)
    except re.error as err:
        raise ValueError(f"{source}: '{pattern}' is not a regular expression: {err}") from None
    linear = [n for n, m in model.named_modules() if isinstance(m, nn.Linear)]
    others = [n for n, m in model.named_modules()
              if n and not isinstance(m, nn.Linear) and regex.fullmatch(n)]
    if others:
        raise ValueError(f"{source}: '{pattern}' matches modules that are not linear layers "
                         f"({', '.join(others[:NAME_EXAMPLES])}); LoRA adapts nn.Linear only: "
                         "end the pattern on a linear layer's name, e.g. (qkv|proj)")
    matched = [n for n in linear if regex.fullmatch(n)]
    if not matched:
        kinds = dict.fromkeys(re.sub(r"\.\d+\.", ".<i>.", n) for n in linear)  # block i
        raise ValueError(f"{source}: '{pattern}' matches no linear layer of the MMDiT (the "
                         f"whole name must match); its linear layers: {', '.join(kinds)}")
    return matched


def add_lora(model: MMDiT, config: LoraConfig, source: str = "target_modules") -> MMDiT:
    """Adapters on the layers `config` targets, in place; every other parameter frozen.
    Returns `model` (still an MMDiT). `source` names the params key in errors."""
    if isinstance(config.target_modules, str):
        lora_targets(model, config.target_modules, source)  # a clear error before peft's
    inject_adapter_in_model(config, model, adapter_name=ADAPTER)
    for name, param in model.named_parameters():
        param.requires_grad_(".lora_" in name)
    return model


def adapter_config(model: nn.Module) -> LoraConfig:
    """The LoraConfig the model's adapters were made with."""
    return model.peft_config[ADAPTER]


def adapter_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """The adapters' tensors alone, in peft's saved naming (`...qkv.lora_A.weight`: no adapter
    name), as diffusers and peft store them."""
    # no embedding layers to save: peft would otherwise look for a transformers config at
    # the base's path to see whether the vocabulary changed
    return get_peft_model_state_dict(model, adapter_name=ADAPTER, save_embedding_layers=False)


def set_adapter_state(model: nn.Module, state: dict[str, torch.Tensor]) -> None:
    """Load `adapter_state_dict`'s tensors into an adapted model; every adapter must be given
    and nothing else."""
    expected = set(adapter_state_dict(model))
    missing, unexpected = sorted(expected - set(state)), sorted(set(state) - expected)
    if missing or unexpected:
        raise ValueError(f"adapter tensors do not fit the model's adapters: missing "
                         f"{missing[:NAME_EXAMPLES]}, unexpected {unexpected[:NAME_EXAMPLES]}")
    _set_peft_state(model, state, adapter_name=ADAPTER)


def trainable_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    return [(n, p) for n, p in model.named_parameters() if p.requires_grad]


@torch.no_grad()
def merge_into_base(model: MMDiT) -> MMDiT:
    """The adapted model as a plain MMDiT, in place: each adapted layer's base weight becomes
    W + (alpha / r)·B·A (peft's own `merge`), and the layer is replaced by its base, so the
    parameter names are the base's again. Returns `model`, every parameter trainable as a
    plain MMDiT's."""
    adapted = [(n, m) for n, m in model.named_modules() if isinstance(m, LoraLayer)]
    for name, layer in adapted:
        layer.merge(adapter_names=[ADAPTER])
        parent, _, child = name.rpartition(".")
        setattr(model.get_submodule(parent), child, layer.get_base_layer())
    if hasattr(model, "peft_config"):
        del model.peft_config
    for param in model.parameters():
        param.requires_grad_(True)
    return model
