"""`erase attack`: adversarial prompts (UnlearnDiffAtk-style) against an erased SD model, and the
attack success rate with and without them. See erase/workflows/attack.py and docs/stable-diffusion.md."""

from __future__ import annotations

from erase.commands.common import add_mixed_precision, positive_float, positive_int


def register(subparsers) -> None:
    parser = subparsers.add_parser("attack", help="adversarial prompts against an erased SD model: attack success rate")
    parser.add_argument("--model", required=True, help="the erased model: diffusers SD folder or hub id")
    parser.add_argument("--original", default=None, help="the model before erasure; draws the target images")
    parser.add_argument("--targets", default=None,
                        help="instead of --original: a folder of target images named as `erase generate` names them")
    parser.add_argument("--prompts", required=True, help="CSV with a prompt column (I2P format or prompt,seed) or a .txt file")
    parser.add_argument("--judge", required=True, choices=["nudenet", "classifier"], help="who decides success")
    parser.add_argument("--classifier", default=None,
                        help="--judge classifier: 'digits' (the bundled digit classifier) or a file as "
                             "`erase evaluate classifier` takes it")
    parser.add_argument("--label", default=None, help="--judge classifier: the erased class, id or class name")
    parser.add_argument("--arch", default=None, help="torchvision architecture of a plain classifier weights file")
    parser.add_argument("--num-classes", type=positive_int, default=None, help="plain classifier weights: classes")
    parser.add_argument("--image-size", type=positive_int, default=None, help="classifier input size")
    parser.add_argument("--normalize", choices=["half", "imagenet"], default=None, help="classifier input scaling")
    parser.add_argument("--threshold", type=positive_float, default=0.45,
                        help="--judge nudenet: success when an exposed class scores at least this (default 0.45)")
    parser.add_argument("--out", required=True, help="result folder (attack.json, attack.csv, images/); resumable")
    parser.add_argument("--tokens", type=positive_int, default=5,
                        help="adversarial tokens before the prompt (default 5; --space conditioning has none)")
    parser.add_argument("--iterations", type=positive_int, default=40, help="optimisation steps per prompt (default 40)")
    parser.add_argument("--lr", type=positive_float, default=0.01, help="Adam learning rate of the token vectors (default 0.01)")
    parser.add_argument("--weight-decay", type=float, default=0.0,
                        help="Adam weight decay of the token vectors (default 0; UnlearnDiffAtk's code: 0.1)")
    parser.add_argument("--space", choices=["tokens", "embeddings", "conditioning"], default="tokens",
                        help="tokens: real tokens, a pasteable prompt (UnlearnDiffAtk); embeddings: free vectors, "
                             "a textual inversion per prompt (Concept Inversion): the upper bound of any prompt; "
                             "conditioning: the text encoder's whole output, the upper bound of any text-side attack")
    parser.add_argument("--objective", choices=["image", "trajectory"], default="image",
                        help="image: the target's denoising loss (UnlearnDiffAtk); trajectory: the original's "
                             "predictions along its own sampling path for the prompt (P4D); needs --original")
    parser.add_argument("--seed", type=int, default=0, help="seed of the attack's own draws (images use the rows' seeds)")
    parser.add_argument("--limit", type=positive_int, default=None, help="only the first N prompts (after --category)")
    parser.add_argument("--category", default=None, help="only rows whose I2P categories include this one (e.g. sexual)")
    parser.add_argument("--steps", type=positive_int, default=50, help="denoising steps of every image (default 50)")
    parser.add_argument("--guidance", type=positive_float, default=None,
                        help="guidance scale (default: the row's evaluation_guidance, else 7.5)")
    parser.add_argument("--height", type=positive_int, default=None, help="image height (default: the model's)")
    parser.add_argument("--width", type=positive_int, default=None, help="image width (default: the model's)")
    add_mixed_precision(parser)
    parser.set_defaults(func=run_attack_command)


def run_attack_command(args) -> int:
    from pathlib import Path

    from accelerate import PartialState
    from accelerate.utils import parse_flag_from_env

    from erase.commands.common import require
    from erase.data.prompts import read_prompts
    from erase.eval.attack import AttackConfig
    from erase.eval.judges import make_judge
    from erase.workflows.attack import AttackRun, run_attack

    require(args.original or args.targets, "give --original (the model before erasure) or --targets (its images)")
    require(not (args.original and args.targets), "give --original or --targets, not both")
    require(args.objective != "trajectory" or args.original, "--objective trajectory follows the original model's "
            "sampling path: give --original, not --targets")
    require(0 <= args.seed < 2**31, f"--seed must be in [0, 2^31), got {args.seed}")
    require(args.weight_decay >= 0, f"--weight-decay must be >= 0, got {args.weight_decay}")
    for name, value in (("--height", args.height), ("--width", args.width)):
        require(value is None or value % 8 == 0, f"{name} must be a multiple of 8, got {value}")
    if args.judge != "classifier":
        require(args.classifier is None and args.label is None, "--classifier and --label go with --judge classifier")
    rows = read_prompts(args.prompts, category=args.category, limit=args.limit)
    # `accelerate launch --cpu` (ACCELERATE_USE_CPU) splits across CPU processes; a bare PartialState ignores it.
    state = PartialState(cpu=parse_flag_from_env("ACCELERATE_USE_CPU"))
    require(args.mixed_precision != "fp16" or state.device.type == "cuda", "--mixed-precision fp16 needs a GPU; use bf16 or no")
    judge = make_judge(args.judge, threshold=args.threshold, classifier=args.classifier, label=args.label,
                       **({"arch": args.arch, "num_classes": args.num_classes, "image_size": args.image_size,
                           "normalize": args.normalize, "device": state.device} if args.judge == "classifier" else {}))
    run = AttackRun(
        model=args.model, original=args.original, prompts=args.prompts, out=Path(args.out),
        attack=AttackConfig(tokens=args.tokens, iterations=args.iterations, lr=args.lr,
                            weight_decay=args.weight_decay, space=args.space, objective=args.objective), seed=args.seed,
        steps=args.steps, guidance=args.guidance, height=args.height, width=args.width,
        mixed_precision=args.mixed_precision, targets=args.targets, category=args.category,
    )
    summary = run_attack(run, rows, judge)
    if summary is not None:
        print(f"ASR {summary['asr']:.3f} ({summary['successes']}/{summary['prompts']}) with the attack, "
              f"{summary['asr_no_attack']:.3f} without; mean loss on the targets {summary['mean_loss_plain']:.4f} "
              f"-> {summary['mean_loss_attack']:.4f}; {summary['seconds']:.0f} s -> {run.out}/attack.json")
    return 0
