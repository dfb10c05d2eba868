"""Convert a SigLIP checkpoint (HF directory or big_vision .npz) into an aajax model directory.

    python -m weights_convert.siglip --src <HF SigLIP dir | big_vision .npz> --dst DIR \
        [--image_size N] [--tokenizer DIR | spiece.model] [--overwrite]

The size (base, large, so400m, custom) is read from the tensors. HF directories bring their
tokenizer files along; for a big_vision .npz pass the SentencePiece model with --tokenizer.
"""
import sys

from weights_convert.towers import main

if __name__ == "__main__":
  sys.exit(main("siglip", doc=__doc__))
