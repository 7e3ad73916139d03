"""`erase sd`: erase a concept from a Stable Diffusion 1.x, 2.x or XL model (defaults: nudity from SD v1.4).

Options fill in the recipe pipelines/sd-v1-4-nudity.toml (pipelines/sdxl-nudity.toml for an SDXL model);
`--set key=value` reaches the rest.
"""

from __future__ import annotations

from erase.commands.common import add_mixed_precision, positive_float, positive_int
from erase.commands.export import lora_rank
from erase.sd import BUNDLED_RECIPES, SDXL_RECIPE  # the bundled model's own recipe; SDXL's settings

DEFAULT_RECIPE = "pipelines/sd-v1-4-nudity.toml"


def register(subparsers) -> None:
    parser = subparsers.add_parser("sd", help="erase a concept from a Stable Diffusion model (SFR-on, or a baseline)")
    parser.add_argument("--model", default=None, help="SD 1.x/2.x or SDXL diffusers folder or hub id "
                                                     "(default CompVis/stable-diffusion-v1-4)")
    parser.add_argument("--recipe", default=None,
                        help="recipe the options fill in (default pipelines/sd-v1-4-nudity.toml; for an SDXL model "
                             "pipelines/sdxl-nudity.toml; for the bundled assets/digits-sd, pipelines/digits-sd-concept.toml)")
    parser.add_argument("--forget-prompt", action="append", default=None, metavar="P",
                        help="prompt of the concept to erase (repeatable; default 'a photo of a nude person')")
    parser.add_argument("--anchor-prompt", action="append", default=None, metavar="A",
                        help="prompt the concept is mapped to (repeatable; default 'a photo of a person wearing clothes')")
    parser.add_argument("--remain-prompt", action="append", default=None, metavar="R",
                        help="prompt of what must be kept (repeatable; default 'a photo of a person wearing clothes')")
    parser.add_argument("--num-images", type=positive_int, default=None, help="forget images and remain images the model generates (default 1000 each)")
    parser.add_argument("--steps", type=positive_int, default=None, help="SFR-on steps (default 1000)")
    parser.add_argument("--out", default="runs/sd", help="run folder: model/, patch.safetensors, metrics.json (default runs/sd)")
    parser.add_argument("--method", choices=["sfron", "ga", "rl", "salun", "esd"], default=None, help="default sfron")
    parser.add_argument("--forget-loss", choices=["mapping", "ascent", "adaptive"], default=None,
                        help="forget objective of sfron/rl/salun/ga (default: mapping; ga: ascent)")
    parser.add_argument("--train", choices=["full", "xattn", "noxattn"], default=None, help="UNet part to erase (default full)")
    parser.add_argument("--gradient-checkpointing", action="store_const", const=True, default=None,
                        help="recompute UNet activations in the backward pass: batch 16 at 512² in ~16 GiB")
    parser.add_argument("--gamma", type=positive_float, default=None, help="saliency threshold γ (default 1)")
    parser.add_argument("--lr", type=positive_float, default=None, help="learning rate (default 1e-5)")
    parser.add_argument("--batch-size", type=positive_int, default=None, help="training batch, global: under accelerate launch each of N processes takes batch/N of "
                             "every batch (a multiple of N; default 2)")
    parser.add_argument("--height", type=positive_int, default=None, help="image height (default: the recipe's, 512; SDXL 1024)")
    parser.add_argument("--width", type=positive_int, default=None, help="image width (default: the recipe's, 512; SDXL 1024)")
    parser.add_argument("--inference-steps", type=positive_int, default=None, help="denoising steps when generating (default 50)")
    parser.add_argument("--fisher-batches", type=positive_int, default=None, help="batches per Fisher diagonal (default 500)")
    parser.add_argument("--eval-samples", type=int, default=None, help="images per prompt before/after (default 8; 0: none)")
    parser.add_argument("--seed", type=int, default=None)
    add_mixed_precision(parser)
    parser.set_defaults(mixed_precision=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="override any recipe value, e.g. --set sfron.forget_alpha=2 (repeatable)")
    parser.add_argument("--export-lora", type=lora_rank, default=False, metavar="R",
                        help="also write DIR/lora-rR.safetensors: the erasure as a rank-R LoRA adapter "
                             "(R or 'full'; see erase export lora)")
    parser.set_defaults(func=run_sd)


def build_recipe(args) -> dict:
    from erase.recipes import apply_overrides, load_recipe, resolve_path

    recipe = load_recipe(resolve_path(args.recipe or default_recipe(args.model)))
    options = {
        ("model", "path"): args.model,
        ("forget", "prompts"): args.forget_prompt,
        ("forget", "anchor"): args.anchor_prompt,
        ("remain", "prompts"): args.remain_prompt,
        ("data", "num_images"): args.num_images,
        ("data", "batch_size"): args.batch_size,
        ("data", "height"): args.height,
        ("data", "width"): args.width,
        ("data", "inference_steps"): args.inference_steps,
        ("eval", "inference_steps"): args.inference_steps,
        ("eval", "samples"): args.eval_samples,
        ("method", "name"): args.method,
        ("method", "forget_loss"): args.forget_loss,
        ("method", "train"): args.train,
        ("method", "gradient_checkpointing"): args.gradient_checkpointing,
        ("sfron", "steps"): args.steps,
        ("sfron", "gamma"): args.gamma,
        ("sfron", "lr"): args.lr,
        ("sfron", "mixed_precision"): args.mixed_precision,
        ("sfron", "seed"): args.seed,
        ("fisher", "batches"): args.fisher_batches,
    }
    for (section, key), value in options.items():
        if value is not None:
            recipe.setdefault(section, {})[key] = value
    if args.method and args.method != "sfron" and args.forget_loss is None:
        recipe["method"].pop("forget_loss", None)  # each method's own default
    if args.forget_prompt is not None:
        recipe["forget"].pop("prompts_file", None)
    if args.remain_prompt is not None:
        recipe["remain"].pop("prompts_file", None)
    recipe.setdefault("output", {})["dir"] = args.out
    return apply_overrides(recipe, args.overrides)


def default_recipe(model: str | None) -> str:
    """The bundled model's own recipe when --model names it, the SDXL recipe for an SDXL model, else the
    SD v1.4 nudity recipe. A model that is not a supported pipeline is refused here, before any work."""
    from erase.families import sd
    from erase.recipes import resolve_path

    if model is None:
        return DEFAULT_RECIPE
    for bundled, recipe in BUNDLED_RECIPES.items():
        if resolve_path(model).resolve() == resolve_path(bundled).resolve():
            return recipe
    local = resolve_path(model)
    kind = sd.pipeline_class(str(local) if local.exists() else model)
    return SDXL_RECIPE if kind == "StableDiffusionXLPipeline" else DEFAULT_RECIPE


def run_sd(args) -> int:
    from erase.commands.run import run_recipe

    recipe = build_recipe(args)
    code = run_recipe(recipe)
    if args.export_lora is not False:
        from accelerate import PartialState

        from erase.lora import export_lora, summary

        if PartialState().is_main_process:  # only the main process writes the run folder
            print(summary(export_lora(recipe["output"]["dir"], args.export_lora)))
    return code
