"""python -m vgg_jax.pretrained: list, fetch or import pretrained VGG weights.

  python -m vgg_jax.pretrained --list                    # the named weights, and what is cached
  python -m vgg_jax.pretrained --fetch=vgg16             # download and convert once
  python -m vgg_jax.pretrained --source=keras|torchvision|timm --weights=FILE \\
      --variant=D|E|A|B --out=DIR                         # import a file you have
"""

import json

from absl import app
from absl import flags

from vgg_jax import cli
from vgg_jax import pretrained
from vgg_jax.pretrained import named_weights


def define_flags():
  """The command's flags; defined only when this module runs as a script, so that
  programs importing it (experiments.style_transfer, say) keep --weights and --out."""
  flags.DEFINE_bool('list', False, 'Print the named weights (and which are cached).')
  flags.DEFINE_bool('urls', False, "Print each named file's URL, one a line: the list to "
                    'fill a mirror directory with (see VGG_JAX_MIRROR).')
  flags.DEFINE_string('fetch', None, 'Download and convert these named weights '
                      '(comma-separated) into the cache.')
  flags.DEFINE_string('source', None, "'keras' (.h5), 'torchvision' (vgg* or vgg*_bn state "
                      "dict) or 'timm' (timm's vgg* or vgg*_bn layout).")
  flags.DEFINE_string('weights', None, 'The weights file (.h5, .pth, .safetensors).')
  flags.DEFINE_string('variant', 'D', 'A, B, D or E (VGG-11/13/16/19, or their *_bn).')
  flags.DEFINE_string('out', None, 'Directory to write the checkpoint to.')
  flags.DEFINE_bool('notop', False, 'Import the conv base only (include_top=False).')
  flags.DEFINE_string('convention', None, "The file's input convention as JSON (order, "
                      "scale, mean, std); default: the source's own.")
  flags.DEFINE_string('origin', None, "What the checkpoint records as its origin (default: "
                      "the file's path).")


def main(argv):
  del argv
  args = flags.FLAGS
  if args.list or args.urls:
    print(named_weights.format_table(pretrained.cached_names()) if args.list else
          '\n'.join(w.url for w in named_weights.WEIGHTS.values()))
    return
  if args.fetch:
    for name in args.fetch.split(','):
      print(f'{name}: {pretrained.fetch(name)}')
    return
  if not (args.source and args.weights and args.out):
    raise app.UsageError('Give --list, --urls, --fetch=NAME, or --source, --weights and --out.')
  convention = None
  if args.convention:
    fields = json.loads(args.convention)
    convention = named_weights.Convention(
        fields['order'], fields['scale'], tuple(fields['mean']), tuple(fields['std']))
  summary = pretrained.import_weights(args.source, args.weights, args.variant, args.out,
                           include_top=not args.notop, convention=convention,
                           origin=args.origin)
  batch_norm = ' with batch norm' if summary['batch_norm'] else ''
  print(f"Imported {summary['variant']}{batch_norm} ({len(summary['layers'])} layers, "
        f"{summary['num_classes']} classes) from {args.source} into {summary['out']}; "
        f"feed RGB 0..255 minus mean_rgb={summary['preprocessing']['mean_rgb']}.")


if __name__ == '__main__':
  define_flags()
  cli.run(main)
