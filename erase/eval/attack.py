"""Adversarial prompts against an erased text-to-image diffusion model (UnlearnDiffAtk-style).

The attack looks for N tokens which, put before a prompt, make the erased model denoise a target
image (the original model's image for that prompt) as well as it can:

    min over the tokens of  E_{t,ε} ‖ε_θ(x_t, c(tokens + prompt)) − target‖²

with target = ε (v for a v-prediction model): the loss by which a diffusion model "recognises" an
image as matching a prompt, so tokens that lower it steer the erased model back to the image.
As in UnlearnDiffAtk (and PEZ before it) the tokens live as continuous vectors in the text encoder's
token-embedding space; each iteration runs the model on their nearest real tokens (cosine) and
applies that gradient to the continuous vectors (Adam, lr 0.01 as UnlearnDiffAtk's code). The result
is a string of real tokens anyone can paste: of the token sets projected at iterations 0, 10, 20, …
and at the end, the one with the lowest loss on fixed evaluation draws (one (t, ε) per iteration is a
noisy guide; the same draws for every set and for the plain prompt make the comparison fair).
No weight decay by default: UnlearnDiffAtk's 0.1 (Adam's coupled L2) outweighs the loss's gradient on
token embeddings, so the tokens drift whatever the loss says (measured in docs/stable-diffusion.md).

Candidate tokens are those whose decoded text tokenizes back to the same single token (whole words,
no special tokens), so `"tok1 tok2 … prompt"` re-tokenizes to exactly the ids the loss saw; the
attack checks this on every string it builds.

space="embeddings" drops the projection: the N vectors stay free (Concept Inversion, Pham et al. 2023,
learns such a word by textual inversion). Nothing a user can type reaches them, so this is an upper
bound on what any prompt can bring back: has the concept left the UNet, or only the words' way to it?
The result is a textual-inversion file (`emb_params`, N×dim) and the prompt `"<adv> prompt"`, which
plain diffusers reads with `pipe.load_textual_inversion(file, token="<adv>")`.

space="conditioning" goes one step further: the whole conditioning the UNet cross-attends to (the
text encoder's 77 × dim output for the prompt) is optimised, starting from the plain prompt's. Every
prompt, inversion or text-encoder change ends as some conditioning, so if this fails no text-side
attack can succeed: the concept has left the UNet itself. The result is `prompt_embeds` for the
pipeline (`pipe(prompt_embeds=...)`), not a prompt.

objective="trajectory" replaces the loss (P4D, Chin et al. 2023): along the original model's own
sampling path for the prompt (the row's seed, sampler, steps and guidance), the erased model's
prediction under the attacked prompt is pulled to the original's under the plain one. Nothing here is specific to Stable Diffusion beyond a
CLIP-style tokenizer and a text encoder with an input-embedding layer; the loss is passed in.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F

from erase.errors import EraseError


@dataclass(frozen=True)
class AttackConfig:
    tokens: int = 5
    iterations: int = 40
    lr: float = 0.01
    weight_decay: float = 0.0
    eval_draws: int = 8  # fixed (t, ε) draws on which token sets and the plain prompt are compared
    select_every: int = 10  # iterations between the token sets compared at the end
    space: str = "tokens"  # tokens: real tokens; embeddings: free vectors (a textual inversion); conditioning
    objective: str = "image"  # image: the target's denoising loss (UnlearnDiffAtk); trajectory: P4D's


@dataclass
class AttackResult:
    adversarial_prompt: str
    token_ids: list[int]
    loss_plain: float  # mean loss of the plain prompt over the fixed evaluation draws
    loss_attack: float  # the same draws, the adversarial prompt (the best of the sets compared)
    losses: list[float] = field(default_factory=list)  # per iteration: projected tokens, that iteration's draw
    seconds: float = 0.0
    embeddings: torch.Tensor | None = None  # space "embeddings": the N vectors of PLACEHOLDER


PLACEHOLDER = "<adv>"  # the textual-inversion token of an embedding-space attack (N vectors: <adv> <adv>_1 …)
SPACES = ("tokens", "embeddings", "conditioning")
OBJECTIVES = ("image", "trajectory")


def candidate_tokens(tokenizer) -> torch.Tensor:
    """Ids whose decoded text is printable and tokenizes back to that one id (sorted)."""
    special = set(tokenizer.all_special_ids)
    ids = sorted(i for i in tokenizer.get_vocab().values() if i not in special)
    texts = [token_text(tokenizer, i) for i in ids]
    encoded = tokenizer(texts, add_special_tokens=False).input_ids
    keep = [i for i, text, back in zip(ids, texts, encoded) if text.isprintable() and text and back == [i]]
    if not keep:
        raise EraseError("no token of the tokenizer survives decoding and re-tokenizing; cannot build a pasteable prompt")
    return torch.tensor(keep)


def token_text(tokenizer, token_id: int) -> str:
    return tokenizer.decode([token_id]).strip()


def adversarial_text(tokenizer, token_ids: list[int], prompt: str) -> str:
    return " ".join([*(token_text(tokenizer, i) for i in token_ids), prompt])


def tokenize(tokenizer, text: str):
    """The 1×L ids and attention mask exactly as the diffusers pipeline tokenizes a prompt (padded, truncated)."""
    return tokenizer(text, padding="max_length", max_length=tokenizer.model_max_length, truncation=True,
                     return_tensors="pt")


def encode(text_encoder, tokens, vectors: torch.Tensor | None = None) -> torch.Tensor:
    """Text-encoder hidden states of `tokens` (as the pipeline computes them); with `vectors`, those
    replace the input embeddings of positions 1..N (right after the start token), differentiably."""
    device = text_encoder.device
    mask = tokens.attention_mask.to(device) if getattr(text_encoder.config, "use_attention_mask", False) else None
    with _input_embeddings(text_encoder, vectors):
        return text_encoder(tokens.input_ids.to(device), attention_mask=mask)[0]


@contextmanager
def _input_embeddings(text_encoder, vectors):
    if vectors is None:
        yield
        return

    def replace(module, inputs, output):
        output = output.clone()
        output[:, 1 : 1 + len(vectors)] = vectors.to(output.dtype)
        return output

    handle = text_encoder.get_input_embeddings().register_forward_hook(replace)
    try:
        yield
    finally:
        handle.remove()


def diffusion_loss(unet, scheduler, latents: torch.Tensor):
    """loss(hidden states, draw) -> scalar: the erased model's training loss on `latents` (the target
    image's) at the timestep and noise drawn from torch.manual_seed(draw). The same draw gives the
    same (t, ε) whatever the prompt, so prompts are compared on equal terms."""
    from erase.families.sd import epsilon_loss

    per_sample = epsilon_loss(scheduler)
    cuda = [latents.device] if latents.is_cuda else []

    def loss(hidden, draw: int) -> torch.Tensor:
        with torch.random.fork_rng(devices=cuda):
            torch.manual_seed(draw)
            return per_sample(unet, (latents, hidden.to(unet.dtype))).mean()

    return loss


def trajectory_loss(unet, scheduler, path: list[tuple[int, torch.Tensor]], teacher: list[torch.Tensor]):
    """loss(hidden states, draw) -> scalar: P4D's objective (Chin et al. 2023). `path` is the original
    model's sampling path for the prompt from the row's seed (each step's timestep and the latents it
    denoises), `teacher` the original's own conditional prediction there; the erased model's prediction on
    the same latents under the attacked conditioning is pulled to it. The draw picks the step. Unlike one
    image's loss at random noise, these are the very latents the judged image passes through."""

    def loss(hidden, draw: int) -> torch.Tensor:
        i = draw % len(path)
        timestep, latents = path[i]
        sample = scheduler.scale_model_input(latents, timestep)
        prediction = unet(sample, timestep, encoder_hidden_states=hidden.to(unet.dtype)).sample
        return F.mse_loss(prediction.float(), teacher[i].float())

    return loss


