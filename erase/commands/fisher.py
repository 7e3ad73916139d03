"""`erase fisher` and `erase mask`: SFR-on's two cached steps, computed once and reused for any γ.

`erase fisher RECIPE.toml --out DIR` computes the forget and remain Fisher diagonals of a
class-conditional DDPM recipe with the same batches and seed as `erase run`, and saves
DIR/fisher_forget.safetensors and DIR/fisher_remain.safetensors; `erase run RECIPE --out DIR
--set fisher.reuse=true` then skips the pass. Under `accelerate launch` every Fisher batch is split
across the processes (erase.core.sharding): the same diagonals, each process doing 1/N of the work.
`erase mask --fisher-dir DIR --gamma G --out FILE` turns the two diagonals into the bool mask for
threshold γ and prints how much it keeps.
"""

from __future__ import annotations

import time
from pathlib import Path

from erase.commands.common import non_negative_int, positive_float, positive_int


def register(subparsers) -> None:
    fisher = subparsers.add_parser(
        "fisher", help="compute and cache the forget/remain Fisher diagonals of a recipe (DDPM class recipes)"
    )
    fisher.add_argument("recipe", help="path of a recipe TOML file (family ddpm, task class)")
    fisher.add_argument("--out", required=True, help="folder for fisher_forget/fisher_remain.safetensors")
    fisher.add_argument(
        "--batches", type=positive_int, default=None, help="batches per Fisher (default: the recipe's fisher.batches)"
    )
    fisher.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override a recipe value, e.g. --set forget.class=5 (repeatable)")
    fisher.set_defaults(func=run_fisher)

    mask = subparsers.add_parser("mask", help="turn cached Fisher diagonals into SFR-on's bool saliency mask")
    mask.add_argument("--fisher-dir", required=True, help="folder written by `erase fisher`")
    mask.add_argument("--gamma", type=positive_float, default=1.0, help="keep weights with F_f/F_r >= γ (default 1)")
    mask.add_argument("--out", required=True, help="mask file to write (.safetensors, bool tensors)")
    mask.add_argument("--top", type=non_negative_int, default=5, help="how many tensors to list (default 5)")
    mask.set_defaults(func=run_mask)


