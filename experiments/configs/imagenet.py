"""The paper's ImageNet recipe (Sec. 3.1) for one configuration: imagenet.py:VARIANT.

  python launch.py --workdir=workdirs/imagenet_D --config=experiments/configs/imagenet.py:D \\
      --config.data.data_dir=/data/tfds --config.model.dtype=bfloat16

Full width, 224x224 crops, batch 256, SGD momentum 0.9, weight decay 5e-4, lr 1e-2
divided by 10 when validation top-1 error stalls (3 times at most), 74 epochs.
Training scale S=256 fixed; for scale jittering S ~ U[256, 512] add
--config.data.scale_max=512 --config.data.eval_scale=384 (Table 3's last column).
Deeper nets can warm-start from a finished net A with --config.init_from=workdirs/imagenet_A.
Expected (Table 3, S=256, Q=256): top-1/top-5 error A 29.6/10.4, B 28.7/9.9, C 28.1/9.4,
D 27.0/8.8, E 27.3/9.0.
"""

from experiments.configs import base


def get_config(variant: str = 'D'):
  config = base.get_config()
  config.model.variant = variant
  config.data.source = 'tfds'
  config.data.name = 'imagenet2012'
  config.data.mean_rgb = (123.68, 116.779, 103.939)  # The released nets' training mean.
  # Hosts only decode; the step resamples 224 crops from windows of up to 352 px (most
  # ImageNet photos at S >= 256; bigger ones are cropped on the host).
  config.data.device_window = 352
  config.eval_every_steps = 5000  # ~1 epoch at batch 256 (5,004 steps).
  config.checkpoint_every_steps = 1000
  return config
