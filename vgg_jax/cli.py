"""What every command shares: a user error shown as its message alone, a quiet start-up.

  if __name__ == '__main__':
    cli.run(main)        # instead of app.run(main)

TensorFlow's C++ start-up lines (absl's "All log messages before absl::InitializeLog()",
oneDNN's notice, the CPU feature guard) come from two libraries, so each printed twice;
import_tensorflow() drops them and lets every other line through.
"""

import logging as std_logging
import os
import sys

from absl import app
from absl import logging

from vgg_jax import errors
from vgg_jax import stderr

os.environ.setdefault('TF_CPP_MIN_LOG_LEVEL', '1')  # Before TensorFlow is imported.

# Known start-up lines of TensorFlow's C++ libraries: notices, not warnings.
TENSORFLOW_NOISE = (
    'All log messages before absl::InitializeLog() is called',
    'oneDNN custom operations are on',
    'This TensorFlow binary is optimized to use available CPU instructions',
    'To enable the following instructions:',
)


def run(main):
  """app.run(main), with a UserError printed as `error: <message>` on stderr and exit 1.

  absl's UsageError keeps absl's own handling; other exceptions keep their traceback.
  JAX's INFO lines about backends it did not find ('Unable to initialize backend tpu')
  are dropped.
  """
  quiet_jax_backend_logs()

  def main_showing_user_errors(argv):
    try:
      return main(argv)
    except errors.UserError as error:
      sys.stdout.flush()
      print(f'error: {error}', file=sys.stderr, flush=True)
      sys.exit(1)

  app.run(main_showing_user_errors)


def import_tensorflow():
  """Imports TensorFlow with its known start-up notices dropped; other lines still show.

  The C++ libraries write to file descriptor 2 directly, so that is where they are
  filtered (vgg_jax.stderr).
  """
  if 'tensorflow' in sys.modules:
    return
  with stderr.dropping(TENSORFLOW_NOISE):
    import tensorflow  # pylint: disable=g-import-not-at-top,unused-import


def filter_jax_backend_log(record: std_logging.LogRecord) -> bool:
  """A log filter: False for JAX's INFO lines about backends it looked for and did not find."""
  return not ('xla_bridge' in record.pathname and record.levelno < std_logging.WARNING)


def quiet_jax_backend_logs():
  """Drops JAX's INFO lines about backends it did not find from absl's log handler."""
  handler = logging.get_absl_handler()
  if filter_jax_backend_log not in handler.filters:
    handler.addFilter(filter_jax_backend_log)
