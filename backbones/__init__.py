"""Feature extractors. Each is a plain ``nn.Module``; adapted weights are passed to it as a dict
through ``torch.func.functional_call``, never stored on it."""
from backbones.conv4 import Conv4, Conv4S

BACKBONES = {"Conv4": Conv4, "Conv4S": Conv4S}
