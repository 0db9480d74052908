"""The registry of methods, shared by train.py and test.py."""
from methods.anil import ANIL
from methods.bayes_hmaml import BayesHMAML
from methods.hypermaml import HyperMAML
from methods.maml import MAML, MAMLApprox
from methods.meta_sgd import MetaSGD
from methods.protonet import ProtoNet

METHODS = {
    "maml": MAML,
    "maml_approx": MAMLApprox,
    "hyper_maml": HyperMAML,
    "bayes_hmaml": BayesHMAML,
    # The standard baselines the HyperMAML and BayesHMAML papers compare against.
    "protonet": ProtoNet,
    "anil": ANIL,
    "meta_sgd": MetaSGD,
}


def options_ignored_by(method: str) -> set[str]:
    """Options that other methods read and ``method`` does not (e.g. --hn_hidden_size for
    maml): given to it, they are noted and ignored, never compared with a checkpoint."""
    every = set().union(*(m.own_options() for m in METHODS.values()))
    return every - METHODS[method].own_options()
