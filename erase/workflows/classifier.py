"""Classifier unlearning end to end: forget a random subset or a class, score UA/RA/TA/MIA, compare to retraining.

The recipe (pipelines/classifier-*.toml) is read into `Settings`: family = "classifier", task = "random"
| "class"; [data] dataset ("digits", "cifar10", "cifar100", "svhn" or an image-folder path), root,
image_size, batch_size; [forget] fraction, class, seed; [model] arch, path (a trained classifier; empty:
train one here); [train] the training of the original and of the retrained reference (SFRonConfig
fields, run through the core loop with remain steps only); [method] name; [sfron] (SFRonConfig fields);
[fisher] batches (0: one full pass), salun_fraction; [per_method.NAME] overrides of [sfron] for one
method (settings tuned per method); [eval] retrain, retrained (path), mia_feature, seed; [output] dir.

Every method runs through `erase.core.sfron.unlearn`; `erase.core.methods` turns its name into the
objective and mask it uses, and only those differ.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from accelerate import Accelerator, PartialState
from torch.utils.data import Dataset, Subset, TensorDataset

from erase.core.methods import METHODS, forget_objective, method_mask, method_spec
from erase.core.io import atomic_write_json, atomic_write_text
from erase.data.loader import loader
from erase.core.saliency import mask_stats, save_mask
from erase.core.sfron import SFRonConfig, unlearn
from erase.errors import UserError
from erase.eval.report import format_table, save_loss_plot
from erase.eval.unlearning import METRICS, MIA_FEATURES, gaps, unlearning_metrics
from erase.families import classifier as family
from erase.recipes import key, read_settings, resolve_path, to_toml, unknown_key
from erase.workflows.settings import Output, sfron_config
from erase.workflows.timings import PhaseTimer

TASKS = ("random", "class")


@dataclass
class Data:
    dataset: str = key("digits")  # digits | cifar10 | cifar100 | svhn | an image folder
    root: str = key("")
    image_size: int = key(0, low=0)  # 0: the images' own size
    batch_size: int = key(64, low=1)


@dataclass
class Forget:
    fraction: float = key(0.1, above=0, below=1)  # task random
    forget_class: int | None = key(None, name="class", low=0)  # task class
    seed: int = key(0, low=0)


@dataclass
class Model:
    arch: str = key("", choices=("", *family.ARCHITECTURES))  # empty: digit-cnn on digits, else resnet18
    path: str = key("")  # a trained classifier (safetensors); empty: train one with [train]


@dataclass
class ClassifierMethod:
    name: str = key("sfron", choices=tuple(METHODS))


@dataclass
class Fisher:
    batches: int = key(0, low=0)  # 0: one full pass over the forget and the remain set
    salun_fraction: float = key(0.5, above=0, high=1)


@dataclass
class Eval:
    retrain: bool = key(False)
    retrained: str = key("")
    mia_feature: str = key("confidence", choices=MIA_FEATURES)
    seed: int = key(0, low=0)


@dataclass
class Settings:
    """A classifier recipe, typed: every key it may hold, its type and range."""

    family: str = key("classifier")
    task: str = key("random", choices=TASKS)
    data: Data = key(factory=Data)
    forget: Forget = key(factory=Forget)
    model: Model = key(factory=Model)
    train: SFRonConfig = key(factory=SFRonConfig)
    method: ClassifierMethod = key(factory=ClassifierMethod)
    sfron: SFRonConfig = key(factory=SFRonConfig)
    per_method: dict = key(factory=dict)
    fisher: Fisher = key(factory=Fisher)
    eval: Eval = key(factory=Eval)
    output: Output = key(factory=Output)


def read(recipe: dict) -> Settings:
    """The recipe as Settings, every [per_method.NAME] table checked too; mistakes are reported before any work."""
    settings = read_settings(Settings, recipe)
    for method in settings.per_method:
        if method not in METHODS:
            raise UserError(unknown_key(f"per_method.{method}", list(METHODS), "per_method"))
        method_config(recipe, method)
    if settings.task == "class" and settings.forget.forget_class is None:
        raise UserError('task = "class" needs forget.class')
    return settings


@dataclass
class Setup:
    """Everything the methods share: data splits, the original model, the reference metrics."""

    task: str
    num_classes: int
    train: Dataset
    test: Dataset
    forget_indices: torch.Tensor
    remain_indices: torch.Tensor
    test_kept: Dataset  # TA's test set: all of it, or the remaining classes for class-wise forgetting
    original: torch.nn.Module
    batch_size: int
    fisher_batches: int | None
    salun_fraction: float
    mia_feature: str
    eval_seed: int
    original_metrics: dict = field(default_factory=dict)
    retrained_metrics: dict | None = None
    retrained: torch.nn.Module | None = None
    trained_here: bool = False
    seconds_setup: float = 0.0

    @property
    def forget_set(self) -> Dataset:
        return Subset(self.train, self.forget_indices.tolist())

    @property
    def remain_set(self) -> Dataset:
        return Subset(self.train, self.remain_indices.tolist())


def run(recipe: dict, show_progress: bool = True) -> dict:
    """Run a classifier-unlearning recipe; returns the metrics written to OUT/metrics.json."""
    started = time.perf_counter()
    settings = read(recipe)
    out_dir = settings.output.folder("runs/classifier")
    method = settings.method.name
    config = method_config(recipe, method)
    setup = prepare(recipe, show_progress=show_progress)

    timer = PhaseTimer()
    model, metrics, history, mask = run_method(setup, method, config, show_progress=show_progress, timer=timer)
    metrics["seconds_total"] = round(time.perf_counter() - started, 2)
    if not PartialState().is_main_process:
        return metrics  # under accelerate launch the main process writes the run folder

    with timer("export"):
        out_dir.mkdir(parents=True, exist_ok=True)
        family.save_classifier(model.cpu(), out_dir / "model.safetensors")
        if setup.trained_here:
            family.save_classifier(setup.original.cpu(), out_dir / "original.safetensors")
        if setup.retrained is not None:
            family.save_classifier(setup.retrained.cpu(), out_dir / "retrained.safetensors")
        if mask is not None:
            save_mask(mask, out_dir / "mask.safetensors", metadata={"method": method, "gamma": str(config.gamma)})
            atomic_write_json(mask_stats(mask), out_dir / "mask_stats.json")
        save_loss_plot(history, out_dir / "loss.png", title=f"{method}: forgetting {describe_forget(recipe)}")
    metrics["timings"] = timer.timings(config.steps)
    atomic_write_json({**metrics, "history": history}, out_dir / "metrics.json")
    atomic_write_text(to_toml(recipe), out_dir / "config.toml")
    return metrics


def prepare(recipe: dict, show_progress: bool = True) -> Setup:
    """Load data, split it, get the original model (load or train) and, when asked, the retrained one.

    Every user mistake is raised as a UserError here, before anything is written.
    """
    started = time.perf_counter()
    settings = read(recipe)
    task, data, forget, evaluation = settings.task, settings.data, settings.forget, settings.eval
    train_config, batch_size = settings.train, data.batch_size
    retrained_path = evaluation.retrained or None
    model_path = settings.model.path or None
    for name, path in (("model.path", model_path), ("eval.retrained", retrained_path)):
        if path and not resolve_path(path).is_file():
            raise UserError(f"{name}: no such classifier weights: {path}")

    train, test, num_classes, labels = open_datasets(data)
    forget_indices, remain_indices = split(task, forget, labels, num_classes)
    test_kept = test
    if task == "class":
        test_labels = dataset_labels(test)
        test_kept = Subset(test, (test_labels != forget.forget_class).nonzero().flatten().tolist())

    in_channels, image_size = train[0][0].shape[0], train[0][0].shape[-1]
    arch = settings.model.arch or ("digit-cnn" if data.dataset == "digits" else "resnet18")
    setup = Setup(
        task=task, num_classes=num_classes, train=train, test=test, forget_indices=forget_indices,
        remain_indices=remain_indices, test_kept=test_kept, original=None, batch_size=batch_size,
        fisher_batches=settings.fisher.batches or None, salun_fraction=settings.fisher.salun_fraction,
        mia_feature=evaluation.mia_feature, eval_seed=evaluation.seed,
    )
    if model_path:
        setup.original = load_model(model_path, num_classes)
    else:
        fresh = fresh_model(arch, num_classes, in_channels, image_size, train_config.seed)
        setup.original = family.fit(fresh, loader(train, batch_size, train_config.seed), train_config, show_progress)
        setup.trained_here = True
    setup.original_metrics = evaluate(setup.original, setup)
    if retrained_path:
        setup.retrained = load_model(retrained_path, num_classes)
    elif evaluation.retrain:
        fresh = fresh_model(arch, num_classes, in_channels, image_size, train_config.seed)
        setup.retrained = family.fit(
            fresh, loader(setup.remain_set, batch_size, train_config.seed), train_config, show_progress
        )
    if setup.retrained is not None:
        setup.retrained_metrics = evaluate(setup.retrained, setup)
    setup.seconds_setup = round(time.perf_counter() - started, 2)
    return setup


def run_method(setup: Setup, method: str, config: SFRonConfig, show_progress: bool = True,
               timer: PhaseTimer | None = None):
    """Unlearn a copy of the original with one method; returns (model, metrics, history, mask)."""
    timer = timer or PhaseTimer()
    spec = method_spec(method)
    accelerator = Accelerator(mixed_precision=config.mixed_precision)  # several processes: Fisher and loop split
    model = copy.deepcopy(setup.original).to(accelerator.device)
    torch.manual_seed(config.seed)
    started = time.perf_counter()
    forget_batches = loader(setup.forget_set, setup.batch_size, config.seed)
    remain_batches = loader(setup.remain_set, setup.batch_size, config.seed + 1)
    with timer("fisher"):
        mask, _ = method_mask(spec, model, family.cross_entropy_loss, forget_batches, remain_batches, config.gamma,
                              setup.fisher_batches, setup.salun_fraction, seed=config.seed, accelerator=accelerator,
                              show_progress=False)
    relabel = family.random_other_labels(setup.num_classes, config.seed)
    objective = forget_objective(spec, family.cross_entropy_loss, config.temperature, relabel=relabel)
    with timer("loop"):
        history = unlearn(
            model, objective, family.cross_entropy_loss, forget_batches, remain_batches, config, mask=mask,
            accelerator=accelerator, show_progress=show_progress,
        )
    seconds = time.perf_counter() - started
    with timer("evaluate"):
        scores = evaluate(model, setup)
    metrics = {
        "family": "classifier",
        "task": setup.task,
        "method": method,
        "steps": config.steps,
        **scores,
        "seconds": round(seconds, 2),
        "mask_fraction": mask_stats(mask)["fraction"] if mask is not None else 1.0,
        "forget_size": len(setup.forget_indices),
        "remain_size": len(setup.remain_indices),
        "original": setup.original_metrics,
        "seconds_setup": setup.seconds_setup,
        "config": config.to_dict(),
    }
    if setup.retrained_metrics is not None:
        per_metric, average = gaps(metrics, setup.retrained_metrics)
        metrics.update(retrained=setup.retrained_metrics, gap=per_metric, avg_gap=average)
        metrics["original"] = {**setup.original_metrics, "avg_gap": gaps(setup.original_metrics, setup.retrained_metrics)[1]}
    return model, metrics, history, mask


def evaluate(model: torch.nn.Module, setup: Setup) -> dict[str, float]:
    """UA, RA, TA, MIA of one model on this setup's splits (NaN on the other processes of an `accelerate
    launch`: the main process evaluates and writes)."""
    if not PartialState().is_main_process:
        return dict.fromkeys(METRICS, float("nan"))
    forget = family.probabilities(model, setup.forget_set)
    remain = family.probabilities(model, setup.remain_set)
    test = family.probabilities(model, setup.test)
    kept = family.probabilities(model, setup.test_kept) if setup.test_kept is not setup.test else None
    return unlearning_metrics(forget, remain, test, setup.mia_feature, setup.eval_seed, test_for_accuracy=kept)


# --- recipe pieces -------------------------------------------------------------------------------


def open_datasets(data: Data) -> tuple[Dataset, Dataset, int, torch.Tensor]:
    """(train set, test set, number of classes, train labels) for digits or a dataset on disk."""
    name = data.dataset
    if name == "digits":
        from erase.data.digits import NUM_CLASSES, load_digits_tensors

        train_images, train_labels = load_digits_tensors("train")
        test_images, test_labels = load_digits_tensors("test")
        return TensorDataset(train_images, train_labels), TensorDataset(test_images, test_labels), NUM_CLASSES, train_labels
    from erase.data.images import open_image_dataset

    size = data.image_size or None
    root = data.root or None
    folder = Path(name)
    if folder.is_dir() and not ((folder / "train").is_dir() and (folder / "test").is_dir()):
        raise UserError(f"{name} needs train/ and test/ sub-folders, each with one folder per class")
    train = open_image_dataset(name, "train", image_size=size, root=root)
    test = open_image_dataset(name, "test", image_size=size, root=root)
    if len(train) == 0 or len(test) == 0:
        raise UserError(f"{name} has an empty train or test split")
    if list(train.classes) != list(test.classes):
        raise UserError(f"{name}: the train and test splits name different classes")
    return train, test, len(train.classes), dataset_labels(train)


def dataset_labels(dataset: Dataset) -> torch.Tensor:
    if isinstance(dataset, TensorDataset):
        return dataset.tensors[1]
    from erase.data.images import dataset_labels as image_labels

    return image_labels(dataset)


def split(task: str, forget: Forget, labels: torch.Tensor, num_classes: int):
    """Forget/remain indices of the training set for a random subset or a class."""
    if task == "random":
        try:
            return family.random_forget_split(len(labels), forget.fraction, forget.seed)
        except ValueError as error:
            raise UserError(f"forget.fraction: {error}") from None
    if not 0 <= forget.forget_class < num_classes:
        raise UserError(f"forget.class must be in [0, {num_classes - 1}], got {forget.forget_class}")
    try:
        return family.class_forget_split(labels, forget.forget_class)
    except ValueError as error:
        raise UserError(f"forget.class: {error}") from None


def method_config(recipe: dict, method: str) -> SFRonConfig:
    """[sfron], with the recipe's [per_method.<method>] values on top."""
    overrides = recipe.get("per_method", {}).get(method, {})
    if not isinstance(overrides, dict):
        raise UserError(f"per_method.{method} must be a table of [sfron] keys, got {overrides!r}")
    if "steps" in overrides:
        raise UserError(f"per_method.{method} may not set steps: every method gets the same step budget")
    where = f"per_method.{method}" if overrides else "sfron"
    return sfron_config({**recipe.get("sfron", {}), **overrides}, where)


def fresh_model(arch: str, num_classes: int, in_channels: int, image_size: int, seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return family.build_classifier(arch, num_classes, in_channels, image_size)


def load_model(path, num_classes: int) -> torch.nn.Module:
    try:
        model = family.load_classifier(resolve_path(path))
    except Exception as error:  # a file that is not one of our safetensors classifiers
        raise UserError(f"cannot load a classifier from {path}: {str(error).splitlines()[0]}") from None
    if model.config.get("num_classes") != num_classes:
        raise UserError(f"{path} predicts {model.config.get('num_classes')} classes; the dataset has {num_classes}")
    return model


def describe_forget(recipe: dict) -> str:
    forget = recipe.get("forget", {})
    if recipe.get("task", "random") == "class":
        return f"class {forget.get('class')}"
    return f"a random {float(forget.get('fraction', 0.1)):.0%} of the training set"


def summary_table(metrics: dict) -> str:
    """Original vs unlearned (vs retrained) on each metric, in percent."""
    header = ("metric", "original", metrics["method"]) + (("retrained", "gap") if "gap" in metrics else ())
    rows = []
    for name in METRICS:
        row = (name.upper(), 100 * metrics["original"][name], 100 * metrics[name])
        if "gap" in metrics:
            row += (100 * metrics["retrained"][name], 100 * metrics["gap"][name])
        rows.append(row)
    if "avg_gap" in metrics:
        rows.append(("avg gap", 100 * metrics["original"]["avg_gap"], 100 * metrics["avg_gap"], "-", "-"))
    return format_table(rows, header)
