"""Class "real names" and domains used in the prompts, as AA-CLIP's dataset constants define them.

The prompt placeholder is the class's real name ("dark bottle" for MVTec's bottle); the domain
selects the test-time blur and the image-score rule (see aajax.eval.maps). Strings are verbatim,
including the BTAD 01 sentence that is capitalised and ends with a period.
"""
from aajax.errors import DataError

REAL_NAMES = {
    "mvtec": {
        "bottle": "dark bottle", "cable": "top view of three cables",
        "capsule": "black and orange capsule", "carpet": "gray carpet",
        "grid": "metal or plastic mesh", "hazelnut": "single brown hazelnut",
        "leather": "brown leather", "metal_nut": "metal nut which has four notched edges",
        "pill": "oval white pill with small red speckles and the letters 'FF' engraved",
        "screw": "screw", "tile": "speckled tile surface",
        "transistor": "a three-legged transistor placed vertically",
        "toothbrush": "toothbrush head", "wood": "wood surface", "zipper": "a black zipper",
    },
    "visa": {
        "candle": "candle", "pcb3": "infrared sensor pcb module", "capsules": "capsules",
        "pipe_fryum": "pipe-shaped fryum", "pcb4": "battery charging pcb module",
        "macaroni2": "scattered yellow macaroni", "pcb2": "integrated circuits board",
        "chewinggum": "chewing gum", "macaroni1": "orange macaroni", "cashew": "cashew nut",
        "fryum": "wheel-shaped fryum snack", "pcb1": "dual ultrasonic distance sensor pcb module",
    },
    "mpdd": {
        "connector": "metal clamps with black adjustment knobs", "tubes": "scattered metal objects",
        "metal_plate": "blue rectangular metal plate with a notch on one side",
        "bracket_white": "white, elongated triangular metal bracket with a smooth, matte finish",
        "bracket_brown": "brown L-shaped metal bracket with smooth, glossy finish and multiple "
                         "mounting holes along its arms",
        "bracket_black": "black ornamental metal bracket with spiral design attached to a "
                         "rectangular frame",
    },
    "btad": {
        "01": "Bright concentric rings in neon yellow and blue tones against a dark blue "
              "background, resembling a stylized wave or energy field radiating outward.",
        "02": "vertical fabric lines in warm, dusty pink and beige tones",
        "03": "oval concentric circular rings in gradient shades of blue and white",
    },
    "brainmri": {"Brain": "scan"},
    "liverct": {"Liver": "scan"},
    "retina": {"Retina": "scan"},
    "clinicdb": {"ClinicDB": "colon endoscopy image"},
    "colondb": {"ColonDB": "colon endoscopy image"},
    "kvasir": {"Kvasir": "colon endoscopy image"},
    "cvc300": {"CVC-300": "colon endoscopy image"},
}

DOMAINS = {name: "Medical" if name in ("brainmri", "liverct", "retina", "clinicdb", "colondb",
                                       "kvasir", "cvc300") else "Industrial"
           for name in REAL_NAMES}


def real_name(class_name: str, dataset: str = None) -> str:
  """The prompt name of a class; unknown classes are named by themselves ("_" -> " ")."""
  if dataset is not None:
    return REAL_NAMES.get(dataset, {}).get(class_name, class_name.replace("_", " "))
  for table in REAL_NAMES.values():
    if class_name in table:
      return table[class_name]
  from aajax.data.synthetic import SOURCES
  if class_name in SOURCES:
    return SOURCES[class_name].real_name
  return class_name.replace("_", " ")


def domain(class_name: str, dataset: str = None) -> str:
  """"Industrial" or "Medical" for a class (of a data set, when given)."""
  if dataset is not None:
    if dataset == "synthetic":
      from aajax.data.synthetic import SOURCES
      return SOURCES[class_name].domain if class_name in SOURCES else "Industrial"
    if dataset not in DOMAINS:
      raise DataError(f"unknown data set {dataset!r}; known: {sorted(DOMAINS)}")
    return DOMAINS[dataset]
  for name, table in REAL_NAMES.items():
    if class_name in table:
      return DOMAINS[name]
  from aajax.data.synthetic import SOURCES
  if class_name in SOURCES:
    return SOURCES[class_name].domain
  return "Industrial"
