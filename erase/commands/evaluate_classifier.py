"""`erase evaluate classifier IMAGES --classifier PATH --label K`: FA of a folder of generated images.

FA is the share of the images that the classifier labels as K (for images generated for a forgotten
class K: lower is better). Also the protocol's mean probability of K and mean entropy.
"""

from __future__ import annotations

from erase.commands.common import positive_int


def register(kinds) -> None:
    parser = kinds.add_parser("classifier", help="FA: how many images of a folder a classifier labels as class K")
    parser.add_argument("images", help="folder of generated images (searched recursively)")
    parser.add_argument("--classifier", required=True,
                        help="`erase pretrain classifier` output, or a torchvision weights file (with --arch)")
    parser.add_argument("--label", required=True, help="the class the images were generated for: id or class name")
    parser.add_argument("--arch", default=None, help="torchvision architecture of a plain weights file (e.g. resnet34)")
    parser.add_argument("--num-classes", type=positive_int, default=None, help="plain weights: classes (default: inferred)")
    parser.add_argument("--image-size", type=positive_int, default=None, help="classifier input size (plain weights: 224)")
    parser.add_argument("--normalize", choices=["half", "imagenet"], default=None,
                        help="input scaling: half = [-1, 1] (the official CIFAR-10 protocol), imagenet = torchvision's")
    parser.add_argument("--limit", type=positive_int, default=None, help="use the first N images only")
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    parser.set_defaults(func=run_evaluate_classifier)


def run_evaluate_classifier(args) -> int:
    import torch

    from erase.core.io import atomic_write_json
    from erase.errors import UserError
    from erase.eval.classify_images import image_files, load_image_classifier, load_images_uint8, verdicts

    image_files(args.images)  # a missing or empty folder fails before the classifier loads
    device = "cuda" if torch.cuda.is_available() else "cpu"
    classifier = load_image_classifier(args.classifier, arch=args.arch, num_classes=args.num_classes,
                                       image_size=args.image_size, normalize=args.normalize, device=device)
    label = class_id(args.label, classifier)
    if not 0 <= label < classifier.num_classes:
        raise UserError(f"--label must be in [0, {classifier.num_classes - 1}], got {label}")
    images = load_images_uint8(args.images, limit=args.limit)
    result = verdicts(classifier, images, label) | {"images_folder": str(args.images), "classifier": str(args.classifier)}
    if args.out:
        atomic_write_json(result, args.out)
    name = f" ({classifier.classes[label]})" if classifier.classes else ""
    print(f"FA {result['fa']:.3f}: {round(result['fa'] * len(images))} of {len(images)} images labelled {label}{name}; "
          f"mean probability {result['mean_probability']:.3f}, mean entropy {result['mean_entropy']:.3f}")
    return 0


def class_id(text: str, classifier) -> int:
    from erase.errors import UserError

    if text.lstrip("-").isdigit():
        return int(text)
    if classifier.classes and text in classifier.classes:
        return classifier.classes.index(text)
    known = f"; known names: {', '.join(classifier.classes[:10])}" if classifier.classes else ""
    raise UserError(f"--label {text!r} is neither a class id nor a class name of the classifier{known}")
