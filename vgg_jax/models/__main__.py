"""python -m vgg_jax.models: prints Table 2 (weight layers, parameters, GMACs) reproduced."""

from vgg_jax.models import table2

if __name__ == '__main__':
  table2.print_table2()
