"""`erase evaluate fid GEN_DIR REF_DIR`: FID/KID between generated and real images (torch-fidelity).

Inception-v3 (the standard FID) with weights from a local file — --inception-weights, or
torch-fidelity's file already in the torch hub cache; nothing is downloaded. Without them, a
classifier's penultimate features (--features-classifier) give a local, non-standard FID.
"""

from __future__ import annotations

from erase.commands.common import positive_int


def register(kinds) -> None:
    parser = kinds.add_parser("fid", help="FID/KID of a folder of generated images against real ones")
    parser.add_argument("generated", help="folder of generated images (searched recursively)")
    parser.add_argument("reference", help="folder of real images (searched recursively)")
    parser.add_argument("--inception-weights", default=None,
                        help="local Inception weights (torch-fidelity's weights-inception-2015-12-05-6726825d.pth)")
    parser.add_argument("--features-classifier", default=None,
                        help="no Inception: use this classifier's penultimate features (`erase pretrain classifier` output)")
    parser.add_argument("--arch", default=None, help="torchvision architecture of a plain --features-classifier file")
    parser.add_argument("--image-size", type=positive_int, default=None, help="resize and center-crop both sets first")
    parser.add_argument("--no-kid", dest="kid", action="store_false", help="FID only")
    parser.add_argument("--batch-size", type=positive_int, default=64)
    parser.add_argument("--out", default=None, help="also write the result as JSON here")
    parser.set_defaults(func=run_evaluate_fid)


def run_evaluate_fid(args) -> int:
    import torch

    from erase.core.io import atomic_write_json, check_output_file
    from erase.eval.classify_images import image_files, load_image_classifier
    from erase.eval.fid import fid_features, folder_fid_kid

    image_files(args.generated)
    image_files(args.reference)
    if args.out:
        check_output_file(args.out, "--out")
    classifier = None
    if args.features_classifier and not args.inception_weights:
        classifier = load_image_classifier(args.features_classifier, arch=args.arch,
                                           device="cuda" if torch.cuda.is_available() else "cpu")
    extractor, weights, description = fid_features(args.inception_weights, classifier)
    result = folder_fid_kid(args.generated, args.reference, extractor, weights, kid=args.kid,
                            image_size=args.image_size, batch_size=args.batch_size)
    result["features"] = description
    if args.out:
        atomic_write_json(result, args.out)
    kid = f", KID {result['kid']:.4f} ± {result['kid_std']:.4f}" if args.kid else ""
    print(f"FID {result['fid']:.3f}{kid} ({description}; {result['generated']} generated vs {result['reference']} real)")
    return 0
