"""AA-CLIP's prompt ensemble: state phrases x templates, normal sentences first.

For a class whose real name is "dark bottle": "dark bottle.", "a photo of dark bottle.",
"a dark bottle.", ... (6 normal) then "a damaged dark bottle.", ... (10 abnormal). A class's anchor
pair is the re-normalised mean of each group's normalised sentence embeddings.
"""
import numpy as np

NORMAL_STATES = ("{}", "a {}", "the {}")
ABNORMAL_STATES = ("a damaged {}", "a broken {}", "a {} with flaw", "a {} with defect", "a {} with damage")
TEMPLATES = ("{}.", "a photo of {}.")
NUM_NORMAL = len(NORMAL_STATES) * len(TEMPLATES)


def class_sentences(real_name: str) -> list[str]:
  return [t.format(s.format(real_name)) for states in (NORMAL_STATES, ABNORMAL_STATES)
          for s in states for t in TEMPLATES]


def prompt_ids(tokenizer, real_names: list[str]) -> np.ndarray:
  """[num_classes, sentences, length] int32 token ids, in the order of `real_names`."""
  sentences = [class_sentences(name) for name in real_names]
  flat = np.asarray(tokenizer([s for group in sentences for s in group]), np.int32)
  return flat.reshape(len(real_names), len(sentences[0]), -1)

