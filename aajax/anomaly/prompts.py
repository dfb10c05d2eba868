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


# The descriptive "real names" AA-CLIP puts in the prompts, per data set and class (as released;
# BTAD 01's sentence keeps its capital letter and final period). Unlisted classes use their own
# name with underscores as spaces.
REAL_NAMES = {
    "mvtec": {
        "bottle": "dark bottle", "cable": "top view of three cables", "capsule": "black and orange capsule",
        "carpet": "gray carpet", "grid": "metal or plastic mesh", "hazelnut": "single brown hazelnut",
        "leather": "brown leather", "metal_nut": "metal nut which has four notched edges",
        "pill": "oval white pill with small red speckles and the letters 'FF' engraved", "screw": "screw",
        "tile": "speckled tile surface", "transistor": "a three-legged transistor placed vertically",
        "toothbrush": "toothbrush head", "wood": "wood surface", "zipper": "a black zipper"},
    "visa": {
        "candle": "candle", "pcb3": "infrared sensor pcb module", "capsules": "capsules",
        "pipe_fryum": "pipe-shaped fryum", "pcb4": "battery charging pcb module",
        "macaroni2": "scattered yellow macaroni", "pcb2": "integrated circuits board", "chewinggum": "chewing gum",
        "macaroni1": "orange macaroni", "cashew": "cashew nut", "fryum": "wheel-shaped fryum snack",
        "pcb1": "dual ultrasonic distance sensor pcb module"},
    "mpdd": {
        "connector": "metal clamps with black adjustment knobs", "tubes": "scattered metal objects",
        "metal_plate": "blue rectangular metal plate with a notch on one side",
        "bracket_white": "white, elongated triangular metal bracket with a smooth, matte finish",
        "bracket_brown": "brown L-shaped metal bracket with smooth, glossy finish and multiple mounting holes along its arms",
        "bracket_black": "black ornamental metal bracket with spiral design attached to a rectangular frame"},
    "btad": {
        "01": "Bright concentric rings in neon yellow and blue tones against a dark blue background, resembling a "
              "stylized wave or energy field radiating outward.",
        "02": "vertical fabric lines in warm, dusty pink and beige tones",
        "03": "oval concentric circular rings in gradient shades of blue and white"},
    "brainmri": {"brain": "scan"}, "liverct": {"liver": "scan"}, "retina": {"retina": "scan"},
}
MEDICAL = ("brainmri", "liverct", "retina", "colon")


def real_name(dataset: str, class_name: str) -> str:
  return REAL_NAMES.get(dataset, {}).get(class_name.lower(), class_name.replace("_", " "))


def domain_of(dataset: str) -> str:
  """The test-time blur and image-score rule: "medical" for the medical sets, else "industrial"."""
  return "medical" if dataset.lower().startswith(MEDICAL) else "industrial"
