"""Table 2 reproduced: parameters and multiply-accumulates of the six nets beside the paper's.

  python -m vgg_jax.models          # or: python launch.py --mode=table
"""

from vgg_jax import models

# Table 2 and docs/paper.md: (params as printed in the paper, GMACs per 224x224 image).
PAPER_TABLE2 = {
    'A': ('133M', 7.61), 'A-LRN': ('133M', 7.61), 'B': ('133M', 11.31),
    'C': ('134M', 11.77), 'D': ('138M', 15.47), 'E': ('144M', 19.63),
}


def print_table2():
  """Prints Table 2 reproduced beside the paper's figures, then the batch-norm variants."""
  header = (f'{"config":<9}{"weight layers":>14}{"params (ours, exact)":>22}'
            f'{"params (paper)":>16}{"GMACs (ours)":>14}{"GMACs (paper)":>15}')
  print('Table 2 reproduced: 224x224x3 input, 1000 classes. Parameters from '
        'jax.eval_shape of VGG.init;\nGMACs counted from the layer shapes '
        '(conv and FC multiply-accumulates of one forward pass).')
  print(header)
  print('-' * len(header))
  for variant in models.CONFIGS:
    params = models.count_params(models.param_shapes(models.VGG(variant=variant)))
    gmacs = models.forward_macs(variant) / 1e9
    paper_params, paper_gmacs = PAPER_TABLE2[variant]
    print(f'{variant:<9}{len(models.layer_names(variant)):>14}{params:>22,}{paper_params:>16}'
          f'{gmacs:>14.2f}{paper_gmacs:>15.2f}')
  print('\nNot in the paper: batch_norm=True (BatchNorm after every conv, as torchvision\'s '
        'vgg*_bn).\nParameters include BatchNorm\'s scale and bias (2 per channel), not its '
        'running statistics;\nBatchNorm adds no MACs.')
  for variant in models.CONFIGS:
    shapes = models.param_shapes(models.VGG(variant=variant, batch_norm=True))
    params = models.count_params(shapes)
    print(f'{variant + "_bn":<9}{len(models.layer_names(variant)):>14}{params:>22,}{"-":>16}'
          f'{models.forward_macs(variant) / 1e9:>14.2f}{"-":>15}')


if __name__ == '__main__':
  print_table2()
