"""Which learned models each VBench dimension needs, and where VBench looks for them.

VBench (Vchitect/VBench, vbench/utils.py init_submodules) loads its models from fixed paths
under VBENCH_CACHE_DIR and downloads a missing one. osora gives it a cache folder of links to
the local files named in params/eval.yaml vbench.weights, so VBench finds them and never
downloads; a dimension with any of its files missing is not run and is reported as not
evaluated. Plain Python, no imports.
"""

from __future__ import annotations

# weight name (params/eval.yaml vbench.weights) → its path inside VBENCH_CACHE_DIR
CACHE_PATHS: dict[str, str] = {
    "clip_vit_b32": "clip_model/ViT-B-32.pt",
    "clip_vit_l14": "clip_model/ViT-L-14.pt",
    "laion_aesthetic_head": "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth",
    "dino_vitb16": "dino_model/dino_vitbase16_pretrain.pth",
    "dino_repo": "dino_model/facebookresearch_dino_main",  # a clone of facebookresearch/dino
    "musiq_spaq": "pyiqa_model/musiq_spaq_ckpt-358bb6af.pth",
    "grit": "grit_model/grit_b_densecap_objectdet.pth",
    "tag2text": "caption_model/tag2text_swin_14m.pth",
    "viclip": "ViCLIP/ViClip-InternVid-10M-FLT.pth",
    "umt": "umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth",
    "amt_s": "amt_model/amt-s.pth",
    "raft_things": "raft_model/models/raft-things.pth",
}

# VBench dimension → the weights it loads (temporal flickering needs none)
NEEDS: dict[str, tuple[str, ...]] = {
    "subject_consistency": ("dino_vitb16", "dino_repo"),
    "background_consistency": ("clip_vit_b32",),
    "temporal_flickering": (),
    "motion_smoothness": ("amt_s",),
    "dynamic_degree": ("raft_things",),
    "aesthetic_quality": ("clip_vit_l14", "laion_aesthetic_head"),
    "imaging_quality": ("musiq_spaq",),
    "object_class": ("grit",),
    "multiple_objects": ("grit",),
    "human_action": ("umt",),
    "color": ("grit",),
    "spatial_relationship": ("grit",),
    "scene": ("tag2text",),
    "appearance_style": ("clip_vit_b32",),
    "temporal_style": ("viclip",),
    "overall_consistency": ("viclip",),
}


def missing_weights(dimension: str, weights: dict[str, str | None]) -> list[str]:
    """The weight names the dimension needs that params give no path for."""
    return [name for name in NEEDS[dimension] if not weights.get(name)]
