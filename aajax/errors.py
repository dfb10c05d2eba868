"""User-facing errors.

Every error a user can cause (a missing file, a wrong checkpoint, a bad image, an unknown config
key) is raised as one of these, with a one-line message that names the thing and what was expected.
Launch scripts print the message without a traceback and exit with status 2.
"""


class AajaxError(Exception):
  """Base class of errors caused by user input, not by a bug."""


class ConfigError(AajaxError, ValueError):
  """An unknown model name, config key, or an inconsistent setting."""


class CheckpointError(AajaxError):
  """A missing, corrupt or mismatched checkpoint file."""


class DataError(AajaxError):
  """A data root with the wrong layout, an unreadable image or mask."""


class InputError(AajaxError, ValueError):
  """A bad argument to a model call: image size, mode, prompt length."""
