"""`erase evaluate classifier DIR --classifier digits|PATH [--label K] [--prompts CSV]`: judge generated
images with a classifier.

Labelled images (a `label` column in the prompt CSV, kept by `erase generate` in DIR/manifest.csv):
accuracy per label (share of the images of label L the classifier reads as L) and its mean; with
--label K, K's accuracy is the FA and the mean over the other labels the remaining accuracy — the
evaluation of erasing one object while the others stay. Unlabelled images: all were generated for
--label K and FA is the share read as K (lower is better). Also the protocol's mean probability of K
and mean entropy.
"""

from __future__ import annotations

from pathlib import Path

from erase.commands.common import positive_int

DIGITS_CLASSIFIER = "assets/digits-classifier.safetensors"


def register(kinds) -> None:
    parser = kinds.add_parser(
        "classifier", help="judge generated images with a classifier: accuracy per label, FA of class K",
        description="Judge a folder of generated images with a classifier. With labels (a prompt CSV's label "
                    "column, kept in DIR/manifest.csv by erase generate): accuracy per label, its mean, and with "
                    "--label K the FA of K and the mean accuracy of the other labels. Without labels: every image "
                    "was generated for --label K; FA is the share read as K.")
    parser.add_argument("images", help="folder of generated images (searched recursively)")
    parser.add_argument("--classifier", required=True,
                        help="`digits` (the bundled digit classifier; any image size or colour), an "
                             "`erase pretrain classifier` output, or a torchvision weights file (with --arch)")
    parser.add_argument("--label", default=None,
                        help="the erased class, id or class name: its FA (needed when the images have no labels)")
    parser.add_argument("--prompts", default=None,
                        help="the prompt CSV the images were generated from, with a label column; images "
                             "{case_number|row}_{k}.png take their row's label (default: DIR/manifest.csv)")
    parser.add_argument("--arch", default=None, help="torchvision architecture of a plain weights file (e.g. resnet34)")
    parser.add_argument("--num-classes", type=positive_int, default=None, help="plain weights: classes (default: inferred)")
    parser.add_argument("--image-size", type=positive_int, default=None, help="classifier input size (plain weights: 224)")
    parser.add_argument("--normalize", choices=["half", "imagenet"], default=None,
                        help="input scaling: half = [-1, 1] (the official CIFAR-10 protocol), imagenet = torchvision's")
    parser.add_argument("--limit", type=positive_int, default=None, help="use the first N images only")
    parser.add_argument("--out", default=None,
                        help="also write the result as JSON here: images, per_label_accuracy, per_label_images, "
                             "mean_accuracy; with --label also fa, remaining_accuracy, mean_probability, mean_entropy")
    parser.set_defaults(func=run_evaluate_classifier)


def run_evaluate_classifier(args) -> int:
    import torch

    from erase.core.io import atomic_write_json, check_output_file
    from erase.data.manifest import MANIFEST, image_labels
    from erase.errors import UserError
    from erase.eval.accuracy import per_class_accuracy, remaining_accuracy
    from erase.eval.classify_images import image_files, load_image_classifier, load_images_uint8, verdicts
    from erase.recipes import resolve_path

    files = image_files(args.images)[: args.limit]  # a missing or empty folder fails before the classifier loads
    texts = image_labels(args.images, files, args.prompts)
    if texts is None and args.label is None:
        raise UserError("--label is needed: the images have no labels (no --prompts CSV with a label column, "
                        "no labels in DIR/manifest.csv)")
    if args.out:
        check_output_file(args.out, "--out")
    path = resolve_path(DIGITS_CLASSIFIER) if args.classifier == "digits" else args.classifier
    device = "cuda" if torch.cuda.is_available() else "cpu"
    classifier = load_image_classifier(path, arch=args.arch, num_classes=args.num_classes,
                                       image_size=args.image_size, normalize=args.normalize, device=device)
    label = class_id(args.label, classifier) if args.label is not None else None
    source = str(args.prompts or Path(args.images) / MANIFEST)
    if texts is None:
        targets = torch.full((len(files),), label)
    else:
        ids = {text: class_id(text, classifier, f"the label in {source}") for text in sorted(set(texts))}
        targets = torch.tensor([ids[text] for text in texts])
    if label is not None and not (targets == label).any():
        raise UserError(f"no image is labelled {args.label} in {source}; labels: {', '.join(sorted(set(texts)))}")
    images = load_images_uint8(args.images, limit=args.limit)
    logits = classifier.logits(images)
    predictions = logits.softmax(-1).argmax(-1)
    name = (lambda k: classifier.classes[k]) if classifier.classes else str
    accuracy = per_class_accuracy(predictions, targets, classifier.num_classes)
    result = {
        "images": len(images),
        "per_label_accuracy": {name(k): acc for k, acc in accuracy.items()},
        "per_label_images": {name(k): int((targets == k).sum()) for k in accuracy},
        "mean_accuracy": sum(accuracy.values()) / len(accuracy),
    }
    if label is not None:
        chosen = targets == label
        remaining = remaining_accuracy(accuracy, label) if len(accuracy) > 1 else None
        result |= verdicts(classifier, images[chosen], label, logits=logits[chosen]) | {
            "images": len(images), "remaining_accuracy": remaining}
    result |= {"labels_from": None if texts is None else source,
               "images_folder": str(args.images), "classifier": str(path)}
    if args.out:
        atomic_write_json(result, args.out)
    print(summary(result, label, name, labelled=texts is not None))
    return 0


def summary(result: dict, label: int | None, name, labelled: bool) -> str:
    """The result in a few lines: per-label accuracy, then FA and remaining accuracy."""
    lines = []
    if labelled:
        lines.append("accuracy per label: " + ", ".join(
            f"{key} {acc:.3f} ({result['per_label_images'][key]})" for key, acc in result["per_label_accuracy"].items()))
        lines.append(f"mean accuracy {result['mean_accuracy']:.3f} over {len(result['per_label_accuracy'])} labels")
    if label is not None:
        count = result["per_label_images"][name(label)]
        named = f" ({name(label)})" if name(label) != str(label) else ""
        lines.append(f"FA {result['fa']:.3f}: {round(result['fa'] * count)} of {count} images labelled {label}{named}; "
                     f"mean probability {result['mean_probability']:.3f}, mean entropy {result['mean_entropy']:.3f}")
        if result["remaining_accuracy"] is not None:
            lines.append(f"remaining accuracy {result['remaining_accuracy']:.3f} (mean over the other labels)")
    return "\n".join(lines)


def class_id(text: str, classifier, what: str = "--label") -> int:
    """A class id or class name of the classifier, checked against its number of classes."""
    from erase.errors import UserError

    if text.lstrip("-").isdigit():
        value = int(text)
        if not 0 <= value < classifier.num_classes:
            raise UserError(f"{what} {text!r} is out of range: the classifier's classes are 0..{classifier.num_classes - 1}")
        return value
    if classifier.classes and text in classifier.classes:
        return classifier.classes.index(text)
    known = f"; known names: {', '.join(classifier.classes[:10])}" if classifier.classes else ""
    raise UserError(f"{what} {text!r} is neither a class id nor a class name of the classifier{known}")
