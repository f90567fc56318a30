"""VGG on CIFAR-10 (TFDS), one GPU: cifar10.py[:VARIANT].

  python launch.py --workdir=workdirs/cifar10_D --config=experiments/configs/cifar10.py:D

32x32 inputs (fc6 sees a 1x1 map), fc_width 512, S jittered in [32, 40], flips, batch 128,
cosine schedule over 60 epochs. Downloads CIFAR-10 through TFDS on first use.
"""

from experiments.configs import base


def get_config(variant: str = 'D'):
  config = base.get_config()
  config.model.variant = variant
  config.model.num_classes = 10
  config.model.fc_width = 512
  config.model.image_size = 32

  config.data.source = 'tfds'
  config.data.name = 'cifar10'
  config.data.download = True  # 160 MB, allowed.
  config.data.eval_split = 'test'
  config.data.scale_min = 32
  config.data.scale_max = 40
  config.data.eval_scale = 32
  config.data.pca_stddev = 0.0

  config.global_batch_size = 128
  config.eval_batch_size = 1000
  config.num_epochs = 60.0
  config.optimizer.schedule = 'cosine'
  config.optimizer.learning_rate = 0.05
  config.log_every_steps = 100
  config.eval_every_steps = 390  # ~1 epoch.
  config.checkpoint_every_steps = 390
  return config
