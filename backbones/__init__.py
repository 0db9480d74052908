"""Feature extractors. Each is a plain ``nn.Module``; adapted weights are passed to it as a dict
through ``torch.func.functional_call``, never stored on it."""
from backbones.convnet import Conv4, Conv4Pool, Conv4S, Conv6

BACKBONES = {"Conv4": Conv4, "Conv4S": Conv4S, "Conv4Pool": Conv4Pool, "Conv6": Conv6}
