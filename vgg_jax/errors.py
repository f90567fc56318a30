"""The project's user errors: something the user gave (a flag, a config field, a file, an
image, a variable) cannot be used, and the message says what and how to fix it.

Commands (launch.py, python -m vgg_jax.*, experiments/*) print a UserError as one line,
`error: <message>`, and exit 1 (vgg_jax.cli.run); every other exception keeps its
traceback. Each class also derives from the built-in error it refines, so callers that
catch ValueError or FileNotFoundError still catch it.
"""


class UserError(Exception):
  """Base of the errors a command shows as their message alone."""


class InvalidInput(UserError, ValueError):
  """A config field, flag, image or file's contents that cannot be used."""


class NotFound(UserError, FileNotFoundError):
  """A path, split, checkpoint or dataset that is not there."""