def attack_prompt(tokenizer, text_encoder, loss_fn, prompt: str, candidates: torch.Tensor,
                  config: AttackConfig, seed: int) -> AttackResult:
    """The adversarial prompt for one prompt and its target (inside `loss_fn`); deterministic in `seed`."""
    if config.space == "embeddings":
        return attack_embeddings(tokenizer, text_encoder, loss_fn, prompt, candidates, config, seed)
    if config.space == "conditioning":
        return attack_conditioning(tokenizer, text_encoder, loss_fn, prompt, config, seed)
    started = time.perf_counter()
    table = text_encoder.get_input_embeddings().weight.detach()
    device = table.device
    candidates = candidates.to(device)
    directions = F.normalize(table[candidates].float(), dim=-1)
    generator = torch.Generator().manual_seed(seed)
    start = torch.randint(len(candidates), (config.tokens,), generator=generator).to(device)
    eval_draws, draws = _draws(generator, config)

    def nearest(vectors) -> list[int]:
        return candidates[(F.normalize(vectors, dim=-1) @ directions.T).argmax(-1)].tolist()

    def tokens_for(token_ids: list[int]):
        tokens = tokenize(tokenizer, adversarial_text(tokenizer, token_ids, prompt))
        if tokens.input_ids[0, 1 : 1 + len(token_ids)].tolist() != token_ids:
            raise EraseError(f"the adversarial tokens {token_ids} do not survive re-tokenizing; cannot attack")
        return tokens

    @torch.no_grad()
    def evaluated(tokens) -> float:
        hidden = encode(text_encoder, tokens)
        return sum(loss_fn(hidden, d).item() for d in eval_draws) / len(eval_draws)

    compared = {}  # token ids -> loss on the evaluation draws
    vectors = table[candidates[start]].float().clone().requires_grad_(True)
    optimizer = torch.optim.Adam([vectors], lr=config.lr, weight_decay=config.weight_decay)
    losses = []
    for i, draw in enumerate(draws):
        token_ids = nearest(vectors.detach())
        if i % config.select_every == 0 and tuple(token_ids) not in compared:
            compared[tuple(token_ids)] = evaluated(tokens_for(token_ids))
        projected = table[token_ids].float().requires_grad_(True)
        loss = loss_fn(encode(text_encoder, tokens_for(token_ids), projected), draw)
        if not torch.isfinite(loss):
            raise EraseError(f"the attack loss became {loss.item()} on {prompt!r}")
        (vectors.grad,) = torch.autograd.grad(loss, [projected])
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        losses.append(loss.item())
    final = tuple(nearest(vectors.detach()))
    if final not in compared:
        compared[final] = evaluated(tokens_for(list(final)))
    best = min(compared, key=compared.get)  # the first of equals: the earliest set
    return AttackResult(adversarial_text(tokenizer, list(best), prompt), list(best), evaluated(tokenize(tokenizer, prompt)),
                        compared[best], losses, time.perf_counter() - started)


