"""`erase pretrain digits`: train the bundled digits DDPM and classifier."""

from __future__ import annotations

from erase.commands.common import positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser("pretrain", help="train a model to erase from (the bundled digits default, ...)")
    kinds = parser.add_subparsers(dest="kind", metavar="KIND")
    kinds.required = True
    digits = kinds.add_parser("digits", help="the embedded default: digits DDPM + digit classifier (CPU, minutes)")
    digits.add_argument("--out", default="assets", help="folder for digits-ddpm/ and digits-classifier.safetensors")
    digits.add_argument("--steps", type=positive_int, default=None, help="DDPM training steps (default 1500)")
    digits.add_argument("--seed", type=int, default=0)
    digits.set_defaults(func=run_digits)


def run_digits(args) -> int:
    from erase.workflows.pretrain_digits import DDPM_STEPS, pretrain_digits

    info = pretrain_digits(args.out, ddpm_steps=args.steps or DDPM_STEPS, seed=args.seed)
    print(f"classifier test accuracy {info['classifier_test_accuracy']:.3f}; "
          f"DDPM {info['ddpm_parameters']:,} parameters, {info['ddpm_steps']} steps; {info['seconds']} s -> {args.out}")
    return 0
