"""`erase pretrain digits|ddpm|classifier`: the bundled digits models, a class-conditional DDPM, an FA classifier."""

from __future__ import annotations

from erase.commands.common import fraction, positive_float, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser("pretrain", help="train a model to erase from (the bundled digits default, ...)")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    digits = kinds.add_parser("digits", help="the embedded default: digits DDPM + digit classifier (CPU, minutes)")
    digits.add_argument("--out", default="assets", help="folder for digits-ddpm/ and digits-classifier.safetensors")
    digits.add_argument("--steps", type=positive_int, default=None, help="DDPM training steps (default 1500)")
    digits.add_argument("--seed", type=int, default=0)
    digits.set_defaults(func=run_digits)
    register_digits_sd(kinds)
    register_ddpm(kinds)
    register_classifier(kinds)


def run_digits(args) -> int:
    from erase.core.io import check_output_folder
    from erase.workflows.pretrain_digits import DDPM_STEPS, pretrain_digits

    check_output_folder(args.out, "--out")
    info = pretrain_digits(args.out, ddpm_steps=args.steps or DDPM_STEPS, seed=args.seed)
    print(f"classifier test accuracy {info['classifier_test_accuracy']:.3f}; "
          f"DDPM {info['ddpm_parameters']:,} parameters, {info['ddpm_steps']} steps; {info['seconds']} s -> {args.out}")
    return 0


def register_digits_sd(kinds) -> None:
    parser = kinds.add_parser("digits-sd", help="the embedded default of the main job: a tiny text-to-image "
                                                "StableDiffusionPipeline on digits (CPU, minutes)")
    parser.add_argument("--out", default="assets/digits-sd", help="pipeline folder to write (default assets/digits-sd)")
    parser.add_argument("--steps", type=positive_int, default=None, help="UNet training steps (default 2000)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-eval", dest="evaluate", action="store_false",
                        help="skip judging the trained model with the digit classifier")
    parser.set_defaults(func=run_digits_sd)


def run_digits_sd(args) -> int:
    from erase.core.io import check_output_folder
    from erase.workflows.pretrain_digits_sd import UNET_STEPS, pretrain_digits_sd

    check_output_folder(args.out, "--out")
    info = pretrain_digits_sd(args.out, unet_steps=args.steps or UNET_STEPS, seed=args.seed, evaluate=args.evaluate)
    quality = info.get("quality")
    judged = ""
    if quality:
        judged = (f"; digit classifier: training captions {quality['train_mean']:.3f} (worst digit "
                  f"{quality['train_min']:.3f}), held-out paraphrases {quality['heldout_mean']:.3f}")
    print(f"text-to-image digits pipeline, UNet {info['parameters']['unet']:,} parameters, {info['unet_steps']} steps, "
          f"{info['seconds']} s{judged} -> {args.out}")
    return 0


