"""vgg_jax entry point: absl flags -> config -> the chosen mode.

Until training lands, the only mode prints Table 2 reproduced.
"""

from absl import app
from absl import flags

from vgg_jax import models

_MODE = flags.DEFINE_enum('mode', 'table', ['table'], 'What to run.')


def main(argv):
  if len(argv) > 1:
    raise app.UsageError(f'Unexpected arguments: {argv[1:]}')
  if _MODE.value == 'table':
    models.print_table2()


if __name__ == '__main__':
  app.run(main)
