"""The TrainSpec "osora_mmdit": registered with torchtitan, its flavours are osora's params,
its model is osora's MMDiT (same parameters), its FLOPs osora's, and its parallelize function
maps torchtitan's settings onto osora's checkpointing or refuses what it does not do."""

import pytest

pytest.importorskip("torchtitan")

import torch  # noqa: E402
from torchtitan.components.lr_scheduler import build_lr_schedulers  # noqa: E402
from torchtitan.components.optimizer import build_optimizers  # noqa: E402
from torchtitan.config import JobConfig  # noqa: E402
from torchtitan.distributed import ParallelDims  # noqa: E402
from torchtitan.protocols.train_spec import get_train_spec  # noqa: E402

from osora.config import load_settings  # noqa: E402
from osora.models.mmdit import MMDIT_11B, MMDiT, train_step_flops  # noqa: E402
from osora.titan.job_config import Osora  # noqa: E402
from osora.titan.model import OsoraMMDiT  # noqa: E402
from osora.titan.parallelize import parallelize_osora_mmdit  # noqa: E402
from osora.titan.spec import register  # noqa: E402
from osora.titan.train import CUSTOM_CONFIG_MODULE, with_osora_config  # noqa: E402


def job(**osora) -> JobConfig:
    """torchtitan's JobConfig with an [osora] section, as the custom config module merges."""
    config = JobConfig()
    config.osora = Osora(**osora)
    config.model.name = "osora_mmdit"
    return config


def test_registered_spec_uses_torchtitans_components():
    spec = register()
    assert register() is spec  # idempotent
    assert get_train_spec("osora_mmdit") is spec
    assert spec.model_cls is OsoraMMDiT
    assert spec.build_optimizers_fn is build_optimizers
    assert spec.build_lr_schedulers_fn is build_lr_schedulers
    assert spec.parallelize_fn is parallelize_osora_mmdit
    assert spec.pipelining_fn is None


def test_flavours_are_osoras_configs():
    args = register().model_args
    assert args["tiny"].mmdit == load_settings().dit.model
    assert args["paper"].mmdit == MMDIT_11B
    d4 = args["paper_d4"].mmdit
    assert (d4.hidden_size, d4.num_heads, d4.depth_double, d4.depth_single) == (3072, 24, 4, 4)


@pytest.mark.parametrize("flavour", ["tiny", "paper_d4", "paper"])
def test_model_is_osoras_mmdit_and_flops_are_osoras(flavour):
    args = register().model_args[flavour]
    args.update_from_config(job(latent_frames=3, latent_height=8, latent_width=12,
                                text_tokens=7))
    with torch.device("meta"):  # as torchtitan's Trainer builds it
        model = register().model_cls(args)
        reference = MMDiT(args.mmdit)
    assert isinstance(model, MMDiT)
    assert [(n, p.shape) for n, p in model.named_parameters()] == \
        [(n, p.shape) for n, p in reference.named_parameters()]
    nparams, per_token = args.get_nparams_and_flops(model, seq_len=2048)
    assert nparams == sum(p.numel() for p in reference.parameters())
    p = args.mmdit.patch_size
    video = 3 * (8 // p) * (12 // p)
    batch = 5  # torchtitan counts tokens, osora counts steps: B·(L + N) tokens per step
    assert per_token * batch * (video + 7) == train_step_flops(args.mmdit, batch, video, 7)
    if flavour == "paper":
        assert nparams == 11_891_387_456  # MMDIT_11B's documented count


def test_init_weights_is_osoras():
    """torchtitan builds on the meta device, allocates, then calls init_weights: osora's."""
    args = register().model_args["tiny"]
    reference = MMDiT(args.mmdit)
    with torch.device("meta"):
        model = OsoraMMDiT(args)
    model.to_empty(device="cpu")
    torch.manual_seed(3)
    model.init_weights(buffer_device=None)
    torch.manual_seed(3)
    reference.init_weights()
    for a, b in zip(model.state_dict().values(), reference.state_dict().values()):
        assert torch.equal(a, b)


def dims(**degrees) -> ParallelDims:
    d = dict(dp_replicate=1, dp_shard=1, cp=1, tp=1, pp=1, ep=1, etp=1)
    d.update(degrees)
    world = d["dp_replicate"] * d["dp_shard"] * d["cp"] * d["tp"] * d["pp"]
    return ParallelDims(**d, world_size=world)


@pytest.mark.parametrize("mode,want", [
    ("none", {}),
    ("full", {"double_blocks.0": "checkpoint", "double_blocks.1": "checkpoint",
              "single_blocks.0": "checkpoint", "single_blocks.1": "checkpoint"}),
    ("selective", {"single_blocks.0": "checkpoint", "single_blocks.1": "checkpoint"}),
])
def test_activation_checkpoint_modes_map_to_osoras(mode, want):
    config = job(checkpoint_double=0, checkpoint_single=-1)
    config.activation_checkpoint.mode = mode
    model = OsoraMMDiT(register().model_args["tiny"])
    assert parallelize_osora_mmdit(model, dims(), config) is model  # one process: no FSDP
    wrapped = {f"{k}.{i}": b.forward.osora_wrapped for k in ("double_blocks", "single_blocks")
               for i, b in enumerate(getattr(model, k)) if hasattr(b.forward, "osora_wrapped")}
    assert wrapped == want


@pytest.mark.parametrize("degrees,setting,match", [
    ({"tp": 2}, {}, "tensor parallel"),
    ({"pp": 2}, {}, "pipeline"),
    ({"dp_replicate": 2}, {}, "DDP without sharding"),
    ({}, {"enable_cpu_offload": True}, "enable_cpu_offload"),
])
def test_unsupported_parallelisms_are_refused(degrees, setting, match):
    config = job()
    for key, value in setting.items():
        setattr(config.training, key, value)
    with torch.device("meta"):
        model = OsoraMMDiT(register().model_args["tiny"])
    with pytest.raises(NotImplementedError, match=match):
        parallelize_osora_mmdit(model, dims(**degrees), config)
    config = job()
    config.activation_checkpoint.mode = "memory_budget"
    with pytest.raises(NotImplementedError, match="memory_budget"):
        parallelize_osora_mmdit(model, dims(), config)


def test_entry_adds_the_osora_config_module_once(tmp_path):
    assert with_osora_config([])[-1] == f"--job.custom_config_module={CUSTOM_CONFIG_MODULE}"
    given = ["--job.custom_config_module", "mine"]
    assert with_osora_config(given) == given
    toml = tmp_path / "x.toml"
    toml.write_text('[job]\ncustom_config_module = "mine"\n')
    assert with_osora_config(["--job.config_file", str(toml)]) == ["--job.config_file",
                                                                  str(toml)]