def register_ddpm(kinds) -> None:
    from erase.commands.common import add_mixed_precision, non_negative_int

    parser = kinds.add_parser("ddpm", help="train a class-conditional DDPM (UNet2DModel) with Accelerate, resumable")
    parser.add_argument("--data", required=True, help="image folder (one sub-folder per class) or 'cifar10' on disk")
    parser.add_argument("--data-root", default=None, help="where torchvision-format cifar10 lives (default data/cifar10)")
    parser.add_argument("--preset", default="cifar10", choices=["cifar10", "tiny", "digits"],
                        help="UNet preset: cifar10 is the paper's 35.7M-parameter model (default)")
    parser.add_argument("--steps", type=positive_int, default=None, help="total training steps (cifar10: 800000)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="batch size per process (cifar10: 128)")
    parser.add_argument("--lr", type=positive_float, default=None, help="Adam learning rate (cifar10: 2e-4)")
    parser.add_argument("--ema-decay", type=fraction, default=None, help="EMA decay (cifar10: 0.9999)")
    parser.add_argument("--image-size", type=positive_int, default=None, help="resize/crop images (default: the preset's)")
    parser.add_argument("--checkpoint-every", type=positive_int, default=None, help="steps between checkpoints")
    parser.add_argument("--keep-checkpoints", type=positive_int, default=2, help="checkpoints kept (default 2)")
    parser.add_argument("--no-hflip", dest="hflip", action="store_false", help="no random horizontal flips")
    parser.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--resume", action="store_true", help="continue from the newest checkpoint in --out")
    add_mixed_precision(parser)
    parser.add_argument("--out", required=True, help="run folder: model/, checkpoints/, pretrain.json")
    parser.set_defaults(func=run_ddpm)


def run_ddpm(args) -> int:
    from erase.core.io import check_output_folder
    from erase.workflows.pretrain_ddpm import PretrainConfig, pretrain_ddpm

    check_output_folder(args.out, "--out")
    config = PretrainConfig(
        data=args.data, data_root=args.data_root, preset=args.preset, steps=args.steps, batch_size=args.batch_size,
        lr=args.lr, ema_decay=args.ema_decay, checkpoint_every=args.checkpoint_every,
        keep_checkpoints=args.keep_checkpoints, image_size=args.image_size, hflip=args.hflip, seed=args.seed,
        mixed_precision=args.mixed_precision, workers=args.workers,
    )
    info = pretrain_ddpm(args.out, config, resume=args.resume)
    resumed = f" (resumed from step {info['resumed_from']})" if info["resumed_from"] is not None else ""
    print(f"DDPM {info['parameters']:,} parameters, {info['num_classes']} classes, {info['steps']} steps{resumed}, "
          f"loss {info['final_loss']:.4f}; {info['seconds_this_run']} s -> {args.out}/model")
    return 0


def register_classifier(kinds) -> None:
    from erase.commands.common import add_mixed_precision, non_negative_int

    parser = kinds.add_parser("classifier", help="fine-tune a torchvision ResNet-34 that judges generated images (FA)")
    parser.add_argument("--data", required=True, help="image folder (one sub-folder per class) or 'cifar10' on disk")
    parser.add_argument("--data-root", default=None, help="where torchvision-format cifar10 lives (default data/cifar10)")
    parser.add_argument("--arch", default="resnet34", help="torchvision architecture (default resnet34, the protocol's)")
    parser.add_argument("--init-weights", default=None,
                        help="local ImageNet weights to fine-tune from (safetensors or a state dict); default: from scratch")
    parser.add_argument("--image-size", type=positive_int, default=224, help="input size (default 224, the protocol's)")
    parser.add_argument("--epochs", type=positive_int, default=5)
    parser.add_argument("--batch-size", type=positive_int, default=128)
    parser.add_argument("--lr", type=positive_float, default=0.01, help="SGD learning rate (momentum 0.9, cosine)")
    parser.add_argument("--workers", type=non_negative_int, default=0, help="DataLoader worker processes")
    parser.add_argument("--seed", type=int, default=0)
    add_mixed_precision(parser)
    parser.add_argument("--out", required=True, help="classifier file to write (.safetensors)")
    parser.set_defaults(func=run_classifier)


def run_classifier(args) -> int:
    from erase.core.io import check_output_file
    from erase.workflows.pretrain_classifier import finetune_classifier

    check_output_file(args.out, "--out")
    info = finetune_classifier(
        args.data, args.out, arch=args.arch, init_weights=args.init_weights, image_size=args.image_size,
        epochs=args.epochs, batch_size=args.batch_size, lr=args.lr, data_root=args.data_root, workers=args.workers,
        seed=args.seed, mixed_precision=args.mixed_precision,
    )
    accuracy = info["test_accuracy"]
    accuracy_text = f"test accuracy {accuracy:.3f}" if accuracy is not None else "no test split to measure accuracy"
    print(f"{info['arch']} on {info['num_classes']} classes, {info['epochs']} epochs, {accuracy_text}; "
          f"{info['seconds']} s -> {args.out}")
    return 0
