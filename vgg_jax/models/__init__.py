"""The net: Table 1 as data, the VGG module, its layers and CPU kernels, Table 2.

  vgg        the layer table (layer_table: name, kind, what each step owns) and the one
             Flax module that loops over it; create_model, init_variables, counts
  layers     conv, LRN, pooling and the fused conv steps the module is built from
  cpu_ops    the CPU formulations of conv (im2col patches) that make CPU steps fast
  table2     Table 2 (weight layers, parameters, GMACs) reproduced: python -m vgg_jax.models

`from vgg_jax import models; models.VGG(variant='D')`: the names below are the net's API.
"""

from vgg_jax.models.vgg import BN_EPSILON
from vgg_jax.models.vgg import BN_MOMENTUM
from vgg_jax.models.vgg import check_fields
from vgg_jax.models.vgg import CONFIGS
from vgg_jax.models.vgg import count_params
from vgg_jax.models.vgg import create_model
from vgg_jax.models.vgg import DTYPES
from vgg_jax.models.vgg import FC_WIDTH
from vgg_jax.models.vgg import feature_names
from vgg_jax.models.vgg import FIELD_RULES
from vgg_jax.models.vgg import forward_macs
from vgg_jax.models.vgg import HEADS
from vgg_jax.models.vgg import init_variables
from vgg_jax.models.vgg import Layer
from vgg_jax.models.vgg import layer_names
from vgg_jax.models.vgg import layer_table
from vgg_jax.models.vgg import LRN_VARIANTS
from vgg_jax.models.vgg import MIN_IMAGE_SIZE
from vgg_jax.models.vgg import norm_names
from vgg_jax.models.vgg import NUM_POOLS
from vgg_jax.models.vgg import param_shapes
from vgg_jax.models.vgg import positive_int
from vgg_jax.models.vgg import STAGE_CHANNELS
from vgg_jax.models.vgg import stage_channels
from vgg_jax.models.vgg import VGG
from vgg_jax.models.vgg import WEIGHT_KINDS
