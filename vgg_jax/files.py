"""Files that readers, or a crash mid-write, never see half-written."""

import os


def write_file_atomically(path: str, text: str):
  """Writes text to path via a temporary file and a rename: readers see all or nothing.

  If the write fails (a full disk, say), path keeps its old contents and the temporary
  file is removed.
  """
  tmp = f'{path}.tmp{os.getpid()}'
  try:
    with open(tmp, 'w') as f:
      f.write(text)
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise
