"""What every reader of a file the user did not write shares: one refusal, names vs paths.

A weights file, a mirror or a server is untrusted (docs/security.md): the readers of
vgg_jax.pretrained (torch_files, weight_readers, download) accept only what the format
allows, and every refusal is a WeightsFileError naming the file and what was wrong. The
user's own cache ($VGG_JAX_CACHE) is trusted once a file in it is verified.
"""

import errno
import os

from vgg_jax import errors

# What a weights file's name may end with; an argument ending so is a path, not a name.
WEIGHT_SUFFIXES = ('.pth', '.pt', '.bin', '.safetensors', '.h5')


class WeightsFileError(errors.UserError, ValueError):
  """A weights file, or a download of one, was refused: the message names it and why.

  Raised for every refusal of the loaders (a pickled global that is not a tensor, a view
  outside its storage, an entry that inflates too far, HDF5 external storage, the wrong
  bytes from a mirror, a planted link in the cache, ...): no other exception type, and no
  signal, comes out of a hostile file.
  """


def looks_like_path(argument: str) -> bool:
  """Whether `argument` is a path rather than a registered name.

  A path contains a separator, starts with '.' or '~', or ends with a weights suffix: a
  file called like a registered name ('vgg16', 'lpips_vgg_v0.1') in the working directory
  is never taken for that name's verified download.
  """
  return (os.sep in argument or '/' in argument or argument.startswith(('.', '~'))
          or argument.lower().endswith(WEIGHT_SUFFIXES))


def open_no_follow(path: str, flags: int, mode: int = 0o644) -> int:
  """os.open(path) that refuses a symbolic link planted at path (O_NOFOLLOW), naming it."""
  try:
    return os.open(path, flags | os.O_NOFOLLOW | getattr(os, 'O_CLOEXEC', 0), mode)
  except OSError as error:
    if error.errno == errno.ELOOP:
      raise WeightsFileError(f'{path} is a symbolic link; the cache writes only its own '
                             'files: remove the link and try again.') from None
    raise


def short(text, limit: int = 80) -> str:
  """repr-free, bounded text of something a hostile file chose (a name, a key)."""
  text = text if isinstance(text, str) else type(text).__name__
  return text if len(text) <= limit else text[:limit] + f'... ({len(text):,} characters)'
