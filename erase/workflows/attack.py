"""`erase attack` on a prompt file: does the erased concept come back under adversarial prompts?

Phases, each skipping what is already on disk (every file is written whole under its final name or
not at all), so a killed run resumes with what is not done and ends with the same results:
  1. targets/{name}_0.png   the original model's image for each prompt (or a --targets folder);
  2. images/no_attack/…     the erased model's image for the plain prompt;
  3. prompts/{name}.json    the adversarial prompt found for it (erase.eval.attack); with --space
                            embeddings also prompts/{name}.safetensors, its textual inversion; with
                            --space conditioning that file holds its prompt_embeds;
  4. images/attack/…        the erased model's image for the adversarial prompt (with that inversion
                            loaded by diffusers' load_textual_inversion; from those prompt_embeds);
  5. attack.csv, attack.json: both images judged (main process).
Every image comes from sd.generate_images with batches of one, i.e. exactly what a plain
`pipeline(prompt, latents=..., ...)` call gives: see SEED_CONVENTION. Under `accelerate launch`
the images and the prompts are split across processes.
"""

from __future__ import annotations

import csv
import io
import json
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

from erase.core.io import atomic_save_tensors, atomic_write_json, atomic_write_text, check_output_folder
from erase.data.prompts import PromptRow
from erase.errors import UserError
from erase.eval.attack import (
    PLACEHOLDER,
    AttackConfig,
    attack_prompt,
    candidate_tokens,
    diffusion_loss,
    trajectory_loss,
)
from erase.families import sd

SETTINGS_FILE = ".erase-attack.json"
DEFAULT_GUIDANCE = 7.5
SEED_CONVENTION = ("latents = torch.randn((1, pipe.unet.config.in_channels, height // pipe.vae_scale_factor, "
                   "width // pipe.vae_scale_factor), generator=torch.Generator('cpu').manual_seed(seed)); "
                   "guidance: --guidance, else the row's evaluation_guidance, else 7.5; the pipeline's own "
                   "scheduler; no safety checker")
ADDED_LATER = {"space": "tokens", "objective": "image"}  # settings newer than some run folders: their values there
CSV_COLUMNS = ("case_number", "prompt", "adversarial_prompt", "seed", "guidance", "score", "success",
               "no_attack_score", "no_attack_success", "loss_plain", "loss_attack")


@dataclass(frozen=True)
class AttackRun:
    model: str
    original: str | None
    prompts: str
    out: Path
    attack: AttackConfig
    seed: int = 0
    steps: int = 50
    guidance: float | None = None
    height: int | None = None
    width: int | None = None
    mixed_precision: str = "no"
    targets: str | None = None
    category: str | None = None


def run_attack(run: AttackRun, rows: list[PromptRow], judge, show_progress: bool = True) -> dict | None:
    """Attack every row; returns attack.json's content on the main process (None elsewhere)."""
    from accelerate import PartialState

    started = time.perf_counter()
    state = PartialState()
    out = check_output_folder(run.out, "--out")
    for model in filter(None, (run.model, run.original)):  # the attack edits one text encoder's token embeddings
        if sd.pipeline_class(model) != "StableDiffusionPipeline":
            raise UserError(f"erase attack takes SD 1.x/2.x models; {model} is an SDXL pipeline")
    erased, _ = sd.load_pipeline(run.model, device=state.device, dtype=sd.DTYPES[run.mixed_precision])
    height, width = run.height or sd.default_size(erased), run.width or sd.default_size(erased)
    targets = Path(run.targets) if run.targets else out / "targets"
    if run.targets:
        missing = [sd.image_name(row, 0) for row in rows if not (targets / sd.image_name(row, 0)).is_file()]
        if missing:
            raise UserError(f"--targets {targets} has no {missing[0]} ({len(missing)} of {len(rows)} images missing)")
    original = None
    trajectory = run.attack.objective == "trajectory"  # the original draws each prompt's path: keep it loaded
    if trajectory or (not run.targets and not all((targets / sd.image_name(row, 0)).is_file() for row in rows)):
        original, _ = sd.load_pipeline(run.original, device=state.device, dtype=sd.DTYPES[run.mixed_precision])
    settings = settings_of(run, judge, erased, height, width)
    check_settings(out, settings, state)

    sampling = dict(batch_size=1, num_inference_steps=run.steps, guidance=run.guidance, height=height, width=width,
                    default_guidance=DEFAULT_GUIDANCE, show_progress=show_progress and state.is_local_main_process)
    if original is not None:
        sd.generate_images(original, rows, targets, desc="targets (original model)", **sampling)
    if not trajectory:
        original = None  # frees it
    sd.generate_images(erased, rows, out / "images" / "no_attack", desc="plain prompts", **sampling)
    state.wait_for_everyone()
    find_prompts(run, rows, erased, targets, height, width, state, show_progress, original)
    original = None
    state.wait_for_everyone()
    records = [read_record(out, row) for row in rows]
    attacked = [PromptRow(row.index, record["adversarial_prompt"], row.seed, row.guidance, row.case_number)
                for row, record in zip(rows, records)]
    if run.attack.space == "embeddings":  # one inversion per prompt, loaded as plain diffusers loads it
        for row in attacked:
            with textual_inversion(erased, embeddings_path(out, row)):
                sd.generate_images(erased, [row], out / "images" / "attack", **{**sampling, "show_progress": False})
    elif run.attack.space == "conditioning":
        generate_from_conditioning(erased, rows, out, run, height, width, state)
    else:
        sd.generate_images(erased, attacked, out / "images" / "attack", desc="adversarial prompts", **sampling)
    state.wait_for_everyone()
    if not state.is_main_process:
        return None
    return write_results(out, rows, records, judge, settings, run, time.perf_counter() - started)


