"""Concept erasure on the bundled text-to-image digits model: prompt sets and the digit-classifier judge.

A recipe with a [digits] section (pipelines/digits-sd-concept.toml) names the digits to forget and
the anchor digit; the forget, anchor and remain prompts are built from the model's caption templates
(erase/data/digit_captions.py) unless the recipe gives them. Explicit forget prompts win, and the
forgotten digits are then the ones they name; their anchors are the same prompts naming the anchor.

Before and after the erasure, images of three labelled prompt sets are judged by the bundled digit
classifier:
  fa                  share of the forget prompts' images still read as their digit;
  fa_paraphrase       the same for held-out paraphrases that no part of the erasure saw;
  remaining_accuracy  mean per-digit accuracy on the other digits' prompts;
  fid                 those images against the real images of the other digits (classifier features).
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from erase.data.digit_captions import concept_prompts, digits_named, swap_digit
from erase.data.digits import load_digits_tensors, to_uint8
from erase.data.images import read_images_uint8
from erase.data.prompts import PromptRow
from erase.errors import UserError

CLASSIFIER = "assets/digits-classifier.safetensors"
IMAGE_SIZE = 16  # the bundled model's images; real digits are upscaled to it (nearest) for FID


def prompt_sets(recipe: dict) -> tuple[dict, dict, dict]:
    """(forget section, remain section, labelled evaluation sets) of a [digits] recipe."""
    digits = recipe["digits"]
    forget = dict(recipe.get("forget", {}))
    remain = dict(recipe.get("remain", {}))
    anchor = _digit(digits.get("anchor", 1), "digits.anchor")
    explicit = forget.get("prompts")
    explicit = [explicit] if isinstance(explicit, str) else list(explicit or [])
    if explicit:
        labels = []
        for prompt in explicit:
            named = digits_named(prompt)
            if len(named) != 1:
                raise UserError(f"forget prompt {prompt!r} must name exactly one digit, as a word or a numeral "
                                f"('a handwritten three', 'the digit 3')")
            labels.append(named.pop())
        forget_digits = sorted(set(labels))
    else:
        wanted = digits.get("forget", [])
        forget_digits = sorted({_digit(d, "digits.forget") for d in ([wanted] if isinstance(wanted, int) else wanted)})
        if not forget_digits:
            raise UserError("digits.forget names no digit to forget")
    if anchor in forget_digits:
        raise UserError(f"the anchor digit {anchor} is also a digit to forget; pick another digits.anchor")
    sets = concept_prompts(forget_digits, anchor)
    if explicit:
        sets["forget"] = list(zip(explicit, labels))
        sets["anchor"] = [(swap_digit(p, anchor), anchor) for p in explicit]
    forget.setdefault("prompts", [p for p, _ in sets["forget"]])
    forget.setdefault("anchor", [p for p, _ in sets["anchor"]])
    if not remain.get("prompts") and not remain.get("prompts_file"):
        remain["prompts"] = [p for p, _ in sets["remain"]]
    evaluation = {name: sets[name] for name in ("forget", "paraphrase", "remain")}
    return forget, remain, evaluation | {"forget_digits": forget_digits}


def _digit(value, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= 9:
        raise UserError(f"{name} must be a digit 0-9, got {value!r}")
    return value


class DigitJudge:
    """Generates the labelled evaluation sets with fixed seeds and scores them with the digit classifier."""

    def __init__(self, sets: dict, samples: int, remain_samples: int, seed: int):
        from erase.eval.classify_images import load_image_classifier
        from erase.recipes import resolve_path

        self.sets, self.samples, self.remain_samples, self.seed = sets, samples, remain_samples, seed
        self.classifier = load_image_classifier(resolve_path(CLASSIFIER))
        self.forget_digits = sets["forget_digits"]
        real, labels = load_digits_tensors("all")
        keep = ~torch.isin(labels, torch.tensor(self.forget_digits))
        upscaled = F.interpolate(real[keep], size=IMAGE_SIZE, mode="nearest").expand(-1, 3, -1, -1)
        self.reference = to_uint8(upscaled)

    def rows(self, name: str) -> tuple[list[PromptRow], torch.Tensor]:
        """Rows of one set (seed = eval seed + index) and the label of each image, in file order."""
        pairs = self.sets[name]
        samples = self.remain_samples if name == "remain" else self.samples
        rows = [PromptRow(index=i, prompt=p, seed=self.seed + i) for i, (p, _) in enumerate(pairs)]
        labels = torch.tensor([label for _, label in pairs for _ in range(samples)])
        return rows, labels

    def score(self, which: str, images: torch.Tensor) -> dict:
        """The figures of one set's images (in file order): fa, fa_paraphrase, or remaining_accuracy with
        per_digit_accuracy."""
        labels = self.rows(which)[1]
        predictions = self.classifier.logits(images).argmax(-1)
        if which != "remain":
            return {"fa" if which == "forget" else "fa_paraphrase": float((predictions == labels).float().mean())}
        per_digit = {int(d): float((predictions[labels == d] == d).float().mean()) for d in labels.unique()}
        return {"remaining_accuracy": sum(per_digit.values()) / len(per_digit),
                "per_digit_accuracy": {str(d): round(a, 4) for d, a in sorted(per_digit.items())}}

    def evaluate(self, generate, out_dir: Path, name: str, score: bool = True) -> dict:
        """generate(rows, folder, samples) -> image paths; returns the judged figures of one model.

        score=False only generates (the other processes of a run: the main one scores and writes).
        """
        from erase.eval.fid import classifier_extractor, fid_kid

        paths = {}
        for which in ("forget", "paraphrase", "remain"):
            samples = self.remain_samples if which == "remain" else self.samples
            paths[which] = generate(self.rows(which)[0], out_dir / "samples" / name / which, samples)
        if not score:
            return {}
        result, images = {}, {}
        for which in ("forget", "paraphrase", "remain"):
            images[which] = (read_images_uint8(paths[which]), self.rows(which)[1])
            result |= self.score(which, images[which][0])
        remain_images = images["remain"][0]
        result["fid"] = fid_kid(remain_images, self.reference, classifier_extractor(self.classifier), kid=False)["fid"]
        save_digit_grid(images, out_dir / f"grid_{name}.png")
        return result


def save_digit_grid(images: dict, path: Path, rows: int = 8) -> None:
    """One column per digit: forgotten digits from their forget prompts, the others from theirs."""
    from erase.eval.report import save_grid

    picked = []
    for r in range(rows):
        for digit in range(10):
            for which in ("forget", "remain"):
                batch, labels = images[which]
                idx = (labels == digit).nonzero().flatten()
                if len(idx):
                    picked.append(batch[idx[(r * 7) % len(idx)]])
                    break
    grid = torch.stack(picked).float() / 127.5 - 1.0
    save_grid(grid, path, nrow=10, scale=4)


def caption_accuracy(pipeline, templates, folder: Path, samples: int = 4, guidance: float = 2.0, steps: int = 20,
                     seed: int = 100_000) -> dict[int, float]:
    """Per digit: share of images generated from `templates` (word and numeral) read as that digit."""
    from erase.data.digit_captions import captions
    from erase.eval.classify_images import load_image_classifier
    from erase.families import sd
    from erase.recipes import resolve_path

    classifier = load_image_classifier(resolve_path(CLASSIFIER))
    pairs = [(text, d) for d in range(10) for text in captions(d, templates)]
    rows = [PromptRow(index=i, prompt=p, seed=seed + i) for i, (p, _) in enumerate(pairs)]
    sd.generate_images(pipeline, rows, folder, samples_per_prompt=samples, batch_size=64, num_inference_steps=steps,
                       guidance=guidance, show_progress=False)
    images = read_images_uint8([Path(folder) / sd.image_name(r, k) for r in rows for k in range(samples)])
    labels = torch.tensor([d for _, d in pairs for _ in range(samples)])
    predictions = classifier.logits(images).argmax(-1)
    return {d: float((predictions[labels == d] == d).float().mean()) for d in range(10)}
