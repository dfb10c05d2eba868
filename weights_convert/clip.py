"""Convert a CLIP checkpoint (HF directory or OpenAI/OpenCLIP .pt) into an aajax model directory.

    python -m weights_convert.clip --src <HF CLIP dir | OpenAI/OpenCLIP .pt> --dst DIR \
        [--act gelu|quick_gelu] [--image_size N] [--tokenizer DIR] [--overwrite]

`.pt` files may be plain state dicts, training checkpoints wrapping one, or OpenAI's TorchScript
archives. OpenAI trained with QuickGELU (the default for .pt files); AA-CLIP runs the same weights
with exact GELU (`--act gelu`). `--image_size 518` stores the position table resized for 518 px
(bicubic, antialiased, as open_clip and AA-CLIP resize it).
"""
import sys

from weights_convert.towers import main

if __name__ == "__main__":
  sys.exit(main("clip", doc=__doc__))