def run_fisher(args) -> int:
    import torch
    from accelerate import Accelerator

    from dataclasses import asdict

    from erase.core.fisher import fisher_diagonal
    from erase.core.io import check_output_folder
    from erase.core.methods import FisherCache
    from erase.errors import UserError
    from erase.families import ddpm
    from erase.recipes import apply_overrides, load_recipe
    from erase.workflows import ddpm_class

    recipe = load_recipe(args.recipe)
    if args.batches is not None:  # flags fill the recipe; --set is applied last and wins
        recipe.setdefault("fisher", {})["batches"] = args.batches
    recipe = apply_overrides(recipe, args.overrides)
    key = (recipe.get("family"), recipe.get("task", "class"))
    if key != ("ddpm", "class"):
        raise UserError(f"erase fisher supports DDPM class recipes (family ddpm, task class), not {key[0]}/{key[1]}")
    settings = ddpm_class.read(recipe)
    out_dir = check_output_folder(args.out, "--out")
    config, forget_class = settings.sfron, settings.forget.forget_class
    num_batches, clip = settings.fisher.batches or None, settings.fisher.clip or None  # 0: a full pass; 0: no clip
    if forget_class is None:
        raise UserError("the recipe has no forget.class")
    pipeline = ddpm.load_or_build_pipeline(asdict(settings.model))
    if not 0 <= forget_class < pipeline.num_classes:
        raise UserError(f"forget.class must be in [0, {pipeline.num_classes - 1}], got {forget_class}")

    accelerator = Accelerator(cpu=pipeline.device.type == "cpu")
    started = time.perf_counter()
    images, labels = ddpm_class.training_data(settings.data, pipeline)
    batch_size = settings.data.batch_size
    # Same loaders, seeds and order as the workflow, so a single process caches what `erase run` computes.
    forget_batches, remain_batches = ddpm_class.class_batches(settings.data, images, labels, forget_class, config.seed)
    unet = pipeline.unet.to(accelerator.device).requires_grad_(True)
    loss_fn = ddpm_class.fisher_loss(settings.fisher, pipeline)
    used = {name: min(num_batches or len(batches), len(batches))
            for name, batches in (("forget", forget_batches), ("remain", remain_batches))}
    torch.manual_seed(config.seed)  # as erase run seeds its Fisher pass
    show = accelerator.is_local_main_process
    fisher_forget = fisher_diagonal(
        unet, loss_fn, forget_batches, accelerator, num_batches=num_batches, desc="fisher (forget)", show_progress=show,
        clip=clip,
    )
    fisher_remain = fisher_diagonal(
        unet, loss_fn, remain_batches, accelerator, num_batches=num_batches, desc="fisher (remain)", show_progress=show,
        clip=clip,
    )
    seconds = time.perf_counter() - started
    if accelerator.is_main_process:
        # The key `erase run --set fisher.reuse=true` checks before it reads the diagonals back.
        data = {"forget_class": forget_class, "data": asdict(settings.data)}
        key = ddpm_class.fisher_key(unet, data, settings.fisher, config.seed)
        weights = sum(t.numel() for t in fisher_forget.values())
        info = {
            "model": recipe["model"].get("path") or "random_init", "forgotten_class": forget_class,
            "forget_batches": used["forget"], "remain_batches": used["remain"], "batch_size": batch_size,
            "processes": accelerator.num_processes, "seed": config.seed, "weights": weights,
            "seconds": round(seconds, 2),
        }
        FisherCache(out_dir, key).save(fisher_forget, fisher_remain, info)
        print(f"Fisher diagonals of {weights:,} weights over {used['forget']} forget + {used['remain']} remain batches "
              f"({accelerator.num_processes} process(es), {seconds:.1f} s) -> {out_dir}")
    accelerator.wait_for_everyone()
    return 0


def run_mask(args) -> int:
    from erase.core.fisher import load_fisher
    from erase.core.io import check_output_file
    from erase.core.methods import FORGET_FILE, REMAIN_FILE
    from erase.core.saliency import saliency_mask, save_mask
    from erase.errors import UserError

    fisher_dir, out = Path(args.fisher_dir), check_output_file(args.out, "--out")
    paths = [fisher_dir / FORGET_FILE, fisher_dir / REMAIN_FILE]
    for path in paths:
        if not path.is_file():
            raise UserError(f"no {path.name} in {fisher_dir}; compute it with `erase fisher RECIPE --out {fisher_dir}`")
    try:
        fisher_forget, fisher_remain = (load_fisher(p) for p in paths)
        mask = saliency_mask(fisher_forget, fisher_remain, args.gamma)
    except ValueError as error:
        raise UserError(str(error)) from None
    save_mask(mask, out, metadata={"gamma": str(args.gamma)})
    print(describe_mask(mask, args.gamma, args.top))
    print(f"-> {out}")
    return 0


def describe_mask(mask: dict, gamma: float, top: int) -> str:
    """The kept fraction overall, then the `top` tensors holding the most kept weights."""
    from erase.core.saliency import mask_stats

    stats = mask_stats(mask)
    lines = [f"γ = {gamma:g}: kept {stats['fraction']:.2%} of the weights ({stats['kept']:,} of {stats['total']:,})"]
    kept = {name: int(m.sum()) for name, m in mask.items()}
    ranked = sorted(kept, key=lambda name: (-kept[name], name))[:top]
    if ranked:
        width = max(len(name) for name in ranked)
        lines.append("tensors holding the most kept weights:")
        for name in ranked:
            size = mask[name].numel()
            lines.append(f"  {name.ljust(width)}  {kept[name]:>9,} of {size:>9,}  ({kept[name] / size:.2%})")
    return "\n".join(lines)
