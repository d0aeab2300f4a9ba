"""Run configuration: YAML validated into typed objects, with dotted overrides.

Every value has a default; a task's defaults (sources, target, loss weights) fill what the file
leaves unset. Unknown keys and bad values fail with the key's dotted name and a suggestion::

    Unknown key 'train.lr_rate'. Did you mean 'train.lr'?

Example:
    >>> cfg = load_config("mri2ct", overrides=["train.lr=1e-4", "data.context_slices=1"])
    >>> cfg.train.lr, cfg.loss.l1
    (0.0001, 100.0)
"""

from __future__ import annotations

import difflib
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from medp2p.data.geometry import check_slice_range
from medp2p.io.atomic import atomic_path
from medp2p.tasks import TASKS


class ConfigError(ValueError):
    """A configuration file or override is invalid; the message names the key and the fix."""


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class DataConfig(_Section):
    """How volumes become training slices (see docs/configs.md)."""

    source_keys: list[str] | None = None  # None: the task's
    target_key: str | None = None
    mask_key: str | None = None
    axis: Literal["axial", "coronal", "sagittal"] = "axial"
    context_slices: int = Field(0, ge=0, le=8)  # 2.5D: 2k+1 neighbouring source slices as channels
    image_size: tuple[int, int] = (256, 256)  # training crop (H, W)
    # model.dims 3: training patch (rows, columns, slices along `axis`) at the working spacing, e.g. [96, 96, 32]
    patch_size: tuple[int, int, int] | None = None
    spacing_mm: float | None = Field(None, gt=0)  # in-plane working spacing; None = native
    mr_percentiles: tuple[float, float] = (0.5, 99.5)
    empty_slice_weight: float = Field(0.05, ge=0, le=1)  # sampling weight of slices without body
    slice_range: tuple[float, float] | None = None  # train on this fraction of the slicing axis
    val_cases: int = Field(0, ge=0)  # hold out this many training cases when no validation data
    # K-fold cross-validation by case (nnU-Net's splits): train fold `fold` of `folds`, validate on
    # the held-out fold unless validation data is given; RUN/splits.json lists every fold
    folds: int | None = Field(None, ge=2)
    fold: int = Field(0, ge=0)
    fold_seed: int = 12345
    # processes building the case store, and DataLoader workers drawing (and, on a CPU, augmenting)
    # batches ahead of the step; 0: both in the training process (the same batches either way)
    num_workers: int = Field(0, ge=0)
    prefetch_factor: int = Field(2, ge=1)  # batches each DataLoader worker keeps ready
    # images per source key: a list-valued datalist key ("image": [t1, flair]) is that many input
    # channels; filled from the training data (every case must agree) and kept in the run
    source_channels: list[int] | None = None
    # a codec writing the target contrast's scale (mr2mr): the training targets' median window (lo, hi), filled by training, kept in the run
    target_window: tuple[float, float] | None = None

    @property
    def patch_dhw(self) -> tuple[int, int, int] | None:
        """`patch_size` in the networks' order (slices, rows, columns); None in 2D."""
        if self.patch_size is None:
            return None
        rows, cols, slices = self.patch_size
        return (slices, rows, cols)

    @model_validator(mode="after")
    def _check(self) -> DataConfig:
        if min(self.image_size) < 8:
            raise ValueError(f"image_size must be at least 8x8, got {self.image_size}")
        lo, hi = self.mr_percentiles
        if not 0 <= lo < hi <= 100:
            raise ValueError(f"mr_percentiles must satisfy 0 <= low < high <= 100, got {self.mr_percentiles}")
        if self.slice_range is not None:
            check_slice_range(self.slice_range)
        if self.folds is not None and self.fold >= self.folds:
            raise ValueError(f"fold must be below folds ({self.folds}), got {self.fold}")
        if self.source_channels is not None:
            if any(n < 1 for n in self.source_channels):
                raise ValueError(f"source_channels must be positive counts, got {self.source_channels}")
            if self.source_keys is not None and len(self.source_channels) != len(self.source_keys):
                raise ValueError(f"source_channels {self.source_channels} needs one count per source key {self.source_keys}")
        return self


