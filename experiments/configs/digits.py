"""The default: a narrow VGG-D on scikit-learn's digits, offline, on a CPU.

  python launch.py --workdir=workdirs/digits

Expected (2-core CPU): a couple of minutes including compilation, >= 97% top-1 accuracy
on the 450-image test split (see README for the measured figures).
"""

from experiments.configs import base


def get_config():
  config = base.get_config()
  config.model.num_classes = 10
  config.model.width = 0.25  # 16..128 conv channels.
  config.model.fc_width = 256
  config.model.image_size = 32

  config.data.source = 'digits'
  config.data.name = 'digits'
  config.data.train_split = 'train'
  config.data.eval_split = 'test'
  config.data.scale_min = 32  # 32x32 digits: S = crop = Q.
  config.data.scale_max = 36  # Mild scale jittering.
  config.data.eval_scale = 32
  config.data.random_flip = False  # Flipped digits are other digits.
  config.data.pca_stddev = 0.0  # Gray images.
  config.eval.flip = False  # Test-time flips too.

  config.global_batch_size = 64
  config.eval_batch_size = 450
  config.num_epochs = 30.0
  config.optimizer.schedule = 'cosine'
  config.optimizer.learning_rate = 1e-2
  config.log_every_steps = 50
  config.eval_every_steps = 210
  config.checkpoint_every_steps = 210
  return config
