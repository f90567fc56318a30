"""Lines that C++ libraries write straight to file descriptor 2, filtered where they are
known noise: TensorFlow's start-up notices, libjpeg's and tf.data's lines about a file
that the caller reports itself (vgg_jax.data.scan names every undecodable file)."""

import contextlib
import os
import sys
import threading


@contextlib.contextmanager
def dropping(patterns: tuple[str, ...]):
  """Within the block, lines on fd 2 that contain one of patterns are dropped; every
  other line is passed on as it comes (a thread copies them from a pipe)."""
  sys.stderr.flush()
  saved = os.dup(2)
  read_end, write_end = os.pipe()
  # Opened here, not in the thread: the block may end (and close `saved`) before the
  # thread first runs.
  lines, out = os.fdopen(read_end, 'rb'), os.fdopen(os.dup(saved), 'wb', 0)

  def copy():
    with lines, out:
      for line in lines:
        if not any(pattern.encode() in line for pattern in patterns):
          out.write(line)

  thread = threading.Thread(target=copy, name='stderr-filter', daemon=True)
  thread.start()
  os.dup2(write_end, 2)
  os.close(write_end)
  try:
    yield
  finally:
    sys.stderr.flush()
    os.dup2(saved, 2)  # The pipe's last writer is gone: the thread reads to its end.
    os.close(saved)
    thread.join()