class AugmentConfig(_Section):
    """Training augmentations that keep source and target aligned; intensity jitter touches the source only."""

    flip_prob: float = Field(0.5, ge=0, le=1)  # left-right flip
    affine_prob: float = Field(0.5, ge=0, le=1)
    rotate_deg: float = Field(5.0, ge=0, le=45)
    scale: float = Field(0.05, ge=0, le=0.5)
    shift: float = Field(0.03, ge=0, le=0.5)  # fraction of the image size
    intensity_prob: float = Field(0.5, ge=0, le=1)
    intensity_scale: float = Field(0.1, ge=0, le=1)
    intensity_shift: float = Field(0.1, ge=0, le=1)
    gamma: float = Field(0.2, ge=0, le=1)  # log-gamma spread
    # MONAI dictionary transforms applied to each sample after the built-in augmentation, e.g.
    # [{name: RandGaussianNoised, keys: [source], prob: 0.2, std: 0.05}]; seeded from the run
    monai: list[dict[str, Any]] = []

    @model_validator(mode="after")
    def _monai_transforms_exist(self) -> AugmentConfig:
        if self.monai:
            from medp2p.data.augment import monai_transforms

            monai_transforms(self.monai)  # unknown names or arguments fail here, at config load
        return self


class ModelConfig(_Section):
    """The generator and the discriminator (see docs/configs.md)."""

    generator: Literal["unet", "resnet"] = "unet"
    dims: Literal[2, 3] = 2  # 2: slices (2D / 2.5D); 3: patches through a 3D U-Net and PatchGAN
    depth: int = Field(8, ge=2, le=10)  # U-Net levels (8 = unet_256)
    base_channels: int = Field(64, ge=1)
    resnet_blocks: int = Field(9, ge=1)
    norm: Literal["instance", "batch", "none"] = "instance"
    dropout: float = Field(0.5, ge=0, lt=1)
    discriminator: Literal["patchgan"] = "patchgan"
    disc_channels: int = Field(64, ge=1)
    disc_layers: int = Field(3, ge=1, le=6)
    disc_norm: Literal["instance", "batch", "none"] = "instance"
    spectral_norm: bool = False


class LossConfig(_Section):
    """Generator loss weights (None: the task's default) and options."""

    l1: float | None = Field(None, ge=0)
    gan: float | None = Field(None, ge=0)
    dice: float | None = Field(None, ge=0)
    bce: float | None = Field(None, ge=0)
    l2: float = Field(0.0, ge=0)  # mean squared error, in the same mask and weights as L1 (MSE-scored tasks)
    gan_mode: Literal["vanilla", "lsgan"] = "vanilla"
    l1_in_mask: bool = True  # L1 (and L2) only inside the body mask
    outside_weight: float = Field(0.0, ge=0, le=1)  # with l1_in_mask: L1/L2 weight outside the mask (1 inside)
    region_weight: float = Field(10.0, ge=1)  # inpaint: L1 weight inside the region vs outside
    aleatoric: float = Field(0.0, ge=0)  # > 0: a second generator channel learns each voxel's error scale


class InpaintConfig(_Section):
    """Corruptions generated on the fly for inpainting (from the run's seed)."""

    # 'slices' needs context_slices >= 1 in 2D; 'blob' (tumour-like compartments) needs model.dims 3
    kinds: list[Literal["box", "slices", "stripes", "blob"]] = ["box", "stripes"]
    box_fraction: tuple[float, float] = (0.1, 0.35)  # box side as a fraction of the slice
    eval_seed: int = 1234  # corruptions of validation cases: the same every validation


class TrainConfig(_Section):
    """The schedule, optimiser, checkpoints, logging, device and precision (see docs/configs.md)."""

    steps: int = Field(2000, ge=1)  # length of the learning-rate schedule
    # Wall-time budget of `medp2p train` (minutes): after a few timed steps the schedule is cut to the
    # steps that fit (never more than `steps`), so a config holds its time anywhere. None: `steps`.
    minutes: float | None = Field(None, gt=0)
    batch_size: int = Field(4, ge=1)
    lr: float = Field(2e-4, gt=0)
    beta1: float = Field(0.5, ge=0, lt=1)
    beta2: float = Field(0.999, ge=0, lt=1)
    decay_start: float = Field(0.5, ge=0, le=1)  # constant lr, then linear decay to 0 from this fraction
    val_every: int = Field(500, ge=1)
    checkpoint_every: int = Field(100, ge=1)
    log_every: int = Field(10, ge=1)
    preview_count: int = Field(3, ge=0)
    val_batch_size: int = Field(16, ge=1)
    seed: int = 0
    device: str = Field("auto", pattern=r"^(auto|cpu|cuda|cuda:\d+)$")  # auto, cpu, cuda or cuda:N
    # fp32: true float32 (TF32 off on CUDA); tf32: float32 with TF32 matmuls/convolutions;
    # bf16/fp16: autocast; auto: bf16 where native (Ampere+, CPUs with bf16 units), else fp16 on GPUs
    precision: Literal["auto", "fp32", "tf32", "bf16", "fp16"] = "auto"
    deterministic: bool = False  # bitwise-repeatable GPU runs (deterministic algorithms, no cudnn.benchmark)
    ddp_timeout_min: float = Field(30.0, gt=0)  # torchrun: longest wait in a collective (rank 0 checkpointing)
    # NHWC memory layout. auto: for prediction always; for training where autocast runs (bf16 /
    # fp16) or on CUDA, while float32 training on a CPU keeps NCHW (7-9% faster on the AVX2 CPU
    # measured: docs/results.md).
    channels_last: Literal["auto"] | bool = "auto"
    compile: bool = False
    tensorboard: bool = True


