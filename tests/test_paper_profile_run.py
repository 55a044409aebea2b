"""The paper profile's DiT stages 1–3 through `dvc repro`, on 4 gloo processes, in a copy of the
project after `osora config apply paper`: the profile passes `osora config check`, each stage
trains with world size 4 (stage 3 with context parallelism 4, as the profile says), writes its
checkpoints and weights, and is one MLflow run.

Real: dvc.yaml's commands (osora.launch → torchrun), the paper profile's params, its latent
sets' geometry (HunyuanVideo VAE latents at the 256px and 768px bucket sizes, causal frame
counts), its bucket tables' frame counts, its stage chain (init, conditioning, checkpointing,
lr drops) and CP degree. Changed for 2 CPU cores: `cpu_overrides` below, each with its reason.
Substituted: the latents tables. The profile's latents come from the HunyuanVideo VAE, whose
weights are not here, so a few random latents of its shape at the profile's bucket sizes are
written with the store API with the receipt the latents stage writes, and the DiT stages run
alone (`dvc repro --single-item`)."""

from collections import Counter
from pathlib import Path

import pytest
import torch
from dvc_project import copy_project, edit_yaml, sh, write_latents

from osora.config import load_settings
from osora.data.latents import latent_columns
from osora.train.buckets import bucket_size, parse_ratio

pytestmark = pytest.mark.slow

RANKS = 4
STEPS = 2
STAGES = ("stage1", "stage2", "stage3")
CP = {"stage1": 1, "stage2": 1, "stage3": 4}  # the paper profile's degrees
# HunyuanVideo VAE (params/profiles/paper/ae.yaml): 16 channels, causal 4× in time (frames 4k+1
# → k+1 latent frames), 8× in space; the DiT's patch 2 makes a token of 16 × 16 pixels.
VAE_CHANNELS, VAE_TIME, VAE_SPACE = 16, 4, 8
# The buckets the substituted latents fill, (set, aspect ratio, frames, height, width, clips):
# heights and widths are the reference's bucket sizes (the paper ae.yaml's comments), checked
# against osora's bucket_size below. Stages 1–2 have 4 data-parallel ranks and batch size 1,
# so each 256px bucket holds 4 clips: one step per bucket, two buckets, STEPS steps. Stage 3's
# 4 ranks are one CP group: one clip a step. Stage 3's 768 × 768 × 5 frames is 2 × 48 × 48 =
# 4608 video tokens (+ 48 text tokens), 1164 per rank.
BUCKETS = (("256px", "1:1", 5, 256, 256, 4), ("256px", "16:9", 9, 192, 336, 4),
           ("768px", "1:1", 5, 768, 768, 2))


def cpu_overrides(params: Path) -> None:
    """What a CPU test must change in the applied paper profile, and nothing else."""
    def dit(d: dict) -> None:
        # Reduced width and depth; 4 heads of 32 channels (RoPE axes 8 + 12 + 12) keep
        # Ulysses CP 4 valid: each rank of the group takes one head.
        d["model"].update(hidden_size=128, num_heads=4, depth_double=1, depth_single=1,
                          axes_dims=[8, 12, 12])
        # The packaged MiniLM instead of T5-XXL + CLIP-L (not here), at its widths; 48 tokens
        # (a multiple of 4: text + video tokens split over the CP group).
        d["model"].update(text_dim=384, vec_dim=384)
        d["text"].update(kind="minilm", minilm=None, t5=None, clip=None, max_length=48,
                         dtype="float32", cache=None)
        # CPU, fp32, no inductor; a loss per step to see every step run.
        d["train"].update(device="cpu", precision="fp32", compile_blocks=False, log_every=1)
        for stage in d["train"]["stages"].values():
            stage["steps"] = STEPS
            if stage["lr_drop"] is not None:  # the drop inside the shortened stage
                stage["lr_drop"][0] = 1
        d["train"]["stages"]["stage1"]["init"] = None  # FLUX-initialised weights: not here

    def buckets(d: dict) -> None:  # per-H200 batch sizes; one clip per rank on a CPU
        for rules in d["stages"].values():
            for rule in rules.values():
                rule["batch_size"] = 1

    edit_yaml(params / "dit.yaml", dit)
    edit_yaml(params / "buckets.yaml", buckets)
    # 4 gloo ranks; a failure fails the test at once rather than after 3 restarts
    edit_yaml(params / "launch.yaml",
              lambda d: d.update(nproc_per_node=RANKS, backend="gloo", max_restarts=0))
    edit_yaml(params / "store.yaml", lambda d: d.update(uri="store"))  # not the paper's S3


