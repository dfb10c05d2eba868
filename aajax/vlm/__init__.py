"""The Moondream vision-language model: configs, crops, vision tower, runtime and the task API.

Entry points: `aajax.vlm.moondream.Moondream.from_pretrained(dir)` and the functional
`caption / query / detect / point` in `aajax.vlm.moondream`.
"""
