"""Plain-PyTorch reference models: the demo, the tests and the benchmarks share them.

No weights are downloaded: every model is built from its architecture with a fixed seed, so
results are reproducible offline.
"""

from kiln.models.cnn import SmallCNN
from kiln.models.encoder import EncoderConfig, TransformerEncoder
from kiln.models.mlp import MLP
from kiln.models.mobilenet import mobilenet_v2
from kiln.models.multi_io import TwoHeads
from kiln.models.resnet import resnet18
from kiln.models.zoo import ZOO

__all__ = [
    "MLP",
    "SmallCNN",
    "TwoHeads",
    "ZOO",
    "EncoderConfig",
    "TransformerEncoder",
    "mobilenet_v2",
    "resnet18",
]