class Config(_Section):
    """A whole run's configuration; ``task`` selects the defaults filled in by :func:`resolve`."""

    task: str = "mri2ct"
    data: DataConfig = DataConfig()
    augment: AugmentConfig = AugmentConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    inpaint: InpaintConfig = InpaintConfig()
    train: TrainConfig = TrainConfig()

    @model_validator(mode="after")
    def _slices_need_context(self) -> Config:
        if self.task not in TASKS:
            raise ValueError(f"unknown task {self.task!r}; choose from {sorted(TASKS)}")
        inpaints = TASKS[self.task].region_key is not None
        if inpaints and self.model.dims == 2 and "blob" in self.inpaint.kinds:
            raise ValueError("inpaint.kinds 'blob' is a 3D compartment: set model.dims=3, or drop 'blob' from inpaint.kinds")
        if inpaints and self.model.dims == 2 and "slices" in self.inpaint.kinds and self.data.context_slices == 0:
            raise ValueError(
                "inpaint.kinds has 'slices' (whole slices missing), which needs neighbouring slices: "
                "set data.context_slices >= 1, or drop 'slices' from inpaint.kinds"
            )
        if self.loss.aleatoric > 0 and TASKS[self.task].codec.labels:
            raise ValueError("loss.aleatoric learns an image's error scale; a mask's uncertainty is its probability: set it to 0")
        if self.model.dims == 3:
            _check_3d(self)
        elif self.data.patch_size is not None:
            raise ValueError("data.patch_size is the 3D patch: set model.dims=3 with it, or drop it (2D trains on data.image_size)")
        return self

    def to_dict(self) -> dict[str, Any]:
        """Plain YAML/JSON-able values (tuples become lists)."""
        return self.model_dump(mode="json")


def _check_3d(cfg: Config) -> None:
    """What 3D patches need: a U-Net, a patch size its strides divide, no 2.5D context."""
    from medp2p.models.unet3d import size_multiples, unet_strides

    d, m = cfg.data, cfg.model
    if m.generator != "unet":
        raise ValueError(f"model.dims=3 builds a 3D U-Net; model.generator={m.generator!r} has no 3D form (set model.generator=unet)")
    patch = d.patch_dhw
    if d.patch_size is None or patch is None:
        raise ValueError("model.dims=3 needs data.patch_size (rows, columns, slices), e.g. [96, 96, 32]")
    if d.context_slices:
        raise ValueError("model.dims=3 sees neighbouring slices inside its patch: set data.context_slices=0")
    if min(d.patch_size) < 4:
        raise ValueError(f"data.patch_size must be at least 4 voxels along each axis, got {list(d.patch_size)}")
    multiples = size_multiples(unet_strides(patch, m.depth))
    need = (multiples[1], multiples[2], multiples[0])
    if any(n % k for n, k in zip(d.patch_size, need, strict=True)):
        raise ValueError(
            f"data.patch_size {list(d.patch_size)} must be a multiple of {list(need)} along each axis "
            f"(the strides of a {m.depth}-level 3D U-Net for this patch); lower model.depth or round the patch"
        )


def _all_keys(model: type[BaseModel], prefix: str = "") -> list[str]:
    keys = []
    for name, info in model.model_fields.items():
        keys.append(prefix + name)
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _all_keys(ann, prefix + name + ".")
    return keys


def _suggest(key: str) -> str:
    close = difflib.get_close_matches(key, _all_keys(Config), n=1, cutoff=0.6)
    return f" Did you mean '{close[0]}'?" if close else ""


def _explain(err: ValidationError, where: str) -> ConfigError:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"] if not isinstance(p, int) or len(e["loc"]) == 1)
        if e["type"] == "extra_forbidden":
            lines.append(f"Unknown key '{key}'.{_suggest(key)}")
        elif e["type"] == "value_error":  # our own validators: the message says it all
            msg = e["msg"].removeprefix("Value error, ")
            lines.append(f"'{key}': {msg}" if key else msg)
        else:
            lines.append(f"'{key}': {e['msg']} (got {e.get('input')!r})")
    return ConfigError(f"{where}: " + " ".join(lines))