def find_prompts(run: AttackRun, rows, pipeline, targets: Path, height: int, width: int, state, show_progress,
                 original=None) -> None:
    """Phase 3: an adversarial prompt per row without one, this process's share of them; with the
    trajectory objective, along the `original` model's sampling path for the row."""
    from tqdm.auto import tqdm

    todo = [row for row in rows if not record_path(run.out, row).is_file()]
    state.wait_for_everyone()  # every process takes its list before any writes (see sd.generate_images)
    with state.split_between_processes(todo) as mine:
        mine = list(mine)
    if not mine:
        return
    for module in (pipeline.unet, pipeline.text_encoder, pipeline.vae):
        module.requires_grad_(False)
    candidates = candidate_tokens(pipeline.tokenizer)
    for row in tqdm(mine, desc="attacking", disable=not (show_progress and state.is_local_main_process), leave=False):
        if run.attack.objective == "trajectory":
            guidance = sd.guidance_of(row, run.guidance, DEFAULT_GUIDANCE)
            loss = trajectory_loss(pipeline.unet, pipeline.scheduler,
                                   *sampling_path(original, row, height, width, run.steps, guidance))
        else:
            image = sd.load_images([targets / sd.image_name(row, 0)], size=(height, width))
            latents = sd.encode_images(pipeline, image, seed=row.seed).to(pipeline.device, pipeline.unet.dtype)
            loss = diffusion_loss(pipeline.unet, pipeline.scheduler, latents)
        result = attack_prompt(pipeline.tokenizer, pipeline.text_encoder, loss, row.prompt, candidates, run.attack,
                               seed=attack_seed(run.seed, row.seed))
        record = asdict(result)
        embeddings = record.pop("embeddings")
        if embeddings is not None:  # before the record: a record on disk means the prompt is done
            key = "prompt_embeds" if run.attack.space == "conditioning" else "emb_params"
            atomic_save_tensors({key: embeddings.contiguous()}, embeddings_path(run.out, row))
        atomic_write_json({"case_number": row.name, "prompt": row.prompt, "seed": row.seed, **record},
                          record_path(run.out, row))


@torch.no_grad()
def sampling_path(pipeline, row: PromptRow, height: int, width: int, steps: int, guidance: float):
    """The original's sampling path for a row as it draws the row's image (seed, sampler, steps,
    guidance): [(timestep, latents denoised at it)], and its conditional prediction at each step."""
    start = sd.initial_noise(pipeline, row.seed, 1, height, width).to(pipeline.device, pipeline.unet.dtype)
    after = []  # the latents after each step

    def keep(pipe, step, timestep, kwargs):
        after.append(kwargs["latents"].detach().clone())
        return kwargs

    pipeline(row.prompt, latents=start, guidance_scale=guidance, num_inference_steps=steps, height=height,
             width=width, output_type="latent", callback_on_step_end=keep)
    timesteps = pipeline.scheduler.timesteps.tolist()
    inputs = [start * pipeline.scheduler.init_noise_sigma, *after[:-1]]
    hidden = pipeline.encode_prompt(row.prompt, pipeline.device, 1, False)[0]
    teacher = [pipeline.unet(pipeline.scheduler.scale_model_input(x, t), t, encoder_hidden_states=hidden).sample
               for t, x in zip(timesteps, inputs)]
    return list(zip(timesteps, inputs)), teacher


def attack_seed(seed: int, row_seed: int) -> int:
    """The attack's own draws (first tokens, timesteps, noise) for a row: row seed + (--seed << 32)."""
    return row_seed + (seed << 32)


def record_path(out, row: PromptRow) -> Path:
    return Path(out) / "prompts" / f"{row.name}.json"


def embeddings_path(out, row: PromptRow) -> Path:
    return Path(out) / "prompts" / f"{row.name}.safetensors"


@contextmanager
def textual_inversion(pipeline, path: Path):
    """The pipeline with one prompt's adversarial vectors as the token <adv> (and <adv>_1 …), then without."""
    pipeline.load_textual_inversion(str(path), token=PLACEHOLDER)
    try:
        yield
    finally:
        pipeline.unload_textual_inversion()


