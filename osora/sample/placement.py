"""Where the sampler's components live while it runs: `--offload none|model|sequential`.

A run has three phases, each using one component: text encoding (T5 + CLIP, or MiniLM),
denoising (the MMDiT) and decoding (the AE). The modes:

- none: every component sits on the compute device for the whole run (fastest; the peak is the
  sum of all weights plus the largest activations).
- model: the components' weights live in CPU memory; each phase puts device copies of its
  component's weights in place and drops them when it ends, so the device holds one
  component at a time. The text encoder is loaded at its first forward within a text phase:
  prompts the embedding cache already holds move nothing (a run encodes all its prompts up
  front, so the encoder comes and leaves once).
- sequential: as model, and during denoising only the MMDiT's embedders and final layer are on
  the device; each double / single block gets device copies of its weights just before its
  forward (a pre-hook) and drops them just after (a post-hook). On CUDA the next block's copy
  is issued on a side stream while the current block computes, so at most two blocks' weights
  are on the device at once.

One mechanism does all of it: `HostWeights` keeps a module's parameters and buffers in host
memory (pinned when CUDA is available, so copies are asynchronous DMA) and swaps device copies
in and out by assigning `.data`. Nothing is copied back on release: sampling does not change
weights, so the host tensors are simply put back. On a CPU device the copies are real clones,
so the bookkeeping runs, and is tested, on machines without a GPU.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Literal

import torch
from torch import nn

from osora.models.text import TextEncoder

OffloadMode = Literal["none", "model", "sequential"]
OFFLOAD_MODES: tuple[OffloadMode, ...] = ("none", "model", "sequential")


class HostWeights:
    """A module's parameters and buffers kept in host memory, swapped for device copies on
    `load` and back on `release`. Copies on a side CUDA stream are waited for by `wait`."""

    def __init__(self, module: nn.Module, pin: bool):
        self.module = module
        self.slots: list[tuple[nn.Module, str, bool]] = []  # (owner, name, is_parameter)
        self.host: list[torch.Tensor] = []
        shared: set[int] = set()  # a tied parameter (T5's embeddings) is one Parameter: once
        for owner in module.modules():
            for name, p in owner.named_parameters(recurse=False):
                if id(p) not in shared:
                    shared.add(id(p))
                    self._keep(owner, name, True, p.data, pin)
            for name, b in owner.named_buffers(recurse=False):
                if b is not None:
                    self._keep(owner, name, False, b, pin)
        self.loaded = False
        self._ready: torch.cuda.Event | None = None  # the side stream's copy, when async

    def _keep(self, owner: nn.Module, name: str, is_param: bool, t: torch.Tensor, pin: bool):
        host = t.detach().cpu()
        if pin and not host.is_pinned():
            host = host.pin_memory()
        self.slots.append((owner, name, is_param))
        self.host.append(host)
        self._assign(owner, name, is_param, host)

    @staticmethod
    def _assign(owner: nn.Module, name: str, is_param: bool, t: torch.Tensor) -> None:
        if is_param:
            owner._parameters[name].data = t
        else:
            owner._buffers[name] = t

    def load(self, device: torch.device, stream: torch.cuda.Stream | None = None) -> None:
        """Put device copies in place (on `stream`, asynchronously, when given)."""
        if self.loaded:
            return
        if stream is not None:
            with torch.cuda.stream(stream):
                copies = [h.to(device, non_blocking=True) for h in self.host]
                self._ready = torch.cuda.Event()
                self._ready.record(stream)
        elif device.type == "cpu":
            copies = [h.clone() for h in self.host]  # a real copy: the bookkeeping is exercised
        else:
            copies = [h.to(device, non_blocking=True) for h in self.host]
        for (owner, name, is_param), copy in zip(self.slots, copies, strict=True):
            self._assign(owner, name, is_param, copy)
        self.loaded = True

    def wait(self) -> None:
        """Make the current stream wait for an asynchronous `load`; the copies then belong to
        it (freed only after its work that reads them)."""
        if self._ready is None:
            return
        current = torch.cuda.current_stream()
        current.wait_event(self._ready)
        for owner, name, is_param in self.slots:
            tensor = owner._parameters[name] if is_param else owner._buffers[name]
            tensor.record_stream(current)
        self._ready = None

    def release(self) -> None:
        """Put the host tensors back; the device copies are freed."""
        if not self.loaded:
            return
        self.wait()
        for (owner, name, is_param), host in zip(self.slots, self.host, strict=True):
            self._assign(owner, name, is_param, host)
        self.loaded = False

    def holds_host_tensors(self) -> bool:
        """True when every parameter and buffer is its host tensor (no device copy in place)."""
        return all((owner._parameters[name] if is_param else owner._buffers[name])
                   .data_ptr() == host.data_ptr()
                   for (owner, name, is_param), host in zip(self.slots, self.host, strict=True))


class BlockStreamer:
    """Sequential offload of a model's blocks: each block's weights come to the device right
    before its forward and leave right after; on CUDA the next block's copy overlaps the
    current block's compute (side stream). Blocks run in the order given, cyclically (one
    model call per sampling step).

    The host runs ahead of the GPU, and a freed copy's memory is reused only once the GPU has
    read it: unchecked, the hooks would queue copies of every block before the first one
    computed. So before prefetching block i + 1, block i's pre-hook waits until block i − 1
    has computed: at most blocks i and i + 1 hold device memory."""

    def __init__(self, blocks: list[nn.Module], device: torch.device, pin: bool):
        self.device = device
        self.weights = [HostWeights(b, pin) for b in blocks]
        self.stream = torch.cuda.Stream(device) if device.type == "cuda" else None
        self.active = False
        self._computed: list[torch.cuda.Event | None] = [None] * len(blocks)
        for i, block in enumerate(blocks):
            block.register_forward_pre_hook(self._before(i))
            block.register_forward_hook(self._after(i))

    def _before(self, i: int):
        def hook(module, args):
            if not self.active:
                return
            self.weights[i].load(self.device)  # no-op when prefetched
            self.weights[i].wait()
            if self.stream is not None:  # prefetch the next block while this one computes
                previous = self._computed[i - 1]  # [-1]: the last block, of the last call
                if previous is not None:
                    previous.synchronize()
                self.weights[(i + 1) % len(self.weights)].load(self.device, self.stream)
        return hook

    def _after(self, i: int):
        def hook(module, args, output):
            if not self.active:
                return
            if self.stream is not None:
                self._computed[i] = torch.cuda.Event()
                self._computed[i].record()
            self.weights[i].release()
        return hook

    def release_all(self) -> None:
        for w in self.weights:
            w.release()


def text_modules(encoder: TextEncoder) -> list[nn.Module]:
    """The torch modules of a text encoder (T5CLIPEncoder: t5, clip; MiniLMEncoder: model)."""
    return [m for m in vars(encoder).values() if isinstance(m, nn.Module)]


class ComponentPlacement:
    """Moves the text encoder, the MMDiT and the AE between CPU memory and `device` as `mode`
    says (module doc). Use one phase at a time:

        with placement.text_phase(): encode prompts
        with placement.denoise_phase(): run the sampler
        with placement.ae_phase(): decode (or encode condition media)
    """

    def __init__(self, mode: OffloadMode, device: str | torch.device, *,
                 text_encoder: TextEncoder, model: nn.Module, ae: nn.Module):
        if mode not in OFFLOAD_MODES:
            raise ValueError(f"offload mode {mode!r} is unknown; use one of {OFFLOAD_MODES} "
                             "(params/dit.yaml:sample.offload or --offload)")
        self.mode, self.device = mode, torch.device(device)
        self.text_encoder, self.model, self.ae = text_encoder, model, ae
        self._text_phase = False
        if mode == "none":  # the caller built them on the device, as before offloading
            return
        pin = torch.cuda.is_available()
        self.text = [HostWeights(m, pin) for m in text_modules(text_encoder)]
        for weights in self.text:  # loaded at its first forward inside a text phase
            weights.module.register_forward_pre_hook(self._load_text(weights))
        self.ae_weights = HostWeights(ae, pin)
        self.streamer = None
        if mode == "sequential":
            blocks = [*model.double_blocks, *model.single_blocks]
            self.streamer = BlockStreamer(blocks, self.device, pin)
            # the rest of the MMDiT: embedders and final layer (the blocks are the streamer's)
            self.model_weights = [HostWeights(m, pin) for name, m in model.named_children()
                                  if name not in ("double_blocks", "single_blocks")]
        else:
            self.model_weights = [HostWeights(model, pin)]

    def _load_text(self, weights: HostWeights):
        def hook(module, args):
            if self._text_phase:
                weights.load(self.device)
        return hook

    @contextmanager
    def text_phase(self) -> Iterator[None]:
        if self.mode == "none":
            yield
            return
        device_before = self.text_encoder.device
        self.text_encoder.device = self.device  # tokens go where the encoder computes
        self._text_phase = True
        try:
            yield
        finally:
            self._text_phase = False
            for weights in self.text:
                weights.release()
            self.text_encoder.device = device_before
            self._free_cache()

    @contextmanager
    def denoise_phase(self) -> Iterator[None]:
        if self.mode == "none":
            yield
            return
        with self._loaded(self.model_weights):
            if self.mode != "sequential":
                yield
                return
            self.streamer.active = True
            try:
                yield
            finally:
                self.streamer.active = False
                self.streamer.release_all()  # a prefetched first block, for the next call

    @contextmanager
    def ae_phase(self) -> Iterator[None]:
        if self.mode == "none":
            yield
            return
        with self._loaded([self.ae_weights]):
            yield

    @contextmanager
    def _loaded(self, weights: list[HostWeights]) -> Iterator[None]:
        for w in weights:
            w.load(self.device)
        try:
            yield
        finally:
            for w in weights:
                w.release()
            self._free_cache()

    def _free_cache(self) -> None:
        """Hand the freed device memory back to the driver, so the next phase's component finds
        it (and other processes see it free)."""
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
