"""The six-aspect captioning prompt (docs/recipe.md §1, paper §2.2), shared by every VLM backend.

Both VLM backends send the same words, so a caption's `prompt_version` says exactly what was
asked. Change the wording → bump PROMPT_VERSION: captions made under different prompts then
stay distinguishable in the `captions` table, and resumption does not reuse them.
"""

PROMPT_VERSION = "six-aspect-v1"

# The paper asks its captioners for six aspects: main subjects, their actions, background and
# environment, lighting and atmosphere, camera movement, and style. Its captions are long (most
# over 75 words), hence the length guide. One paragraph of prose because the caption becomes
# the training text (osora.prompts.conditioned_text) and prompts at inference look like prose.
PROMPT = """\
The {num_frames} images are frames taken in order, evenly spaced in time, from one video clip.
Describe the clip in a single paragraph of plain prose of about 80 to 150 words, with no \
lists, headings or preamble. Cover, in this order:
1. the main subjects: who or what they are and how they look;
2. what the subjects do: their actions and movements over the course of the clip;
3. the background and environment: the setting and notable objects in it;
4. the lighting and atmosphere: light sources, time of day, colours and mood;
5. the camera: how it moves (static, panning, tilting, zooming, tracking, handheld shake) and \
how it frames the scene;
6. the visual style: for example realistic, cinematic, 3D render, animation, or another style.
Describe only what can be seen. Do not guess names, do not invent sound or dialogue, and do \
not mention frames or images: write about the video itself."""


def prompt_text(num_frames: int) -> str:
    """The prompt for a clip shown as `num_frames` sampled frames."""
    if num_frames < 1:
        raise ValueError(f"a caption prompt needs at least one frame, got {num_frames}")
    return PROMPT.format(num_frames=num_frames)
