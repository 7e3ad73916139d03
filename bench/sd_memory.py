"""Memory of one `erase sd` SFR-on step at full size, counted without a GPU (SDXL, SD v1.4 as the check).

The UNet (SDXL base's, SD 2.1's or SD v1.4's) is built from its config under torch's FakeTensorMode (tensors with shapes and dtypes but no
data: no weights, no compute, no memory) and runs the recipe's step: bf16 autocast over fp32 weights
(Accelerate's mixed precision), the concept-mapping forget step (a no-grad forward on the anchor, a
forward and backward on the forget prompt, the bool mask, clip) then a remain step (forward, backward,
clip), Adam with its fused kernel, after a warm-up step that creates Adam's state. A dispatch mode
records every tensor storage the ops create and when it is freed (Python's reference counting frees
it as on a GPU), so the peak is that of a caching allocator's "allocated" bytes. The Fisher pass is
counted the same way (F_f kept while F_r accumulates, fp32, at the training batch, checkpointed with
the loop).

Autocast runs with the CPU's op policy (the CUDA policy cannot run without a GPU), except that
GroupNorm and LayerNorm run in fp32 as under CUDA's; the check against the H100 measurements of SD
v1.4's step (BENCHMARKS.md, "SD v1.4-sized SFR-on step") says how close that is. Add the frozen components the run keeps on the GPU (VAE and text encoders in fp32; printed).

    OMP_NUM_THREADS=1 python bench/sd_memory.py                      # all settings (about 15 minutes, 1 core)
    python bench/sd_memory.py --settings sdxl-b1-ckpt,sd-v1-b2       # some
"""

from __future__ import annotations

import argparse
import sys
import time
import weakref
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent))
from sd_step_speed import SD_V1_UNET  # noqa: E402

GIB = 2**30
# stabilityai/stable-diffusion-xl-base-1.0, unet/config.json (the keys that differ from the class defaults)
SDXL_UNET = dict(
    sample_size=128, in_channels=4, out_channels=4, layers_per_block=2, block_out_channels=(320, 640, 1280),
    down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
    up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
    transformer_layers_per_block=(1, 2, 10), attention_head_dim=(5, 10, 20), cross_attention_dim=2048,
    use_linear_projection=True, addition_embed_type="text_time", addition_time_embed_dim=256,
    projection_class_embeddings_input_dim=2816, norm_num_groups=32, act_fn="silu",
)
# stabilityai/stable-diffusion-2-1, unet/config.json (768², v-prediction)
SD2_UNET = dict(SD_V1_UNET, sample_size=96, attention_head_dim=(5, 10, 20, 20), cross_attention_dim=1024,
                use_linear_projection=True, upcast_attention=True)
UNETS = {"sdxl": SDXL_UNET, "sd2": SD2_UNET, "sd-v1": SD_V1_UNET}
# H100 80GB, peak allocated GiB of the same step (bench/results/sd_step_speed_h100.jsonl)
MEASURED = {"sd-v1-b2": 14.5, "sd-v1-b8": 21.6, "sd-v1-b8-ckpt": 14.9, "sd-v1-b16-ckpt": 16.0}
DEFAULT_SETTINGS = ("sd-v1-b2,sd-v1-b8,sd-v1-b8-ckpt,sd-v1-b16-ckpt,sd2-b2,"
                    "sdxl-b1,sdxl-b2,sdxl-b1-ckpt,sdxl-b2-ckpt,sdxl-b4-ckpt,sdxl-b1-xattn,sdxl-b1-xattn-ckpt,sdxl-b2-xattn-ckpt")


class Allocator(TorchDispatchMode):
    """Live bytes of every storage created under it (or added), and their peak."""

    def __init__(self):
        super().__init__()
        self.live, self.now, self.peak = {}, 0, 0

    def add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key not in self.live:
            self.live[key] = storage.nbytes()
            self.now += self.live[key]
            self.peak = max(self.peak, self.now)
            weakref.finalize(storage, self._free, key)

    def _free(self, key) -> None:
        self.now -= self.live.pop(key, 0)

    def reset_peak(self) -> None:
        self.peak = self.now

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor):
                self.add(t)
        return out