def attack_embeddings(tokenizer, text_encoder, loss_fn, prompt: str, candidates: torch.Tensor,
                      config: AttackConfig, seed: int) -> AttackResult:
    """The embedding-space attack: the same start and draws as attack_prompt, the vectors used as they are
    (no projection to real tokens)."""
    started = time.perf_counter()
    table = text_encoder.get_input_embeddings().weight.detach()
    generator = torch.Generator().manual_seed(seed)
    start = candidates[torch.randint(len(candidates), (config.tokens,), generator=generator)].tolist()
    eval_draws, draws = _draws(generator, config)
    # The layout of "<adv> <adv>_1 … prompt" once the textual inversion is loaded: N single tokens, then the
    # prompt; the N start tokens hold the places and their embeddings are replaced by the vectors.
    tokens = tokenize(tokenizer, adversarial_text(tokenizer, start, prompt))
    if tokens.input_ids[0, 1 : 1 + config.tokens].tolist() != start:
        raise EraseError(f"the start tokens {start} do not survive re-tokenizing; cannot attack")
    loss_plain = _mean_loss(loss_fn, encode(text_encoder, tokenize(tokenizer, prompt)), eval_draws)
    best_loss, best, losses = _free_search(table[start].float(), lambda v: encode(text_encoder, tokens, v), loss_fn,
                                           eval_draws, draws, config, prompt)
    return AttackResult(f"{PLACEHOLDER} {prompt}", [], loss_plain, best_loss, losses, time.perf_counter() - started,
                        best.to(table.dtype).cpu())


def attack_conditioning(tokenizer, text_encoder, loss_fn, prompt: str, config: AttackConfig, seed: int) -> AttackResult:
    """The conditioning-space attack: the prompt's text-encoder output plus a free offset (from zero)."""
    started = time.perf_counter()
    eval_draws, draws = _draws(torch.Generator().manual_seed(seed), config)
    with torch.no_grad():
        base = encode(text_encoder, tokenize(tokenizer, prompt)).float()
    best_loss, best, losses = _free_search(torch.zeros_like(base), lambda offset: base + offset, loss_fn, eval_draws,
                                           draws, config, prompt)
    return AttackResult("", [], _mean_loss(loss_fn, base, eval_draws), best_loss, losses, time.perf_counter() - started,
                        (base + best).cpu())


def _draws(generator, config: AttackConfig) -> tuple[list[int], list[int]]:
    """The fixed evaluation draws, then one draw per iteration."""
    eval_draws = torch.randint(2**62, (config.eval_draws,), generator=generator).tolist()
    return eval_draws, torch.randint(2**62, (config.iterations,), generator=generator).tolist()


@torch.no_grad()
def _mean_loss(loss_fn, hidden, eval_draws) -> float:
    return sum(loss_fn(hidden, d).item() for d in eval_draws) / len(eval_draws)


def _free_search(start: torch.Tensor, hidden_of, loss_fn, eval_draws, draws, config: AttackConfig, prompt: str):
    """Adam on a free tensor (no projection): hidden_of(tensor) -> the conditioning. Of the tensors seen every
    `select_every` iterations and at the end, the one with the lowest loss on the evaluation draws (the first
    of equals: the earliest). Returns (that loss, that tensor, the loss of every iteration)."""
    value = start.clone().requires_grad_(True)
    optimizer = torch.optim.Adam([value], lr=config.lr, weight_decay=config.weight_decay)
    compared, losses = [], []  # (loss on the evaluation draws, tensor)
    for i, draw in enumerate(draws):
        if i % config.select_every == 0:
            compared.append((_mean_loss(loss_fn, hidden_of(value.detach()), eval_draws), value.detach().clone()))
        loss = loss_fn(hidden_of(value), draw)
        if not torch.isfinite(loss):
            raise EraseError(f"the attack loss became {loss.item()} on {prompt!r}")
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
    compared.append((_mean_loss(loss_fn, hidden_of(value.detach()), eval_draws), value.detach().clone()))
    best_loss, best = min(compared, key=lambda pair: pair[0])
    return best_loss, best, losses
