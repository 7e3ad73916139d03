"""Fine-tune a torchvision classifier that judges generated images (`erase pretrain classifier`).

The official FA protocol's judge: ResNet-34 from ImageNet weights, fine-tuned at 224×224 on [-1, 1]
inputs. The result is written in the format `erase.eval.classify_images` reads back.
"""

from __future__ import annotations

import time
from pathlib import Path

import torch
import torch.nn.functional as F
from accelerate import Accelerator
from torch import nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from erase.data.images import TORCHVISION_SETS, open_image_dataset
from erase.errors import UserError
from erase.eval.classify_images import (
    NORMALIZATIONS,
    ImageClassifier,
    build_torchvision,
    last_linear,
    read_state_dict,
    save_image_classifier,
)


def finetune_classifier(
    data, out_path, arch: str = "resnet34", init_weights=None, image_size: int = 224, epochs: int = 5,
    batch_size: int = 128, lr: float = 0.01, data_root=None, workers: int = 0, seed: int = 0,
    mixed_precision: str = "no", show_progress: bool = True,
) -> dict:
    """Fine-tune a torchvision classifier on labelled images (the official FA protocol: ResNet-34 from
    ImageNet weights at 224×224, [-1, 1] inputs). SGD momentum 0.9, weight decay 5e-4, cosine LR,
    random horizontal flips, BatchNorm statistics recomputed at the end; Accelerate for devices and
    mixed precision."""
    started = time.perf_counter()
    out_path = Path(out_path)
    if out_path.suffix != ".safetensors":
        raise UserError(f"--out should be a .safetensors file, got {out_path}")
    train_set = open_image_dataset(data, split="train", image_size=image_size, root=data_root)
    test_set = None
    if str(data).lower() in TORCHVISION_SETS:
        test_set = open_image_dataset(data, split="test", image_size=image_size, root=data_root)
    else:
        for split in ("test", "val"):
            if (Path(data) / split).is_dir():
                test_set = open_image_dataset(data, split=split, image_size=image_size)
                break
    num_classes = len(train_set.classes)
    torch.manual_seed(seed)
    model = build_torchvision(arch, num_classes)
    if init_weights:
        state = read_state_dict(init_weights)
        head = last_linear(model)
        own = model.state_dict()
        kept = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
        head_names = {n for n, p in model.named_parameters() if any(p is q for q in head.parameters())}
        if len(kept) < len(own) - len(head_names) - sum("num_batches_tracked" in k for k in own):
            raise UserError(f"{init_weights} does not fit torchvision's {arch} (only {len(kept)} of {len(own)} tensors match)")
        model.load_state_dict(kept, strict=False)

    accelerator = Accelerator(mixed_precision=mixed_precision)
    loader = DataLoader(train_set, batch_size=min(batch_size, len(train_set)), shuffle=True, drop_last=True,
                        num_workers=workers, generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, epochs * len(loader)))
    model, optimizer, loader, schedule = accelerator.prepare(model, optimizer, loader, schedule)
    bar = tqdm(total=epochs * len(loader), desc=f"fine-tuning {arch}",
               disable=not show_progress or not accelerator.is_local_main_process)
    model.train()
    for _ in range(epochs):
        for images, labels in loader:
            flip = torch.rand(images.shape[0], device=images.device) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
            with accelerator.autocast():
                loss = F.cross_entropy(model(images), labels)
            optimizer.zero_grad(set_to_none=True)
            accelerator.backward(loss)
            optimizer.step()
            schedule.step()
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    model = accelerator.unwrap_model(model)
    recalibrate_batchnorm(model, train_set, batch_size, accelerator.device, seed)
    mean, std = NORMALIZATIONS["half"]  # open_image_dataset scales to [-1, 1]
    classifier = ImageClassifier(model, arch, image_size, mean, std, list(train_set.classes))
    test_accuracy = dataset_accuracy(model, test_set, batch_size, accelerator.device) if test_set else None
    info = {"arch": arch, "num_classes": num_classes, "epochs": epochs, "image_size": image_size,
            "init_weights": str(init_weights) if init_weights else None, "test_accuracy": test_accuracy,
            "seconds": round(time.perf_counter() - started, 1)}
    if accelerator.is_main_process:
        save_image_classifier(classifier.__class__(model.cpu(), arch, image_size, mean, std, classifier.classes),
                              out_path, extra={"test_accuracy": test_accuracy})
    return info


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, dataset, batch_size: int, device, seed: int = 0, max_batches: int = 200) -> None:
    """"Precise BN": recompute BatchNorm statistics with the final weights, as a plain average over
    shuffled training batches. The running averages kept during a short fine-tuning lag behind the
    weights and can make eval-mode predictions much worse than train-mode ones."""
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not norms:
        return
    momenta = [m.momentum for m in norms]
    for m in norms:
        m.reset_running_stats()
        m.momentum = None  # cumulative average
    model.train()
    loader = DataLoader(dataset, batch_size=min(max(batch_size, 64), len(dataset)), shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    for i, (images, _) in enumerate(loader):
        if i >= max_batches:
            break
        model(images.to(device))
    for m, momentum in zip(norms, momenta):
        m.momentum = momentum
    model.eval()


@torch.no_grad()
def dataset_accuracy(model: nn.Module, dataset, batch_size: int, device) -> float:
    model.eval()
    correct = total = 0
    for images, labels in DataLoader(dataset, batch_size=batch_size):
        predictions = model(images.to(device)).argmax(1).cpu()
        correct += int((predictions == labels).sum())
        total += len(labels)
    return correct / total if total else float("nan")
