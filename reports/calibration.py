"""Calibration of predictive probabilities: ECE, MCE, NLL, Brier score, reliability bins and
temperature scaling.

Definitions follow Guo, Pleiss, Sun, Weinberger, "On Calibration of Modern Neural Networks"
(ICML 2017): predictions are grouped by confidence (the largest probability) into equal-width
bins ((m-1)/M, m/M]; ECE is the count-weighted mean of |accuracy - confidence| over the bins,
MCE its maximum over non-empty bins. The Brier score is the mean over predictions of the
squared distance between the probability vector and the one-hot label (Brier 1950). All take
logits, so that a temperature can divide them first.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F

N_BINS = 15


@dataclass
class ReliabilityBins:
    edges: list[float]        # N_BINS + 1 bin edges from 0 to 1
    counts: list[int]         # predictions per bin
    accuracy: list[float]     # fraction correct per bin (0 where empty)
    confidence: list[float]   # mean confidence per bin (0 where empty)

    @property
    def ece(self) -> float:
        """The count-weighted mean of |accuracy - confidence| over the bins."""
        total = sum(self.counts)
        return float(sum(n / total * abs(a - c)
                         for n, a, c in zip(self.counts, self.accuracy, self.confidence)))


def reliability_bins(logits: torch.Tensor, labels: torch.Tensor, n_bins: int = N_BINS
                     ) -> ReliabilityBins:
    probs = F.softmax(logits.double(), dim=1)
    confidence, predicted = probs.max(dim=1)
    correct = (predicted == labels).double()
    # Bin m holds confidences in ((m-1)/M, m/M]; a confidence of exactly 0 cannot occur.
    index = (torch.ceil(confidence * n_bins).long() - 1).clamp(0, n_bins - 1)
    counts = torch.bincount(index, minlength=n_bins)
    safe = counts.clamp(min=1).double()
    accuracy = torch.bincount(index, weights=correct, minlength=n_bins) / safe
    mean_confidence = torch.bincount(index, weights=confidence, minlength=n_bins) / safe
    edges = torch.linspace(0, 1, n_bins + 1)
    return ReliabilityBins(edges.tolist(), counts.tolist(), accuracy.tolist(),
                           mean_confidence.tolist())


@dataclass
class CalibrationReport:
    accuracy: float  # fraction correct
    ece: float
    mce: float
    nll: float
    brier: float
    mce_count: int = 0  # predictions in the bin the MCE comes from

    def as_dict(self) -> dict:
        return asdict(self)

    def __str__(self) -> str:
        # The MCE is one bin's gap: from a handful of predictions it is mostly chance.
        few = (f" (from a bin of {self.mce_count} prediction{'s' * (self.mce_count != 1)}: "
               "chance, not calibration)" if self.mce_count < FEW_PREDICTIONS else "")
        return (f"ECE {self.ece:.4f}, MCE {self.mce:.4f}{few}, NLL {self.nll:.4f}, "
                f"Brier {self.brier:.4f}")


# A bin with fewer predictions than this says little: its accuracy is uncertain by up to
# +-0.14 (the 95% half-width 1.96 * 0.5 / sqrt(50)), so a large gap there may be chance, not
# miscalibration (the reliability diagram fades such bins; the MCE line says so).
FEW_PREDICTIONS = 50


def calibration_report(logits: torch.Tensor, labels: torch.Tensor, temperature: float = 1.0,
                       n_bins: int = N_BINS) -> CalibrationReport:
    """Accuracy, ECE, MCE, NLL and Brier score of ``softmax(logits / temperature)``."""
    logits = logits.double() / temperature
    bins = reliability_bins(logits, labels, n_bins)
    gaps = [abs(a - c) for a, c in zip(bins.accuracy, bins.confidence)]
    mce, mce_count = max((gap, n) for n, gap in zip(bins.counts, gaps) if n > 0)
    probs = F.softmax(logits, dim=1)
    one_hot = F.one_hot(labels, logits.shape[1]).double()
    return CalibrationReport(
        accuracy=float((probs.argmax(1) == labels).double().mean()),
        ece=bins.ece, mce=float(mce), mce_count=int(mce_count),
        nll=float(F.cross_entropy(logits, labels)),
        brier=float((probs - one_hot).pow(2).sum(1).mean()))


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor) -> float:
    """The temperature T > 0 minimising the NLL of ``softmax(logits / T)`` (fitted on a
    held-out split, then applied to the test predictions).

    log T is unbounded: where the minimum is at T -> infinity (logits that say nothing about
    the labels) or T -> 0 (every prediction right), the result is wherever L-BFGS stops
    (max_iter, tolerances), e.g. T = 263,414 for an untrained model; :func:`temperature_note`
    says so."""
    logits = logits.double()
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.1, max_iter=200, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(logits / log_t.exp(), labels)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


# Fitted temperatures outside this range mean the fit ran away towards 0 or infinity.
SANE_TEMPERATURE = (0.01, 100.0)


def temperature_note(temperature: float) -> str | None:
    """One line saying what a runaway fitted temperature means, or None for a sane one."""
    low, high = SANE_TEMPERATURE
    if temperature > high:
        return (f"note: the fitted temperature T = {temperature:,.6g} is above {high:g}: the "
                "model's validation logits carry almost no information about the labels, so "
                "scaling by T makes every prediction nearly uniform (the scaled calibration "
                "says little about the model)")
    if temperature < low:
        return (f"note: the fitted temperature T = {temperature:,.6g} is below {low:g}: (almost) "
                "every validation prediction is right, so scaling by T makes every prediction "
                "nearly certain (the scaled calibration says little about the model)")
    return None
