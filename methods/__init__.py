"""The registry of methods, shared by train.py and test.py."""
from backbones import BACKBONES
from methods.bayes_hmaml import BayesHMAML
from methods.hypermaml import HyperMAML
from methods.maml import MAML, MAMLApprox

METHODS = {
    "maml": MAML,
    "maml_approx": MAMLApprox,
    "hyper_maml": HyperMAML,
    "bayes_hmaml": BayesHMAML,
}


def build_method(opts):
    """The method named by ``opts.method`` with a fresh backbone ``opts.model``."""
    backbone = BACKBONES[opts.model]()
    return METHODS[opts.method].from_options(opts, backbone)
