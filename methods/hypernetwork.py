"""The hypernetworks of HyperMAML and BayesHMAML: from the support set's embeddings, a value
for every parameter of the classifier, per output head ("delta", the update; "logvar",
BayesHMAML's log-variance)."""
from __future__ import annotations

import torch
from torch import nn

Params = dict[str, torch.Tensor]


class HyperNetwork(nn.Module):
    """A trunk of ``n_layers - 1`` linear layers with ReLU, then one linear output head per
    name in ``heads``: with the single head "delta" it is the reference's plain MLP,
    in -> hidden -> ... -> out; BayesHMAML adds a "logvar" head on the same trunk."""

    def __init__(self, width_in: int, hidden: int, width_out: int, n_layers: int,
                 heads: tuple[str, ...] = ("delta",)):
        super().__init__()
        layers: list[nn.Module] = []
        for i in range(n_layers - 1):
            layers += [nn.Linear(width_in if i == 0 else hidden, hidden), nn.ReLU()]
        self.trunk = nn.Sequential(*layers)
        trunk_width = hidden if n_layers > 1 else width_in
        self.heads = nn.ModuleDict({name: nn.Linear(trunk_width, width_out) for name in heads})

    def forward(self, rows: torch.Tensor) -> dict[str, torch.Tensor]:
        hidden = self.trunk(rows)
        return {name: head(hidden) for name, head in self.heads.items()}


class ClassWiseHypernetwork(HyperNetwork):
    """Class-batch input: one hypernetwork shared by the classes reads one row per class and
    writes that class's rows of every classifier layer, so the update is equivariant to the
    order of the classes."""

    def __init__(self, width_in: int, hidden: int, n_layers: int, heads: tuple[str, ...],
                 targets: list[tuple[str, torch.Size]], n_way: int, n_shot: int,
                 aggregation: str):
        per_class = sum(shape.numel() for _, shape in targets) // n_way
        super().__init__(width_in, hidden, per_class, n_layers, heads)
        self.targets, self.n_way, self.n_shot = targets, n_way, n_shot
        self.aggregation = aggregation  # how a class row combines its shots: concat or mean

    def rows(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The input rows from the class-major support embeddings: one per class, its shots
        concatenated or averaged."""
        per_class = embeddings.reshape(self.n_way, self.n_shot, -1)
        if self.aggregation == "mean":
            return per_class.mean(dim=1)
        return per_class.reshape(self.n_way, -1)

    def updates(self, rows: torch.Tensor) -> dict[str, Params]:
        """``rows [n_way, width_in]`` -> for each head, a value per classifier parameter."""
        outputs = {}
        for head, out in self(rows).items():  # [n_way, per-class share of all parameters]
            values, offset = {}, 0
            for name, shape in self.targets:
                share = shape.numel() // self.n_way
                # Class c writes rows c*r .. (c+1)*r - 1 of each layer (r = rows per class).
                values[name] = out[:, offset:offset + share].reshape(shape)
                offset += share
            outputs[head] = values
        return outputs


class ParameterWiseHypernetwork(nn.ModuleDict):
    """Without class-batch input: one hypernetwork per classifier parameter, each reading all
    the support embeddings in one row."""

    def __init__(self, width_in: int, hidden: int, n_layers: int, heads: tuple[str, ...],
                 targets: list[tuple[str, torch.Size]]):
        super().__init__({name.replace(".", "_"): HyperNetwork(width_in, hidden, shape.numel(),
                                                                n_layers, heads)
                          for name, shape in targets})
        self.targets, self.head_names = targets, heads

    def rows(self, embeddings: torch.Tensor) -> torch.Tensor:
        """The one input row: every support embedding, concatenated."""
        return embeddings.reshape(1, -1)

    def updates(self, rows: torch.Tensor) -> dict[str, Params]:
        """``rows [1, width_in]`` -> for each head, a value per classifier parameter."""
        per_name = {name: self[name.replace(".", "_")](rows) for name, _ in self.targets}
        return {head: {name: per_name[name][head].reshape(shape)
                       for name, shape in self.targets} for head in self.head_names}
