"""Transfer learning from pretrained VGG16/19 weights: finetune.py[:fc8|small[,E]].

  python launch.py --workdir=workdirs/cats_vs_dogs --config=experiments/configs/finetune.py \\
      --config.init_from=vgg16 --config.data.folder=/data/cats_vs_dogs

init_from: named weights (python -m vgg_jax.pretrained --list; fetched once into the
cache) or the directory of an import (python -m vgg_jax.pretrained --source=... --out=DIR)
or of a training run. ':fc8' needs weights with fc6/fc7 (not vgg16_features, not the
Keras notop files); VGG19 weights need ',E'.

The conv base is frozen (no updates, no weight decay; a batch-norm base's BatchNorm
layers keep their running statistics and normalise with them in training too).
':fc8' (default) keeps the imported fc6/fc7 and trains a new fc8 for the folder's
classes; ':small' replaces fc6-fc8 by Dense 256, ReLU, dropout 0.5, Dense N (the notop
files suffice).
--config.optimizer.unfreeze_last_stage=True also trains conv5_*. The imported checkpoint's
preprocessing (its mean RGB; channel order and scale are folded into conv1_1) is used.
"""

from experiments.configs import base
from vgg_jax import models


def get_config(arg: str = 'fc8'):
  """arg: 'HEAD[,VARIANT]', HEAD 'fc8' or 'small', VARIANT 'D' (VGG16, default) or 'E'."""
  head, _, variant = arg.partition(',')
  variant = variant or 'D'
  if head not in ('fc8', 'small') or variant not in models.CONFIGS:
    raise ValueError(f"finetune.py:{arg}: expected 'fc8' or 'small', then optionally "
                     "',D' or ',E'.")
  config = base.get_config()
  config.model.variant = variant
  config.model.num_classes = 0  # 0: as many as class folders.
  config.model.head = 'small' if head == 'small' else 'fc'
  convs = tuple(n for n in models.layer_names(variant) if n.startswith('conv'))
  config.init_layers = convs if head == 'small' else convs + ('fc6', 'fc7')
  config.optimizer.freeze_conv_base = True

  config.data.source = 'folder'
  config.data.eval_split = 'validation'
  config.data.pca_stddev = 0.0
  config.data.device_window = 352  # Hosts decode; the train step resamples (base.py).
  config.global_batch_size = 32
  config.eval_batch_size = 64
  config.num_epochs = 5.0
  config.optimizer.schedule = 'cosine'
  config.optimizer.learning_rate = 1e-3
  config.log_every_steps = 20
  config.eval_every_steps = 200
  config.checkpoint_every_steps = 200
  return config
