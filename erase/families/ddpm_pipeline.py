"""Class-conditional DDPM pipeline with classifier-free guidance.

diffusers ships no class-conditional DDPM pipeline, so this is one. The file is self-contained
(torch + diffusers only): `save_pretrained` copies it next to model_index.json, so plain diffusers
can load an erased folder with `DiffusionPipeline.from_pretrained(folder, trust_remote_code=True)`.
The UNet is a `UNet2DModel` with `num_class_embeds = num_classes + 1`: the last id is the null
class used for guidance.
"""

from __future__ import annotations

import json
import os
import shutil

import torch
from diffusers import DiffusionPipeline, ImagePipelineOutput
from diffusers.utils.torch_utils import randn_tensor

PIPELINE_MODULE = "pipeline_class_ddpm"


class ClassConditionalDDPMPipeline(DiffusionPipeline):
    """Generate images of given classes with a class-conditional `UNet2DModel` and a DDPM/DDIM scheduler."""

    def __init__(self, unet, scheduler):
        super().__init__()
        self.register_modules(unet=unet, scheduler=scheduler)

    @property
    def num_classes(self) -> int:
        return self.unet.config.num_class_embeds - 1

    @property
    def null_class(self) -> int:
        return self.unet.config.num_class_embeds - 1

    @torch.no_grad()
    def __call__(
        self,
        class_labels,
        guidance_scale: float = 2.0,
        num_inference_steps: int = 50,
        generator=None,
        output_type: str = "pil",
        return_dict: bool = True,
    ):
        """Sample one image per class label. guidance_scale w: ε = ε_∅ + w(ε_c − ε_∅); 1.0 turns it off."""
        labels = torch.as_tensor(class_labels, dtype=torch.long, device=self.device).reshape(-1)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"class labels must be in [0, {self.num_classes - 1}]")
        size = self.unet.config.sample_size
        size = (size, size) if isinstance(size, int) else tuple(size)
        shape = (labels.numel(), self.unet.config.in_channels, *size)
        image = randn_tensor(shape, generator=generator, device=self.device, dtype=self.unet.dtype)
        guided = guidance_scale != 1.0
        null = torch.full_like(labels, self.null_class)
        self.scheduler.set_timesteps(num_inference_steps, device=self.device)
        for t in self.progress_bar(self.scheduler.timesteps):
            if guided:
                model_input = torch.cat([image, image])
                eps_cond, eps_null = self.unet(model_input, t, class_labels=torch.cat([labels, null])).sample.chunk(2)
                eps = eps_null + guidance_scale * (eps_cond - eps_null)
            else:
                eps = self.unet(image, t, class_labels=labels).sample
            image = self.scheduler.step(eps, t, image, generator=generator).prev_sample
        image = (image / 2 + 0.5).clamp(0, 1)
        if output_type == "pt":
            images = image
        else:
            images = image.cpu().permute(0, 2, 3, 1).float().numpy()
            if output_type == "pil":
                images = self.numpy_to_pil(images)
        if not return_dict:
            return (images,)
        return ImagePipelineOutput(images=images)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, torch_dtype=None, **kwargs):
        """Load the components directly, so no code from the folder is executed."""
        import diffusers
        from diffusers import UNet2DModel

        unet = UNet2DModel.from_pretrained(
            pretrained_model_name_or_path, subfolder="unet", torch_dtype=torch_dtype, **kwargs
        )
        scheduler_config = diffusers.DDPMScheduler.load_config(
            pretrained_model_name_or_path, subfolder="scheduler", **kwargs
        )
        scheduler_cls = getattr(diffusers, scheduler_config.get("_class_name", "DDPMScheduler"))
        scheduler = scheduler_cls.from_config(scheduler_config)
        pipeline = cls(unet=unet, scheduler=scheduler)
        pipeline.register_to_config(_name_or_path=str(pretrained_model_name_or_path))  # as diffusers records it
        return pipeline

    def save_pretrained(self, save_directory, **kwargs):
        """A normal diffusers folder, plus this file so plain diffusers finds the class."""
        super().save_pretrained(save_directory, **kwargs)
        shutil.copyfile(os.path.abspath(__file__), os.path.join(save_directory, f"{PIPELINE_MODULE}.py"))
        index_path = os.path.join(save_directory, "model_index.json")
        with open(index_path) as f:
            index = json.load(f)
        index["_class_name"] = [PIPELINE_MODULE, type(self).__name__]
        index.pop("_name_or_path", None)  # where it was loaded from: not part of the model
        with open(index_path, "w") as f:
            json.dump(index, f, indent=2, sort_keys=True)
            f.write("\n")