def substituted_latents(project: Path) -> None:
    """Random latents of the HunyuanVideo VAE's shape in BUCKETS, as tables latents_256px and
    latents_768px with the latents stage's receipt."""
    gen = torch.Generator().manual_seed(0)
    tables: dict[str, list[dict]] = {}
    for latent_set, ratio, frames, height, width, clips in BUCKETS:
        shape = (VAE_CHANNELS, 1 + (frames - 1) // VAE_TIME,
                 height // VAE_SPACE, width // VAE_SPACE)  # (C, T', H', W')
        tables.setdefault(f"latents_{latent_set}", []).extend(
            {"id": f"{latent_set}-{ratio}-{i}", "video_id": f"video{i}",
             "text": f"a red square moves left, clip {i}", "fps": 24.0, "frames": frames,
             "height": height, "width": width, "dit_scale": True, "ae_kind": "hunyuan_vae",
             "ae_sha256": "0" * 64,
             **latent_columns(torch.randn(shape, generator=gen), "bfloat16")}
            for i in range(clips))
    write_latents(project, tables)


@pytest.fixture(scope="module")
def paper(tmp_path_factory) -> Path:
    """A copy of the project holding the paper profile with `cpu_overrides` and the
    substituted latents; nothing run yet."""
    project = copy_project(tmp_path_factory.mktemp("paper"))
    sh("osora", "config", "apply", "paper", cwd=project)
    cpu_overrides(project / "params")
    settings = load_settings(params_dir=project / "params")
    for latent_set, ratio, frames, height, width, _ in BUCKETS:  # the profile's own buckets
        sizes = settings.ae.latents.sets[latent_set]
        assert frames in sizes.frames and ratio in sizes.aspect_ratios
        assert bucket_size(1, 1, sizes.resolution, VAE_SPACE * 2, parse_ratio(ratio)) == (
            height, width)
    substituted_latents(project)
    return project


def test_paper_profile_passes_config_check(paper):
    # weight files the profile names (VAE, LPIPS, VBench, ...) are not here: structure only
    out = sh("osora", "config", "check", "--no-weights", cwd=paper, timeout=120)
    assert "buckets, context parallelism, text widths check out" in out, out
    assert "broken rule" not in out, out


def test_stages_1_to_3_on_4_ranks_through_dvc_repro(paper):
    from mlflow import MlflowClient

    dvc_stages = [f"dit_{s}" for s in STAGES]
    sh("dvc", "repro", "--single-item", *dvc_stages, cwd=paper, timeout=900)

    client = MlflowClient(f"sqlite:///{paper / 'mlflow' / 'mlflow.db'}")
    runs = client.search_runs([client.get_experiment_by_name("osora").experiment_id])
    assert Counter(r.data.tags["dvc.stage"] for r in runs) == Counter(dvc_stages)
    by_stage = {r.data.tags["osora.stage"].removeprefix("dit_"): r for r in runs}
    for stage, run in by_stage.items():
        params, tags = run.data.params, run.data.tags
        assert run.info.status == "FINISHED", stage
        assert params["parallel.world_size"] == str(RANKS), stage
        assert params[f"dit.train.stages.{stage}.context_parallel"] == str(CP[stage]), stage
        assert params["dit.model.hidden_size"] == "128", stage
        losses = client.get_metric_history(run.info.run_id, "dit/loss")
        assert sorted(m.step for m in losses) == list(range(1, STEPS + 1)), stage
        latent_set = "768px" if stage == "stage3" else "256px"  # the profile's sets
        assert f"lance.input.latents_{latent_set}.version" in tags, (stage, tags)

        assert (paper / "models" / "dit" / stage / "dit.safetensors").is_file(), stage
        # the resumable checkpoint of the last step (every rank's shard), in the run's folder
        (folder,) = (paper / "checkpoints" / f"dit_{stage}").iterdir()
        assert (folder / f"step_{STEPS:08d}").is_dir(), sorted(folder.iterdir())

    # The chain: stage 2 starts from stage 1's weights, stage 3 from stage 2's.
    for stage, init in (("stage2", "stage1"), ("stage3", "stage2")):
        assert (by_stage[stage].data.tags["weights.input.init.sha256"]
                == by_stage[init].data.tags["weights.output.sha256"]), stage

    # Clips, CP degree and steps per stage as `osora cost` shows them. That stage 3 trained
    # at all on 2 clips at batch size 1 shows its 4 ranks formed one CP group: as 4
    # data-parallel ranks, an epoch would need 4 clips of a bucket.
    cost = sh("osora", "cost", cwd=paper, timeout=120)
    for stage in STAGES:
        clips = sum(b[-1] for b in BUCKETS if (b[0] == "768px") == (stage == "stage3"))
        assert f"| {stage} | {clips} | {CP[stage]} | {STEPS} |" in cost, cost
