"""Parameter trees as flat {path tuple: array} dicts, and '/'-joined path names for regexes."""


def flatten(tree, prefix=()) -> dict:
  out = {}
  for k, v in tree.items():
    if isinstance(v, dict):
      out.update(flatten(v, prefix + (k,)))
    else:
      out[prefix + (k,)] = v
  return out


def unflatten(flat: dict) -> dict:
  out: dict = {}
  for path, v in flat.items():
    node = out
    for k in path[:-1]:
      node = node.setdefault(k, {})
    node[path[-1]] = v
  return out


def path_name(path: tuple) -> str:
  return "/".join(str(p) for p in path)
