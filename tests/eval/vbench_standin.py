"""A stand-in for VBench's `vbench evaluate` with the same command line, cache layout and
result file, for the driver's tests: real VBench needs CUDA, torchvision and its own pinned
environment, none of which this machine has.

Temporal flickering is computed the way VBench's vbench/temporal_flickering.py does (OpenCV
decoding, cv2.absdiff in float32, (255 − mean MAE) / 255): an independent implementation to
check osora's against. Dimensions with learned models cannot be computed here: the stand-in
checks their weights are where VBench reads them (and fails as VBench would try to download
them otherwise) and reports a fixed score, 0.5. STANDIN_NO_RESULT=1 makes it exit 0 without a
result file, as VBench's CLI does when its relaunch fails.
"""

import argparse
import json
import os
import sys
import time
from pathlib import Path

import cv2
import numpy as np

# VBench's layout under VBENCH_CACHE_DIR (vbench/utils.py init_submodules), written out here
# independently of osora.eval.vbench_weights.
NEEDS = {
    "subject_consistency": ["dino_model/dino_vitbase16_pretrain.pth",
                            "dino_model/facebookresearch_dino_main"],
    "background_consistency": ["clip_model/ViT-B-32.pt"],
    "motion_smoothness": ["amt_model/amt-s.pth"],
    "dynamic_degree": ["raft_model/models/raft-things.pth"],
    "aesthetic_quality": ["clip_model/ViT-L-14.pt",
                          "aesthetic_model/emb_reader/sa_0_4_vit_l_14_linear.pth"],
    "imaging_quality": ["pyiqa_model/musiq_spaq_ckpt-358bb6af.pth"],
    "object_class": ["grit_model/grit_b_densecap_objectdet.pth"],
    "multiple_objects": ["grit_model/grit_b_densecap_objectdet.pth"],
    "human_action": ["umt_model/l16_ptk710_ftk710_ftk400_f16_res224.pth"],
    "color": ["grit_model/grit_b_densecap_objectdet.pth"],
    "spatial_relationship": ["grit_model/grit_b_densecap_objectdet.pth"],
    "scene": ["caption_model/tag2text_swin_14m.pth"],
    "appearance_style": ["clip_model/ViT-B-32.pt"],
    "temporal_style": ["ViCLIP/ViClip-InternVid-10M-FLT.pth"],
    "overall_consistency": ["ViCLIP/ViClip-InternVid-10M-FLT.pth"],
}


def flicker(path: str) -> float:
    capture, frames = cv2.VideoCapture(path), []
    while capture.isOpened():
        ok, frame = capture.read()
        if not ok:
            break
        frames.append(frame)
    capture.release()
    maes = [np.mean(cv2.absdiff(np.float32(a), np.float32(b))) for a, b in zip(frames, frames[1:])]
    return (255.0 - float(np.mean(maes))) / 255.0


def main() -> int:
    parser = argparse.ArgumentParser(prog="vbench")
    sub = parser.add_subparsers(dest="command", required=True)
    ev = sub.add_parser("evaluate")
    for flag in ("--videos_path", "--dimension", "--full_json_dir", "--output_path", "--mode",
                 "--load_ckpt_from_local"):
        ev.add_argument(flag, required=True)
    args = parser.parse_args()
    assert args.mode == "vbench_standard" and args.load_ckpt_from_local == "True", args
    dim = args.dimension
    cache = Path(os.environ["VBENCH_CACHE_DIR"])
    for rel in NEEDS.get(dim, []):
        if not (cache / rel).exists():
            print(f"File {cache / rel} does not exist. Downloading... (no network)")
            return 1
    videos = []
    for entry in json.loads(Path(args.full_json_dir).read_text()):
        if dim in entry["dimension"]:
            for i in range(5):
                path = Path(args.videos_path) / f"{entry['prompt_en']}-{i}.mp4"
                if path.exists():
                    videos.append(str(path))
    if os.environ.get("STANDIN_NO_RESULT"):
        print("relaunch failed (stand-in)")
        return 0
    scores = [flicker(v) if dim == "temporal_flickering" else 0.5 for v in videos]
    result = {dim: [float(np.mean(scores)),
                    [{"video_path": v, "video_results": s} for v, s in zip(videos, scores)]]}
    stamp = time.strftime("%Y-%m-%d-%H:%M:%S")
    out = Path(args.output_path)
    out.mkdir(parents=True, exist_ok=True)
    (out / f"results_{stamp}_eval_results.json").write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
