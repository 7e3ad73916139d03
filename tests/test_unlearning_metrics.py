"""UA/RA/TA/MIA and the gap to retraining, on hand-built outputs with known answers."""

import math

import pytest
import torch
from torch.utils.data import TensorDataset

from erase.eval.unlearning import accuracy, confidence, entropy, gaps, mia_efficacy, unlearning_metrics
from erase.families.classifier import DigitCNN, probabilities


def one_hot_probs(predicted, num_classes=3, sure=0.9):
    """Softmax-like rows that put `sure` on the predicted class and share the rest."""
    rest = (1 - sure) / (num_classes - 1)
    probs = torch.full((len(predicted), num_classes), rest)
    probs[torch.arange(len(predicted)), torch.tensor(predicted)] = sure
    return probs


def confident_on_labels(labels, confidences, num_classes=3):
    """Rows whose probability on the true label is the given confidence."""
    probs = torch.empty(len(labels), num_classes)
    for i, (label, c) in enumerate(zip(labels, confidences)):
        probs[i] = (1 - c) / (num_classes - 1)
        probs[i, label] = c
    return probs, torch.tensor(labels)


def test_accuracy_confidence_and_entropy_by_hand():
    probs = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8], [0.5, 0.5, 0.0]])
    labels = torch.tensor([0, 1, 0])
    assert accuracy(probs, labels) == pytest.approx(2 / 3)  # rows 0 and 2 (argmax picks the first tie)
    assert confidence(probs, labels).tolist() == pytest.approx([0.7, 0.1, 0.5])
    h = entropy(probs)
    assert h[2].item() == pytest.approx(torch.log(torch.tensor(2.0)).item())  # 0·log 0 counts as 0
    assert h[0].item() == pytest.approx(-sum(p * math.log(p) for p in (0.7, 0.2, 0.1)))


def test_ua_ra_ta_on_a_hand_built_case():
    forget = (one_hot_probs([0, 1, 2, 2]), torch.tensor([0, 0, 0, 0]))  # 1 of 4 right -> UA 0.75
    remain = (one_hot_probs([0, 1, 2, 0, 1]), torch.tensor([0, 1, 2, 0, 2]))  # 4 of 5 right -> RA 0.8
    test = (one_hot_probs([1, 1, 2, 0]), torch.tensor([0, 1, 2, 0]))  # 3 of 4 right -> TA 0.75
    metrics = unlearning_metrics(forget, remain, test)
    assert metrics["ua"] == pytest.approx(0.75)
    assert metrics["ra"] == pytest.approx(0.8)
    assert metrics["ta"] == pytest.approx(0.75)
    assert 0.0 <= metrics["mia"] <= 1.0
    kept = (one_hot_probs([1, 2]), torch.tensor([1, 2]))  # class-wise: TA on the remaining classes only
    assert unlearning_metrics(forget, remain, test, test_for_accuracy=kept)["ta"] == pytest.approx(1.0)


def test_mia_separates_confident_members_from_unsure_non_members():
    generator = torch.Generator().manual_seed(0)
    member = confident_on_labels([0] * 200, (0.9 + 0.1 * torch.rand(200, generator=generator)).tolist())
    non_member = confident_on_labels([0] * 100, (0.1 + 0.3 * torch.rand(100, generator=generator)).tolist())
    looks_trained = confident_on_labels([1] * 50, [0.97] * 50)
    looks_unseen = confident_on_labels([2] * 40, [0.2] * 40)
    for feature in ("confidence", "entropy"):
        assert mia_efficacy(member, non_member, looks_trained, feature=feature) == 0.0
        assert mia_efficacy(member, non_member, looks_unseen, feature=feature) == 1.0
    half = (torch.cat([looks_trained[0], looks_unseen[0][:10]]), torch.cat([looks_trained[1], looks_unseen[1][:10]]))
    assert mia_efficacy(member, non_member, half) == pytest.approx(10 / 60)


def test_mia_is_about_half_on_a_model_that_never_saw_the_distinction():
    """An untrained CNN treats 'members', 'non-members' and D_f alike: the attack can only guess.

    One attack on pure noise swings widely, so the efficacy is averaged over several random
    three-way splits; more members than non-members also checks the balancing subsample (an
    unbalanced attack calls nearly everything a member, efficacy near 0).
    """
    from erase.data.digits import load_digits_tensors

    images, labels = load_digits_tensors("all")
    model = DigitCNN().eval()
    probs, labels = probabilities(model, TensorDataset(images, labels))
    efficacies = []
    for seed in range(12):
        order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(seed))
        member, non_member, target = order[:900], order[900:1300], order[1300:]
        efficacies.append(
            mia_efficacy((probs[member], labels[member]), (probs[non_member], labels[non_member]),
                         (probs[target], labels[target]), seed=seed)
        )
    assert sum(efficacies) / len(efficacies) == pytest.approx(0.5, abs=0.1)


def test_mia_rejects_an_unknown_feature():
    data = confident_on_labels([0, 1], [0.5, 0.6])
    with pytest.raises(ValueError, match="feature"):
        mia_efficacy(data, data, data, feature="loss")


def test_gaps_to_the_retrained_model():
    metrics = {"ua": 0.10, "ra": 0.95, "ta": 0.90, "mia": 0.30}
    retrained = {"ua": 0.05, "ra": 1.00, "ta": 0.92, "mia": 0.20}
    per_metric, average = gaps(metrics, retrained)
    assert per_metric == pytest.approx({"ua": 0.05, "ra": 0.05, "ta": 0.02, "mia": 0.10})
    assert average == pytest.approx(0.055)
    assert gaps(retrained, retrained)[1] == 0.0