@contextmanager
def cuda_autocast_norms():
    """GroupNorm and LayerNorm in fp32 under autocast, as CUDA's autocast runs them (the CPU's runs them in
    bf16); what follows them (SiLU, the projections' inputs) then holds fp32 activations as on a GPU."""
    originals = {name: getattr(F, name) for name in ("group_norm", "layer_norm")}

    def in_fp32(function):
        def wrapped(input, *args, **kwargs):
            if not torch.is_autocast_enabled("cpu"):
                return function(input, *args, **kwargs)
            cast = lambda x: x.float() if isinstance(x, torch.Tensor) else x  # noqa: E731
            with torch.autocast("cpu", enabled=False):
                return function(cast(input), *[cast(a) for a in args], **{k: cast(v) for k, v in kwargs.items()})
        return wrapped

    for name, function in originals.items():
        setattr(F, name, in_fp32(function))
    try:
        yield
    finally:
        for name, function in originals.items():
            setattr(F, name, function)


def parse(name: str) -> dict:
    for model in UNETS:
        if name.startswith(model + "-b"):
            parts = name[len(model) + 2:].split("-")
            return {"model": model, "batch": int(parts[0]), "ckpt": "ckpt" in parts,
                    "train": "xattn" if "xattn" in parts else "full"}
    raise SystemExit(f"unknown setting {name!r} (e.g. sdxl-b1-ckpt, sd-v1-b2, sdxl-b1-xattn)")