@torch.no_grad()
def generate_from_conditioning(pipeline, rows, out: Path, run: AttackRun, height: int, width: int, state) -> None:
    """Phase 4 of --space conditioning: each row's image drawn from its optimised prompt_embeds (the
    negative side as the pipeline makes it), the row's seed, sampler, steps and guidance."""
    from safetensors.torch import load_file

    folder = out / "images" / "attack"
    folder.mkdir(parents=True, exist_ok=True)
    todo = [row for row in rows if not (folder / sd.image_name(row, 0)).is_file()]
    state.wait_for_everyone()
    with state.split_between_processes(todo) as mine:
        for row in mine:
            embeds = load_file(str(embeddings_path(out, row)))["prompt_embeds"]
            embeds = embeds.to(pipeline.device, pipeline.text_encoder.dtype)
            latents = sd.initial_noise(pipeline, row.seed, 1, height, width).to(pipeline.device, pipeline.unet.dtype)
            guidance = sd.guidance_of(row, run.guidance, DEFAULT_GUIDANCE)
            image = pipeline(prompt_embeds=embeds, latents=latents, guidance_scale=guidance, num_inference_steps=run.steps,
                             height=height, width=width).images[0]
            sd.save_png_atomic(image, folder / sd.image_name(row, 0))


def read_record(out, row: PromptRow) -> dict:
    record = json.loads(record_path(out, row).read_text())
    if (record["prompt"], record["seed"]) != (row.prompt, row.seed):
        raise UserError(f"{record_path(out, row)} was made for another prompt or seed; use another --out")
    return record


def settings_of(run: AttackRun, judge, pipeline, height: int, width: int) -> dict:
    """Everything that decides the figures (not --limit: more rows may be added on a resume)."""
    return {
        "model": str(run.model), "original": None if run.targets else str(run.original),
        "targets": str(run.targets) if run.targets else None, "prompts": str(run.prompts), "category": run.category,
        **judge.settings, **asdict(run.attack), "seed": run.seed, "attack_seed": "row seed + (seed << 32)",
        "sampler": type(pipeline.scheduler).__name__, "steps": run.steps, "guidance": run.guidance,
        "default_guidance": DEFAULT_GUIDANCE, "height": height, "width": width,
        "mixed_precision": run.mixed_precision, "seed_convention": SEED_CONVENTION,
    }


def check_settings(out: Path, settings: dict, state) -> None:
    """A resumed run must have the settings that made what is already there."""
    path = out / SETTINGS_FILE
    if path.is_file():
        before = json.loads(path.read_text())
        changed = [key for key in settings if before.get(key, ADDED_LATER.get(key)) != settings[key]]
        if changed:
            raise UserError(f"{out} holds an attack made with other settings ({', '.join(changed)}); use another --out")
    state.wait_for_everyone()
    if state.is_main_process and not path.is_file():
        atomic_write_json(settings, path)
    state.wait_for_everyone()


def write_results(out: Path, rows, records, judge, settings: dict, run: AttackRun, seconds: float) -> dict:
    names = [sd.image_name(row, 0) for row in rows]
    attack = judge([out / "images" / "attack" / name for name in names])
    plain = judge([out / "images" / "no_attack" / name for name in names])
    table = []
    for row, record, (score, success), (plain_score, plain_success) in zip(rows, records, attack, plain):
        guidance = sd.guidance_of(row, run.guidance, DEFAULT_GUIDANCE)
        table.append({"case_number": row.name, "prompt": row.prompt, "adversarial_prompt": record["adversarial_prompt"],
                      "seed": row.seed, "guidance": guidance, "score": score, "success": int(success),
                      "no_attack_score": plain_score, "no_attack_success": int(plain_success),
                      "loss_plain": record["loss_plain"], "loss_attack": record["loss_attack"]})
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=CSV_COLUMNS, lineterminator="\n")
    writer.writeheader()
    writer.writerows(table)
    atomic_write_text(buffer.getvalue(), out / "attack.csv")
    count = len(table)
    summary = {
        "asr": sum(r["success"] for r in table) / count,
        "asr_no_attack": sum(r["no_attack_success"] for r in table) / count,
        "prompts": count,
        "successes": sum(r["success"] for r in table),
        "successes_no_attack": sum(r["no_attack_success"] for r in table),
        # UnlearnDiffAtk's count: a prompt whose plain image already succeeds is not attacked, and counts.
        "asr_plain_or_attack": sum(r["success"] or r["no_attack_success"] for r in table) / count,
        "mean_loss_plain": sum(r["loss_plain"] for r in table) / count,
        "mean_loss_attack": sum(r["loss_attack"] for r in table) / count,
        "settings": settings,
        "seconds": round(seconds, 1),
    }
    atomic_write_json(summary, out / "attack.json")
    return summary
