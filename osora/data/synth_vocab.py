"""The synthetic demo set's vocabulary: subject colours, background tints, shapes, directions
and the caption words for each. Shared by the generator (osora.data.synth) and the scorer of
generated videos (osora.eval.prompt_following); plain Python, so either imports it cheaply."""

# Saturated subject colours, chosen to stand out from the muted backgrounds below.
COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (225, 35, 35),
    "yellow": (245, 215, 30),
    "orange": (250, 130, 20),
    "white": (245, 245, 245),
    "magenta": (230, 40, 200),
    "cyan": (30, 225, 235),
    "green": (40, 215, 60),
    "black": (15, 15, 15),
}
# Muted background tints; every channel stays well above black so black borders stand apart.
TINTS: dict[str, tuple[int, int, int]] = {
    "blue": (70, 100, 160),
    "green": (80, 135, 80),
    "brown": (145, 105, 70),
    "grey": (125, 125, 125),
    "teal": (60, 135, 135),
    "purple": (120, 85, 145),
    "navy": (55, 70, 125),
    "sand": (210, 190, 140),
}
SHAPES = ("circle", "square", "triangle", "diamond")
BACKGROUNDS = ("noise", "stripes")  # "flat" is kept for the low-bitrate video
# Unit direction (x right, y down) and the caption's words for it.
DIRECTIONS: dict[str, tuple[tuple[float, float], str]] = {
    "right": ((1.0, 0.0), "from left to right"),
    "left": ((-1.0, 0.0), "from right to left"),
    "down": ((0.0, 1.0), "from the top downwards"),
    "up": ((0.0, -1.0), "from the bottom upwards"),
    "down-right": ((0.7071, 0.7071), "diagonally down and to the right"),
    "up-left": ((-0.7071, -0.7071), "diagonally up and to the left"),
    "down-left": ((-0.7071, 0.7071), "diagonally down and to the left"),
    "up-right": ((0.7071, -0.7071), "diagonally up and to the right"),
}
# The caption's words for each background kind; {} is the tint's name.
BACKGROUND_WORDS = {
    "noise": "a mottled {} noise texture",
    "stripes": "a background of diagonal {} stripes",
    "flat": "a plain {} background",
}
