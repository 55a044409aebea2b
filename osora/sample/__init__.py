"""Sampling videos from a trained MMDiT (docs/recipe.md §5): `osora sample`.

- conditions: an image or video file → the condition tensor of an i2v / v2v kind;
- generate: `VideoSampler`, prompts → latents → pixels (text encoder, sampler, AE decoder);
- first_frame: the image model of text→image→video (the MMDiT at one frame, or FLUX);
- outputs: `{prompt}-{index}.mp4` (VBench naming) and its JSON sidecar;
- run: one sampling run from params, as the CLI and the sample stage call it;
- placement: where the text encoder, MMDiT and AE live per phase (`--offload`);
- memory_plan: the device memory a run needs per offload mode, loading no weight (`--plan`).
"""