#: Keys removed from the config, with what to do instead; a saved run's config drops them silently.
REMOVED_KEYS = {
    "data.cache_rate": "data.cache_rate was removed: it was never read (every training case is decoded and prepared once "
    "per run); drop the key",
}


def _drop_removed(tree: dict[str, Any], where: str, strict: bool) -> dict[str, Any]:
    for dotted, why in REMOVED_KEYS.items():
        section, key = dotted.split(".")
        node = tree.get(section)
        if isinstance(node, dict) and key in node:
            if strict:
                raise ConfigError(f"{where}: {why}")
            node = {k: v for k, v in node.items() if k != key}
            tree = {**tree, section: node}
    return tree


def _set_dotted(tree: dict[str, Any], dotted: str, value: Any) -> None:
    parts = dotted.split(".")
    node = tree
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"--set {dotted}: '{part}' is a value, not a section")
        node = child
    node[parts[-1]] = value


def parse_override(text: str) -> tuple[str, Any]:
    """``"train.lr=1e-4"`` -> ``("train.lr", 0.0001)``; the value is read as YAML (numbers, lists, null).

    Example:
        >>> parse_override("data.image_size=[128, 128]")
        ('data.image_size', [128, 128])
    """
    key, sep, raw = text.partition("=")
    key = key.strip()
    if not sep or not key:
        raise ConfigError(f"--set {text!r}: expected KEY=VALUE, e.g. train.lr=2e-4")
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.YAMLError as exc:
        raise ConfigError(f"--set {text!r}: the value is not valid YAML ({exc})") from exc
    if key in REMOVED_KEYS:
        raise ConfigError(f"--set {text!r}: {REMOVED_KEYS[key]}")
    if key not in _all_keys(Config):
        raise ConfigError(f"--set {text!r}: Unknown key '{key}'.{_suggest(key)}")
    return key, value


def resolve(cfg: Config) -> Config:
    """Fill what the task decides (sources, target, mask, loss weights) where the config left None."""
    task = TASKS[cfg.task]
    data = cfg.data.model_copy(
        update={
            "source_keys": cfg.data.source_keys or list(task.source_keys),
            "target_key": cfg.data.target_key or task.target_key,
            "mask_key": cfg.data.mask_key if cfg.data.mask_key is not None else task.mask_key,
        }
    )
    loss = cfg.loss.model_copy(
        update={k: getattr(task.loss, k) if getattr(cfg.loss, k) is None else getattr(cfg.loss, k) for k in ("l1", "gan", "dice", "bce")}
    )
    return cfg.model_copy(update={"data": data, "loss": loss})


def load_config(task: str | None = None, path: str | Path | None = None, overrides: list[str] | tuple[str, ...] = ()) -> Config:
    """Defaults, then the YAML file at ``path``, then ``overrides`` (``"a.b=v"``), validated and resolved.

    Args:
        task: the task name; overrides the file's ``task`` (the CLI's ``--task``).
        path: a YAML config file (``configs/mri2ct.yaml``...), or None for the defaults.
        overrides: dotted ``KEY=VALUE`` strings, applied last.

    Raises:
        ConfigError: unreadable file, unknown key (with a suggestion), or invalid value.
    """
    tree: dict[str, Any] = {}
    where = "config"
    if path is not None:
        path = Path(path)
        where = str(path)
        try:
            loaded = yaml.safe_load(path.read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise ConfigError(f"{path}: cannot read the config ({exc})") from exc
        if loaded is not None and not isinstance(loaded, dict):
            raise ConfigError(f"{path}: a config is a YAML mapping of sections, found {type(loaded).__name__}")
        tree = loaded or {}
    if task is not None:
        if task not in TASKS:
            raise ConfigError(f"Unknown task {task!r}; choose from {sorted(TASKS)}")
        tree["task"] = task
    for text in overrides:
        key, value = parse_override(text)
        _set_dotted(tree, key, value)
    tree = _drop_removed(tree, where, strict=True)
    try:
        cfg = Config.model_validate(tree)
    except ValidationError as err:
        raise _explain(err, where) from None
    return resolve(cfg)


def config_from_dict(tree: dict[str, Any]) -> Config:
    """A config saved by a run (``config.yaml`` or a checkpoint's ``config``), validated.

    Keys removed since the run was saved (:data:`REMOVED_KEYS`) are dropped, so old runs load.
    """
    try:
        return resolve(Config.model_validate(_drop_removed(tree, "saved config", strict=False)))
    except ValidationError as err:
        raise _explain(err, "saved config") from None


def save_config(cfg: Config, path: str | Path) -> None:
    """Write the resolved config as YAML, atomically."""
    with atomic_path(path) as tmp:
        tmp.write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
