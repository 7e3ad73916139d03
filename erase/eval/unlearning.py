"""Classifier-unlearning metrics: UA, RA, TA, MIA-efficacy, and the gap to a retrained model.

UA = 1 − accuracy on the forget set D_f; RA = accuracy on the remain set D_r; TA = test accuracy.
MIA-efficacy follows the SalUn / SFR-on evaluation code: an RBF SVC (C=3, gamma="auto") learns to
tell members (a random subset of D_r, as large as the test set) from non-members (the test set)
from one per-sample feature of the model's softmax output — the confidence on the true label, or
the prediction entropy — and is applied to D_f; the efficacy is the share of D_f it calls a
non-member. Higher means D_f looks less like training data. All values are fractions in [0, 1].
"""

from __future__ import annotations

import numpy as np
import torch

METRICS = ("ua", "ra", "ta", "mia")
MIA_FEATURES = ("confidence", "entropy")


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of samples whose most probable class is the label."""
    if len(labels) == 0:
        raise ValueError("accuracy of an empty set")
    return float((probs.argmax(1) == labels).float().mean())


def confidence(probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Probability the model gives to the true label."""
    return probs.gather(1, labels[:, None].long()).squeeze(1)


def entropy(probs: torch.Tensor, labels: torch.Tensor | None = None) -> torch.Tensor:
    """Shannon entropy of the predicted distribution (0·log 0 = 0)."""
    return -torch.where(probs > 0, probs * probs.clamp_min(1e-45).log(), torch.zeros_like(probs)).sum(1)


def mia_efficacy(
    member: tuple[torch.Tensor, torch.Tensor],
    non_member: tuple[torch.Tensor, torch.Tensor],
    target: tuple[torch.Tensor, torch.Tensor],
    feature: str = "confidence",
    seed: int = 0,
) -> float:
    """Share of `target` samples that a member/non-member attack calls non-members.

    Each argument is (softmax probabilities, labels). Members are subsampled (seeded) to the number
    of non-members so the attack sees balanced classes, as in SalUn's evaluation.
    """
    from sklearn.svm import SVC

    if feature not in MIA_FEATURES:
        raise ValueError(f"unknown MIA feature {feature!r}; choose one of {', '.join(MIA_FEATURES)}")
    extract = confidence if feature == "confidence" else entropy
    member_probs, member_labels = member
    if len(member_labels) > len(non_member[1]):
        chosen = torch.randperm(len(member_labels), generator=torch.Generator().manual_seed(seed))[: len(non_member[1])]
        member_probs, member_labels = member_probs[chosen], member_labels[chosen]
    x_member = extract(member_probs, member_labels)
    x_non_member = extract(*non_member)
    features = torch.cat([x_member, x_non_member]).double().numpy().reshape(-1, 1)
    is_member = np.concatenate([np.ones(len(x_member)), np.zeros(len(x_non_member))])
    attack = SVC(C=3, gamma="auto", kernel="rbf")
    attack.fit(features, is_member)
    predicted = attack.predict(extract(*target).double().numpy().reshape(-1, 1))
    return float(1.0 - predicted.mean())


def unlearning_metrics(
    forget: tuple[torch.Tensor, torch.Tensor],
    remain: tuple[torch.Tensor, torch.Tensor],
    test: tuple[torch.Tensor, torch.Tensor],
    mia_feature: str = "confidence",
    seed: int = 0,
    test_for_accuracy: tuple[torch.Tensor, torch.Tensor] | None = None,
) -> dict[str, float]:
    """{ua, ra, ta, mia} from (probabilities, labels) on D_f, D_r and the test set.

    `test_for_accuracy` replaces the test set for TA only (class-wise forgetting measures TA on the
    remaining classes; the attack still uses the whole test set as non-members).
    """
    return {
        "ua": 1.0 - accuracy(*forget),
        "ra": accuracy(*remain),
        "ta": accuracy(*(test_for_accuracy or test)),
        "mia": mia_efficacy(remain, test, forget, feature=mia_feature, seed=seed),
    }


def gaps(metrics: dict[str, float], reference: dict[str, float]) -> tuple[dict[str, float], float]:
    """Per-metric |metric − retrained| and their mean (the 'average gap'; lower is closer to retraining)."""
    per_metric = {name: abs(metrics[name] - reference[name]) for name in METRICS}
    return per_metric, sum(per_metric.values()) / len(per_metric)