def count(name: str) -> dict:
    from diffusers import DDPMScheduler, UNet2DConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    from erase.core.fisher import _accumulate
    from erase.core.sfron import GradientMask
    from erase.families import sd, sdxl

    s = parse(name)
    b = s["batch"]
    with FakeTensorMode(), cuda_autocast_norms():
        unet = UNet2DConditionModel(**UNETS[s["model"]])
        trained = sd.select_trainable(unet, s["train"])
        named = {n: p for n, p in unet.named_parameters() if p.requires_grad}
        scheduler = DDPMScheduler(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
        side, width = unet.config.sample_size, unet.config.cross_attention_dim

        def conditioning():
            hidden = torch.randn(b, 77, width)
            return sdxl.pack(hidden, torch.randn(b, 1280), (1024, 1024)) if sdxl.is_xl(unet) else hidden

        forget = (torch.randn(b, 4, side, side), conditioning(), conditioning())
        remain = (torch.randn(b, 4, side, side), conditioning())
        mapping, eps = sd.mapping_loss(scheduler), sd.epsilon_loss(scheduler)
        memory = Allocator()
        for p in unet.parameters():
            memory.add(p)
        weights = memory.now
        autocast = lambda: torch.autocast("cpu", dtype=torch.bfloat16)  # noqa: E731

        if s["ckpt"]:  # erase sd checkpoints the Fisher pass too
            unet.enable_gradient_checkpointing()
        # Fisher pass: F_f done and kept, F_r accumulating
        sums = [{n: torch.zeros_like(p) for n, p in named.items()} for _ in range(2)]
        for t in [t for f in sums for t in f.values()]:
            memory.add(t)
        memory.reset_peak()
        with memory:
            unet.eval()
            with autocast():
                loss = eps(unet, remain).mean()
            loss.backward()
            _accumulate(sums[1], named, squared=True)
            unet.zero_grad(set_to_none=True)
        fisher_peak = memory.peak
        del sums, loss, t  # nothing of the Fisher pass stays referenced

        mask = {n: torch.ones(p.shape, dtype=torch.bool) for n, p in named.items()}
        for m in mask.values():
            memory.add(m)
        unet.train()
        params = list(named.values())
        optimizer = torch.optim.Adam(params, lr=1e-5, fused=True)
        gradient_mask = GradientMask(named, mask)
        with memory:
            for step in range(2):
                if step == 1:
                    memory.reset_peak()
                    optimizer.zero_grad(set_to_none=True)
                    before = memory.now
                    with autocast():
                        loss = mapping(unet, forget).mean()
                    activations = memory.now - before  # what the forward keeps for the backward
                    loss.backward()
                    gradient_mask.apply()
                    torch.nn.utils.clip_grad_norm_(params, 1.0)
                    optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                with autocast():
                    loss = eps(unet, remain).mean()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                optimizer.step()
                del loss
        total = sum(p.numel() for p in unet.parameters())
    return {"setting": name, **s, "parameters": total, "trained": trained, "weights_gib": weights / GIB,
            "grads_gib": trained * 4 / GIB, "adam_gib": trained * 8 / GIB, "mask_gib": trained / GIB,
            "step_peak_gib": memory.peak / GIB, "activations_gib": activations / GIB,
            "fisher_peak_gib": fisher_peak / GIB, "measured_gib": MEASURED.get(name)}


def count_generation(model: str, batch: int) -> float:
    """Peak GiB of one guided denoising step (the UNet on 2 × batch: prompt and unconditional) and the VAE
    decode of the batch, as erase sd's generation runs: bf16 autocast over fp32 weights that require no
    grad meanwhile (sd.frozen: else autocast would keep a bf16 copy of every weight through the batches).
    The text encoders are added as their fp32 bytes (they run once per batch, before)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch._subclasses.fake_tensor import FakeTensorMode

    from erase.families import sd, sdxl

    with FakeTensorMode(), cuda_autocast_norms():
        unet = UNet2DConditionModel(**UNETS[model])
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        side, width = unet.config.sample_size, unet.config.cross_attention_dim
        hidden = torch.randn(2 * batch, 77, width)
        size = (side * 8, side * 8)
        conditioning = sdxl.pack(hidden, torch.randn(2 * batch, 1280), size) if sdxl.is_xl(unet) else hidden
        memory = Allocator()
        for p in list(unet.parameters()) + list(vae.parameters()):
            memory.add(p)
        with memory, sd.frozen(unet, vae), torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
            latents = torch.randn(2 * batch, 4, side, side)
            prediction = sd.predict(unet, latents, torch.tensor([500] * 2 * batch), conditioning)
            del prediction
            image = vae.decode(latents[:batch]).sample
            del image
    text_encoders = sum(n for k, n in frozen_components()[model].items() if k != "vae")
    return (memory.peak + 4 * text_encoders) / GIB


def frozen_components() -> dict:
    """Parameters of the VAE and text encoders the run keeps on the GPU in fp32 (configs of
    stabilityai/stable-diffusion-xl-base-1.0 and stabilityai/stable-diffusion-2-1)."""
    from diffusers import AutoencoderKL
    from torch._subclasses.fake_tensor import FakeTensorMode
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTextModelWithProjection

    def clip(cls, hidden, layers, heads, act):
        return cls(CLIPTextConfig(hidden_size=hidden, intermediate_size=4 * hidden, num_hidden_layers=layers,
                                  num_attention_heads=heads, projection_dim=hidden, hidden_act=act))

    with FakeTensorMode():
        vae = AutoencoderKL(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4,
                            down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)
        models = {"sdxl": {"vae": vae, "text_encoder": clip(CLIPTextModel, 768, 12, 12, "quick_gelu"),
                           "text_encoder_2": clip(CLIPTextModelWithProjection, 1280, 32, 20, "gelu")},
                  "sd2": {"vae": vae, "text_encoder": clip(CLIPTextModel, 1024, 23, 16, "gelu")}}
        return {kind: {name: sum(p.numel() for p in m.parameters()) for name, m in parts.items()}
                for kind, parts in models.items()}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--settings", default=DEFAULT_SETTINGS)
    parser.add_argument("--generation", default="sdxl-4,sdxl-1,sd2-8", help="MODEL-BATCH generation peaks to count")
    args = parser.parse_args(argv)
    names = args.settings.split(",")
    for name in names:
        parse(name)
    for kind, parts in frozen_components().items():
        print(f"{kind} frozen components on the GPU (fp32): " + ", ".join(f"{k} {n / 1e6:.1f}M" for k, n in parts.items())
              + f"; together {sum(parts.values()) * 4 / GIB:.2f} GiB")
    print("| setting | trained weights | weights / grads / Adam / mask (GiB) | activations after the forward (GiB) | step peak (GiB) | "
          "Fisher peak (GiB) | measured H100 (GiB) |")
    print("|---|---|---|---|---|---|---|")
    for name in names:
        started = time.perf_counter()
        r = count(name)
        measured = f"{r['measured_gib']:.1f}" if r["measured_gib"] else "-"
        print(f"| {name} | {r['trained'] / 1e6:,.0f}M of {r['parameters'] / 1e6:,.0f}M | {r['weights_gib']:.1f} / "
              f"{r['grads_gib']:.1f} / {r['adam_gib']:.1f} / {r['mask_gib']:.1f} | {r['activations_gib']:.1f} | "
              f"{r['step_peak_gib']:.1f} | {r['fisher_peak_gib']:.1f} | {measured} |  ({time.perf_counter() - started:.0f} s)",
              flush=True)
    for item in filter(None, args.generation.split(",")):
        model, batch = item.rsplit("-", 1)
        print(f"generation, {model}, batch {batch} (guided, at its size; UNet, VAE and text encoders on the GPU): "
              f"peak {count_generation(model, int(batch)):.1f} GiB", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
