"""Constants of the VisualRWKV prompt/label format (SPEC §7.5)."""

IGNORE_INDEX = -100
IMAGE_TOKEN_INDEX = -200  # sentinel in token id lists where the image is spliced (v5/v6)
STOP_TOKEN_INDEX = 261  # "\n\n"
END_OF_TEXT = 0
DEFAULT_STOP_TOKEN = "\n\n"
DEFAULT_IMAGE_TOKEN = "<image>"
