"""Cost of `erase attack` per prompt at SD v1.4 size, estimated from counted FLOPs and aten ops.

Builds SD v1.4's UNet (bench/sd_step_speed.py's SD_V1_UNET), CLIP ViT-L/14's text encoder and the SD
VAE on the meta device (no weights, no memory, CPU only, seconds), and counts with torch's
FlopCounterMode and a dispatch counter, at batch 1:
  * one image: `steps` UNet forwards on the guided pair (batch 2) + one VAE decode; a prompt makes three
    (the original's target, the erased model's plain and adversarial images) + one VAE encode (target);
  * the attack: `iterations` × (UNet forward + backward to its text input, text encoder forward +
    backward to its input embeddings; weights frozen) + 8 evaluation forwards for the plain prompt and
    for each token set compared (at most iterations / 10 + 1 of them: 48 forwards at 40 iterations).
Two estimates of the seconds: FLOPs / a sustained throughput (--tflops), and ops × the host dispatch
time per op (--us-per-op; ~20 µs measured on the H100 machine, BENCHMARKS.md "SD v1.4-sized SFR-on
step"): at batch 1 the slower of the two is the likelier. Both are estimates, not measurements.

    python bench/attack_flops.py [--steps 50] [--iterations 40] [--size 512] [--tflops 100] [--us-per-op 20]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils.flop_counter import FlopCounterMode

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from sd_step_speed import SD_V1_UNET  # noqa: E402

from erase.eval.attack import AttackConfig  # noqa: E402

CLIP_L14_TEXT = dict(hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12,
                     max_position_embeddings=77, vocab_size=49408, projection_dim=768, hidden_act="quick_gelu")
SD_VAE = dict(block_out_channels=(128, 256, 512, 512), layers_per_block=2, latent_channels=4, sample_size=512,
              down_block_types=("DownEncoderBlock2D",) * 4, up_block_types=("UpDecoderBlock2D",) * 4)


class OpCounter(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops += 1
        return func(*args, **(kwargs or {}))


def count(fn) -> tuple[float, int]:
    """(TFLOP, aten ops) of fn()."""
    flops = FlopCounterMode(display=False)
    with flops, OpCounter() as ops:
        fn()
    return flops.get_total_flops() / 1e12, ops.ops


def evaluation_forwards(iterations: int) -> int:
    """The plain prompt and every token set compared at the end, each on the fixed evaluation draws."""
    config = AttackConfig()
    return config.eval_draws * (len(range(0, iterations, config.select_every)) + 2)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--iterations", type=int, default=40)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--tflops", type=float, default=100.0, help="sustained TFLOP/s assumed for the FLOP estimate")
    parser.add_argument("--us-per-op", type=float, default=20.0, help="host dispatch time per aten op (µs)")
    args = parser.parse_args()
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    with torch.device("meta"):
        unet = UNet2DConditionModel(**SD_V1_UNET).requires_grad_(False)
        text_encoder = CLIPTextModel(CLIPTextConfig(**CLIP_L14_TEXT)).requires_grad_(False)
        vae = AutoencoderKL(**SD_VAE).requires_grad_(False)
    side = args.size // 8
    meta = dict(device="meta")
    latent = lambda n: torch.randn(n, 4, side, side, **meta)  # noqa: E731
    t = torch.tensor([500], **meta)
    ids = torch.zeros(1, 77, dtype=torch.long, **meta)

    def unet_backward():
        context = torch.randn(1, 77, 768, **meta, requires_grad=True)
        unet(latent(1), t, encoder_hidden_states=context).sample.sum().backward()

    def text_backward():
        embeddings = []
        hook = text_encoder.get_input_embeddings().register_forward_hook(
            lambda m, i, o: embeddings.append(o.requires_grad_(True)) or o)
        text_encoder(ids)[0].sum().backward()
        hook.remove()

    parts = {
        "UNet forward, guided pair": count(lambda: unet(latent(2), t.expand(2), encoder_hidden_states=torch.randn(2, 77, 768, **meta))),
        "UNet forward, one": count(lambda: unet(latent(1), t, encoder_hidden_states=torch.randn(1, 77, 768, **meta))),
        "UNet forward + backward to the text input": count(unet_backward),
        "text encoder forward + backward": count(text_backward),
        "VAE decode": count(lambda: vae.decode(latent(1))),
        "VAE encode": count(lambda: vae.encode(torch.randn(1, 3, args.size, args.size, **meta))),
    }
    image = [parts["UNet forward, guided pair"], args.steps], [parts["VAE decode"], 1]
    attack = ([parts["UNet forward + backward to the text input"], args.iterations],
              [parts["text encoder forward + backward"], args.iterations],
              [parts["UNet forward, one"], evaluation_forwards(args.iterations)], [parts["VAE encode"], 1])
    total = lambda items: tuple(sum(part[k] * n for part, n in items) for k in (0, 1))  # noqa: E731
    images, attacking = total(image), total(attack)
    prompt = (3 * images[0] + attacking[0], 3 * images[1] + attacking[1])
    for name, (tflop, ops) in parts.items():
        print(f"{name:45s} {tflop:8.3f} TFLOP {ops:7d} ops")
    print(f"one image ({args.steps} steps, {args.size}²):{'':13s}{images[0]:8.1f} TFLOP {images[1]:7d} ops")
    print(f"the attack ({args.iterations} iterations):{'':18s}{attacking[0]:8.1f} TFLOP {attacking[1]:7d} ops")
    print(f"per prompt (3 images + the attack):{'':10s}{prompt[0]:8.1f} TFLOP {prompt[1]:7d} ops")
    print(f"estimate: {prompt[0] / args.tflops:.1f} s at {args.tflops:g} TFLOP/s sustained; "
          f"{prompt[1] * args.us_per_op / 1e6:.1f} s at {args.us_per_op:g} µs of host dispatch per op")


if __name__ == "__main__":
    main()
