"""Structured configs: the schema of everything under ``esc_sweep/conf/``.

Hydra merges the YAML files of each config group into these dataclasses, so a
misspelt key or a value of the wrong type fails at composition time. Value
ranges (a positive learning rate, folds between 1 and 5, ...) are checked by
``validate`` before any data is touched; each problem is reported with its
dotted key.
"""

from __future__ import annotations

import logging
import math
import os
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import MISSING, DictConfig, OmegaConf

from esc_sweep.errors import ConfigError

# Official ESC-50 archive. Its checksum is not published upstream, so it is
# optional: set ``dataset.archive_sha256`` to pin the archive you trust.
ESC50_URL = "https://github.com/karoldvl/ESC-50/archive/master.zip"


@dataclass
class DatasetBase:
    """The keys every dataset kind has. Each kind's schema adds its own (below), so
    ``--cfg job`` shows only the keys that apply, and a key of another kind is refused."""

    # esc50: the ESC-50 layout (meta/esc50.csv + audio/); synthetic: generated,
    # class-separable tones for quick tests; folder: your own audio (class
    # sub-folders or a CSV).
    kind: str = "esc50"
    name: str = "esc50"
    # Dataset root. Empty: $ESC50_ROOT, else the download folder (esc50).
    root: Optional[str] = None
    cache_dir: Optional[str] = None  # decoded waveforms; default: ~/.cache/esc_sweep/waveforms
    # "target" = 50 fine classes, "category" = the 5 major ESC-50 categories.
    label: str = "target"
    classes: Optional[List[str]] = None  # keep only these class names
    # Fixed-length clips: every clip cut or zero-padded to this length. With variable_length: the length
    # of the training crops and of the evaluation windows (and of predict's windows).
    clip_seconds: float = 5.0
    num_folds: int = 5
    # cv: the folds (trainer.folds, default all of them); holdout: an official train/test split (a split
    # column: fsdkaggle2018, or a folder CSV with split=train/test): train on train, score test once.
    protocol: str = "cv"
    # Keep every clip whole (int16, data/ragged.py): train on random clip_seconds crops, evaluate over
    # the whole clip with predict's windows and averaging. False: every clip cut/padded to clip_seconds.
    variable_length: bool = False
    # With variable_length, a clip shorter than clip_seconds fills its window by "pad" (zeros around it) or
    # "repeat" (the clip end to end), the same way in training, evaluation and predict (docs/datasets.md).
    short_clips: str = "pad"


@dataclass
class DatasetConfig(DatasetBase):
    """dataset.kind=esc50 (the default): ESC-50, found at dataset.root / $ESC50_ROOT or downloaded."""

    download: bool = True
    url: str = ESC50_URL
    archive_sha256: Optional[str] = None
    download_dir: Optional[str] = None  # default: ~/.cache/esc_sweep/datasets
    esc10: bool = False  # keep only the ESC-10 subset


@dataclass
class SyntheticDatasetConfig(DatasetBase):
    """dataset.kind=synthetic: generated, class-separable tones."""

    kind: str = "synthetic"
    name: str = "synthetic"
    num_classes: int = 5
    clips_per_class: int = 20
    synthetic_seed: int = 0
    clip_seconds: float = 1.0


@dataclass
class FolderDatasetConfig(DatasetBase):
    """dataset.kind=folder: your own audio, one sub-folder per class or a CSV."""

    kind: str = "folder"
    name: str = "folder"
    # A CSV with columns filename,label[,fold]; else class sub-folders.
    csv: Optional[str] = None


# Official UrbanSound8K archive (Zenodo record 1203745). Its MD5 as soundata's index lists it (Zenodo lists
# MD5s, not SHA-256, so archive_sha256 stays optional); not checked against the live record (docs/datasets.md).
URBANSOUND8K_URL = "https://zenodo.org/record/1203745/files/UrbanSound8K.tar.gz?download=1"
URBANSOUND8K_MD5 = "9aa69802bbf37fb986f71ec1483a196e"


@dataclass
class UrbanSound8KDatasetConfig(DatasetBase):
    """dataset.kind=urbansound8k: the official release layout, 10 folds, found at dataset.root /
    $URBANSOUND8K_ROOT or downloaded."""

    kind: str = "urbansound8k"
    name: str = "urbansound8k"
    clip_seconds: float = 4.0
    num_folds: int = 10
    download: bool = True
    url: str = URBANSOUND8K_URL
    archive_md5: Optional[str] = URBANSOUND8K_MD5
    archive_sha256: Optional[str] = None
    download_dir: Optional[str] = None  # default: ~/.cache/esc_sweep/datasets


@dataclass
class FSDKaggle2018DatasetConfig(DatasetBase):
    """dataset.kind=fsdkaggle2018: the official Zenodo layout, train/test split (holdout), 41 classes."""

    kind: str = "fsdkaggle2018"
    name: str = "fsdkaggle2018"
    protocol: str = "holdout"
    num_folds: int = 1
    variable_length: bool = True
    clip_seconds: float = 2.0
    manually_verified_only: bool = False  # train on the ~40 % of training labels a person verified
    unverified_weight: float = 1.0  # loss weight of a clip whose label was not verified (0..1)


# dataset.kind -> its schema, stored as dataset_<kind>_schema (each conf/dataset/*.yaml names its own in `defaults`).
DATASET_SCHEMAS = {"esc50": DatasetConfig, "synthetic": SyntheticDatasetConfig, "folder": FolderDatasetConfig,
                   "urbansound8k": UrbanSound8KDatasetConfig, "fsdkaggle2018": FSDKaggle2018DatasetConfig}


@dataclass
class FeaturesConfig:
    kind: str = "mel"  # mel | mfcc | stft | fbank (Kaldi's log-mel filter bank, AST's) | efficientat (EfficientAT's own)
    # | pcen (mel energies, PCEN in place of the log) | leaf (learnt Gabor filters + pooling + PCEN)
    # | waveform (the waveform itself, for model=envnet_v2); docs/models.md
    sample_rate: int = 16000
    n_fft: int = 1024
    win_length: Optional[int] = None  # default: n_fft
    hop_length: int = 160
    n_mels: int = 64
    n_mfcc: int = 40
    f_min: float = 0.0
    f_max: Optional[float] = None
    top_db: Optional[float] = 80.0
    # Mel filter bank: htk (torchaudio's default) or slaney (librosa's default: Slaney scale and
    # area-normalised triangles, what PANNs' weights were trained with).
    mel_scale: str = "htk"
    # instance: per clip (the default: a clip's level, hence the microphone's gain, does not change
    # the model's input; benchmarks/robustness.py); dataset: per-frequency mean/std from the
    # training folds (level-sensitive: -20 dB cost 51 points); none: raw decibels.
    normalize: str = "instance"
    # Compute features once per run and augment spectrograms (fast). False
    # recomputes them from waveforms for every batch.
    precompute: bool = True
    # CPU runs: keep computed spectrograms on disk (beside the waveform cache) so
    # the next run with the same clips and features starts seconds sooner.
    cache: bool = True
    # features.kind=pcen (esc_sweep/features/pcen.py): librosa.pcen's defaults; the smoother's s
    # comes from the time constant. pcen_trainable: alpha, delta and r learnt per mel band.
    pcen_alpha: float = 0.98
    pcen_delta: float = 2.0
    pcen_r: float = 0.5
    pcen_time_constant: float = 0.4  # seconds
    pcen_eps: float = 1e-6
    pcen_trainable: bool = False


@dataclass
class ModelConfig:
    """model.*: which network, and how it starts (esc_sweep/models/; conf/model/<option>.yaml)."""

    # A registered model (esc_sweep.models.list_models(): baseline_cnn, panns_cnn6/10/14,
    # efficientat_mn01 ... mn10, hf) or any other timm model name (resnet18, efficientnet_b0, ...).
    name: str = "baseline_cnn"
    pretrained: bool = False  # timm models only: ImageNet weights (needs internet)
    dropout: float = 0.2  # before the classifier (PANNs: also inside the trunk); unused by hf (hidden_dropout_prob)
    drop_path: float = 0.0  # timm models only: stochastic depth rate
    # Start from a trained esc_sweep bundle (fine-tuning; new classifier head).
    init_from: Optional[str] = None
    # Channels of the first stage of baseline_cnn and the PANNs (64: the published PANNs); ignored by
    # timm, EfficientAT and hf models.
    width: int = 32
    # Extra keyword arguments for timm.create_model; for model.name=hf, hf_config (a transformers config).
    kwargs: Dict[str, Any] = field(default_factory=dict)
    # Pretrained weights (docs/transfer.md): a local file or folder, an http(s) URL (downloaded once
    # into the weights cache, resumable), a named checkpoint (panns:cnn14, efficientat:mn10_as) or,
    # for model.name=hf, a Hugging Face hub id. The classifier head always starts fresh.
    weights: Optional[str] = None
    weights_sha256: Optional[str] = None  # pin the weights file: a mismatch deletes it and stops
    # The front end the weights expect (features.* keys: sample_rate, n_mels, ...), composed by the
    # model's yaml from conf/model/front_end/; with model.weights, features.* that differ are refused
    # (or warned about). Empty for models without published audio weights.
    front_end: Dict[str, Any] = field(default_factory=dict)
    front_end_check: str = "refuse"  # refuse | warn
    # full: train everything; linear_probe: frozen backbone, only the head learns;
    # freeze_then_unfreeze: head only for model.unfreeze_epoch epochs, then everything.
    finetune: str = "full"
    unfreeze_epoch: int = 1


@dataclass
class AugmentationConfig:
    name: str = "none"
    gain_db: float = 0.0  # random gain in [-gain_db, +gain_db] dB
    time_shift: float = 0.0  # random circular shift, fraction of the clip
    # Train on a random window of this many seconds of each clip (0: whole clips).
    # Cheaper steps; evaluation always uses whole clips.
    crop_seconds: float = 0.0
    freq_masks: int = 0
    freq_mask_width: int = 0
    time_masks: int = 0
    time_mask_width: int = 0
    mixup_alpha: float = 0.0  # 0 disables mixup
    mixup_prob: float = 1.0
    # Imitate lower sample rates: with this probability a clip loses the bins above a random
    # cutoff within the top band_limit_max_fraction of the frequency axis (0: off).
    band_limit_prob: float = 0.0
    band_limit_max_fraction: float = 0.4
    # Level of the removed band below the clip's peak, dB: what silence becomes after the dB
    # clamp, so keep it equal to features.top_db (80).
    band_limit_floor_db: float = 80.0
    # Between-class learning (Tokozume et al. 2018): each clip mixed with one of another class at
    # r ~ U(0, 1), level-aware for waveforms, trained on the mixed label with the KL divergence.
    # Replaces mixup (mixup_alpha is then ignored).
    bc_learning: bool = False


@dataclass
class OptimizerConfig:
    # adamw | sgd | adam, or a dotted torch.optim / timm.optim class path.
    name: str = "adamw"
    lr: float = 1e-3
    weight_decay: float = 1e-2
    momentum: float = 0.9
    nesterov: bool = True
    betas: List[float] = field(default_factory=lambda: [0.9, 0.999])
    # Layer-wise lr decay: a backbone layer d steps below the head learns at lr * layer_decay**d (1: off).
    layer_decay: float = 1.0
    head_lr_scale: float = 1.0  # the classifier head's lr is lr * head_lr_scale


@dataclass
class SchedulerConfig:
    name: str = "cosine"  # cosine | onecycle | none
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.01
    pct_start: float = 0.3  # onecycle


@dataclass
class DistillConfig:
    """trainer.distill: knowledge distillation from a trained teacher (esc_sweep/training/distill.py)."""

    # A bundle folder or a fold ensemble (<run>/bundle_ensemble, trainer.keep_fold_models=true); null: off.
    teacher: Optional[str] = None
    # loss = alpha * KL(teacher_T || student_T) * T^2 + (1 - alpha) * CE(labels)
    alpha: float = 0.5
    temperature: float = 2.0


@dataclass
class TrainerConfig:
    epochs: int = 30
    batch_size: int = 64
    eval_batch_size: int = 256
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    amp: bool = True  # bf16 autocast on GPU; ignored on CPU
    compile: bool = False  # torch.compile the model
    channels_last: bool = True  # NHWC activations: faster convolutions on GPU and CPU
    # The dry run estimates one training step's memory (weights, gradients, optimizer state, a batch's
    # activations) and refuses a config above this many GB, before allocating any of it.
    # null: the training device's memory (the machine's RAM on CPU).
    max_memory_gb: Optional[float] = None
    seed: int = 0
    deterministic: bool = True
    # Default: every fold of the chosen data set (5 for ESC-50, 10 for UrbanSound8K, [1] = the test split of a
    # holdout), through the esc_sweep_all_folds resolver (register_configs).
    folds: List[int] = "${esc_sweep_all_folds:${dataset.num_folds},${dataset.protocol}}"  # type: ignore[assignment]
    # Repeat the whole CV this many times with seeds seed, seed+1, ... (the folds stay the official
    # ones): accuracy mean and std over repeats x folds, plus the seed-to-seed spread. Costs N runs.
    repeats: int = 1
    label_smoothing: float = 0.0
    grad_clip: float = 0.0  # 0 disables
    ema_decay: float = 0.0  # 0 disables; evaluation then uses the EMA weights
    # How decisions (early stopping, the sweep objective) are made:
    #   none      - fixed epochs; the test fold is only scored (no decision reads it)
    #   inner     - a validation split carved from each outer fold's training folds (stratified,
    #               grouped by source recording) decides; the test fold is only scored: honest
    #   test_fold - the held-out fold itself decides (the usual ESC-50 practice): optimistic
    validation: str = "none"
    inner_fraction: float = 0.15  # share of the training clips held out for trainer.validation=inner
    # What a sweep maximises (the value the run returns): acc (accuracy) or map3 (mean average precision at 3,
    # FSDKaggle2018's metric); read on the inner split with validation=inner, else on the test folds.
    objective: str = "acc"
    # Stop a fold when the deciding accuracy (inner or test fold) has not improved for this many
    # epochs (0: off). Needs trainer.validation=inner or test_fold.
    early_stopping_patience: int = 0
    # Measure train accuracy (eval mode, no augmentation) every N epochs; the
    # last epoch is always measured.
    train_eval_every: int = 1
    num_threads: Optional[int] = None  # CPU threads; default: torch's choice
    # Folds trained at once, each in its own process (training/parallel.py); 1 = one after another.
    # Results equal a sequential run's with the same num_threads (threads per fold process).
    parallel_folds: int = 1
    # Skip folds already finished by an identical, interrupted run.
    resume: bool = True
    # Save a fold's whole training state every N epochs (0: never), so an interrupted run resumes
    # inside the fold with the numbers an uninterrupted one gets. A save took 0.06 s for baseline_cnn
    # (6 MB) and 0.4-1.3 s for resnet18 (180 MB) on the dev machine; raise N on a GPU with a large model.
    checkpoint_every: int = 1
    checkpoint_dir: Optional[str] = None  # default: <original cwd>/outputs/checkpoints
    # After the CV, retrain on all folds and save a model bundle.
    final_fit: bool = False
    # With final_fit: also save the CV's fold models as one ensemble bundle (bundle_ensemble/, its
    # predict averages them; no extra training). Disk: one model per fold (baseline_cnn: ~1 MB each,
    # resnet18: ~45 MB each). Needs at least 2 folds trained in this process.
    save_fold_ensemble: bool = True
    # Save that fold ensemble even without a final fit. Each member can be scored honestly only on
    # its own held-out fold (benchmarks/robustness.py --fold-members does that for every fold).
    keep_fold_models: bool = False
    # Test-time augmentation: classify this many evenly spaced crops of each test clip and average
    # their probabilities (training/tta.py; crop length augmentation.crop_seconds, else 0.8 of the
    # clip). Logged as val_acc_tta beside val_acc, and the default of a bundle's predict. 0 or 1: off.
    tta_crops: int = 0
    # Progress bars with ETAs on a terminal; false: a plain line every 15 s or so (as in a log file).
    progress: bool = True
    # Stop after the dry run (features, model, optimizer and one step on dummy data; no data is read).
    dry_run: bool = False
    distill: DistillConfig = field(default_factory=DistillConfig)


@dataclass
class TrackingConfig:
    enabled: bool = True
    # Empty: $MLFLOW_TRACKING_URI, else sqlite:///<original cwd>/mlruns/mlflow.db
    uri: Optional[str] = None
    experiment_name: str = "esc_sweep"
    run_name: Optional[str] = None
    log_models: bool = False
    # CPU, memory, disk, network (GPU with nvidia-ml-py) usage of the CV run as system/... metrics,
    # one sample every 10 s (MLflow's SystemMetricsMonitor; MLFLOW_SYSTEM_METRICS_SAMPLING_INTERVAL changes it).
    system_metrics: bool = True


@dataclass
class SweepConfig:
    """Filled in by the esc_sweep Optuna sweeper for each trial; empty otherwise."""

    study_name: Optional[str] = None
    storage: Optional[str] = None
    trial_number: Optional[int] = None
    parent_run_id: Optional[str] = None
    # Report intermediate values per epoch of the first fold as well as per fold.
    report_epochs: bool = False


@dataclass
class Config:
    dataset: DatasetBase = MISSING  # one of DATASET_SCHEMAS, chosen by the dataset config
    features: FeaturesConfig = MISSING
    model: ModelConfig = MISSING
    augmentation: AugmentationConfig = MISSING
    optimizer: OptimizerConfig = MISSING
    scheduler: SchedulerConfig = MISSING
    trainer: TrainerConfig = MISSING
    tracking: TrackingConfig = MISSING
    sweep: SweepConfig = field(default_factory=SweepConfig)
    task_name: str = "cv"


def register_configs() -> None:
    cs = ConfigStore.instance()
    cs.store(name="config_schema", node=Config, replace=True)
    for kind, schema in DATASET_SCHEMAS.items():
        cs.store(name=f"dataset_{kind}_schema", node=schema, replace=True)
    # ${esc_sweep_run_tag:} in hydra.run.dir: the process id and a random suffix, so two runs
    # started in the same second (or on two machines sharing a folder) never share an output folder.
    if not OmegaConf.has_resolver("esc_sweep_run_tag"):
        OmegaConf.register_resolver("esc_sweep_run_tag", _run_tag, use_cache=True)
    # ${esc_sweep_all_folds:${dataset.num_folds},${dataset.protocol}}: trainer.folds' default, every fold
    # of the chosen data set (5 for ESC-50, 10 for UrbanSound8K, the one test split of a holdout).
    if not OmegaConf.has_resolver("esc_sweep_all_folds"):
        OmegaConf.register_resolver("esc_sweep_all_folds", all_folds)


# One run per fold: more folds than this is a typo (dataset.num_folds=2**31 built a list of 2**31 folds
# before validate() could name it, 20 GB, and the kernel killed the process).
MAX_FOLDS = 100


def all_folds(num_folds: Any, protocol: Any = "cv") -> list[int]:
    """Every fold of a data set: 1..num_folds, or [1] (the test split) for a holdout."""
    if str(protocol) == "holdout":
        return [1]
    try:
        count = int(num_folds)
    except (TypeError, ValueError):
        count = -1
    if not 1 <= count <= MAX_FOLDS:
        return [1, 2, 3, 4, 5]  # validate() names the bad dataset.num_folds
    return list(range(1, count + 1))

def _run_tag() -> str:
    return f"{os.getpid()}{secrets.token_hex(2)}"


# --------------------------------------------------------------------------
# Value checks


def _dataset_kind(args: list[str]) -> tuple[str, Optional[str]]:
    """(the dataset option, its kind) a training command line picks; kind None when it cannot tell.

    Read from the command line and conf/dataset/<option>.yaml only (no Hydra composition):
    ``dataset.kind=...`` wins, then the option's file; an option from the user's own config
    path, or a sweep over several options, gives None.
    """
    option, kind = "esc50", None
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if key == "dataset":
            option = value
        elif key == "dataset.kind":
            kind = value
    if kind is None and "," not in option:
        path = os.path.join(os.path.dirname(__file__), "conf", "dataset", f"{option}.yaml")
        if os.path.isfile(path):
            kind = OmegaConf.load(path).get("kind")
    return option, kind


def dataset_override_problems(args: list[str]) -> list[str]:
    """One line per ``dataset.KEY=...`` override that the chosen dataset kind has no use for.

    Each kind's schema holds only its keys (``DATASET_SCHEMAS``), so Hydra would refuse such a
    key too, in six lines of its own; this says it in one, before Hydra runs, and names the kind
    the key belongs to.
    """
    option, kind = _dataset_kind(args)
    if kind not in DATASET_SCHEMAS:
        return []
    own = set(DATASET_SCHEMAS[kind].__dataclass_fields__)
    problems = []
    for arg in args:
        key, _, value = arg.lstrip("+~").partition("=")
        if not key.startswith("dataset.") or key.count(".") != 1:
            continue
        name = key.split(".", 1)[1]
        if name in own:
            continue
        owners = [k for k, schema in DATASET_SCHEMAS.items() if name in schema.__dataclass_fields__]
        where = (f"applies to dataset.kind={'/'.join(owners)} only" if owners else "is not a dataset key")
        hint = {"num_classes": "; pick classes with dataset.classes=[dog,rain,...]"}.get(name, "") if kind == "esc50" else ""
        problems.append(f"{key}={value}: {where}; dataset={option} is dataset.kind={kind} "
                        f"(its keys: {', '.join(DATASET_SCHEMAS[kind].__dataclass_fields__)}){hint}")
    return problems




_CHOICES = {
    "dataset.kind": tuple(DATASET_SCHEMAS),
    "dataset.protocol": ("cv", "holdout"),
    "dataset.short_clips": ("pad", "repeat"),
    "dataset.label": ("target", "category"),
    "features.kind": ("mel", "mfcc", "stft", "fbank", "efficientat", "pcen", "leaf", "waveform"),
    "features.normalize": ("dataset", "instance", "none"),
    "scheduler.name": ("cosine", "onecycle", "none"),
    "trainer.validation": ("none", "inner", "test_fold"),
    "trainer.objective": ("acc", "map3"),
    "features.mel_scale": ("htk", "slaney"),
    "model.finetune": ("full", "linear_probe", "freeze_then_unfreeze"),
    "model.front_end_check": ("refuse", "warn"),
}


def _get(cfg: Any, key: str) -> Any:
    return OmegaConf.select(cfg, key) if isinstance(cfg, DictConfig) else _getattr_path(cfg, key)


def _getattr_path(obj: Any, key: str) -> Any:
    for part in key.split("."):
        obj = getattr(obj, part)
    return obj


def validate(cfg: Any) -> None:
    """Raise ConfigError naming every invalid value (all of them, not just the first)."""
    problems: list[str] = []

    def check(ok: bool, key: str, rule: str) -> None:
        if not ok:
            problems.append(f"{key}={_get(cfg, key)!r}: {rule}")

    for key, options in _CHOICES.items():
        check(_get(cfg, key) in options, key, f"must be one of {', '.join(options)}")

    positive = [
        "optimizer.lr",
        "trainer.epochs",
        "trainer.batch_size",
        "trainer.eval_batch_size",
        "trainer.train_eval_every",
        "trainer.repeats",
        "features.sample_rate",
        "features.n_fft",
        "features.hop_length",
        "features.n_mels",
        "features.n_mfcc",
        "dataset.clip_seconds",
        "dataset.num_folds",
        "model.width",
    ]
    for key in positive:
        value = _get(cfg, key)
        check(value is not None and _finite(value) and value > 0, key, "must be > 0")

    non_negative = [
        "optimizer.weight_decay",
        "augmentation.gain_db",
        "augmentation.freq_masks",
        "augmentation.freq_mask_width",
        "augmentation.time_masks",
        "augmentation.time_mask_width",
        "augmentation.mixup_alpha",
        "augmentation.crop_seconds",
        "augmentation.band_limit_floor_db",
        "scheduler.warmup_epochs",
        "trainer.grad_clip",
        "trainer.early_stopping_patience",
        "trainer.checkpoint_every",
        "trainer.tta_crops",
        "model.drop_path",
    ]
    for key in non_negative:
        value = _get(cfg, key)
        check(_finite(value) and value >= 0, key, "must be >= 0")

    unit_interval = [
        "augmentation.band_limit_prob",
        "augmentation.band_limit_max_fraction",
        "model.dropout",
        "augmentation.time_shift",
        "augmentation.mixup_prob",
        "trainer.label_smoothing",
        "scheduler.min_lr_ratio",
    ]
    for key in unit_interval:
        value = _get(cfg, key)
        check(_finite(value) and 0 <= value <= 1, key, "must be between 0 and 1")
    check(0 <= _get(cfg, "trainer.ema_decay") < 1, "trainer.ema_decay", "must be in [0, 1)")
    check(0 < _get(cfg, "scheduler.pct_start") < 1, "scheduler.pct_start", "must be in (0, 1)")

    limit = _get(cfg, "trainer.max_memory_gb")
    check(limit is None or (_finite(limit) and limit > 0), "trainer.max_memory_gb", "must be > 0 (or null: the device's)")
    parallel = _get(cfg, "trainer.parallel_folds")
    check(isinstance(parallel, int) and 1 <= parallel <= 64, "trainer.parallel_folds", "must be between 1 and 64")
    threads = _get(cfg, "trainer.num_threads")
    check(threads is None or (isinstance(threads, int) and threads >= 1), "trainer.num_threads",
          "must be >= 1 (or null for PyTorch's choice)")

    num_folds = _get(cfg, "dataset.num_folds")
    check(not isinstance(num_folds, int) or num_folds <= MAX_FOLDS, "dataset.num_folds",
          f"must be at most {MAX_FOLDS} (one run per fold)")
    folds = list(_get(cfg, "trainer.folds") or [])
    check(len(folds) > 0, "trainer.folds", "must name at least one fold")
    if isinstance(num_folds, int) and num_folds > 0 and _get(cfg, "dataset.protocol") != "holdout":
        bad = [f for f in folds if not (isinstance(f, int) and 1 <= f <= num_folds)]
        check(not bad, "trainer.folds", f"folds must be between 1 and {num_folds}")
    check(len(set(folds)) == len(folds), "trainer.folds", "must not repeat a fold")
    if _get(cfg, "dataset.kind") == "esc50":
        check(num_folds == 5, "dataset.num_folds", "ESC-50 has exactly 5 official folds")
    problems += _dataset_problems(cfg)
    if _get(cfg, "dataset.kind") == "synthetic":
        check(_get(cfg, "dataset.num_classes") >= 2, "dataset.num_classes", "must be >= 2")
        check(
            _get(cfg, "dataset.clips_per_class") >= num_folds,
            "dataset.clips_per_class",
            "needs at least one clip per fold",
        )
    device = str(_get(cfg, "trainer.device"))
    check(
        device in ("auto", "cpu", "cuda", "mps") or device.startswith("cuda:"),
        "trainer.device",
        "must be auto, cpu, cuda, cuda:N or mps",
    )
    f_max = _get(cfg, "features.f_max")
    nyquist = _get(cfg, "features.sample_rate") / 2
    check(f_max is None or 0 < f_max <= nyquist, "features.f_max", f"must be in (0, {nyquist}]")
    check(0 <= _get(cfg, "features.f_min") < (f_max or nyquist), "features.f_min", "must be in [0, f_max)")
    win = _get(cfg, "features.win_length")
    check(win is None or 0 < win <= _get(cfg, "features.n_fft"), "features.win_length", "must be in (0, n_fft]")
    check(bool(str(_get(cfg, "model.name")).strip()), "model.name", "must not be empty")
    check(_get(cfg, "trainer.early_stopping_patience") == 0 or _get(cfg, "trainer.validation") != "none",
          "trainer.early_stopping_patience",
          "needs a split to decide on: set trainer.validation=inner (honest) or test_fold (optimistic)")
    fraction = _get(cfg, "trainer.inner_fraction")
    check(_finite(fraction) and 0 < fraction < 0.5, "trainer.inner_fraction", "must be in (0, 0.5)")
    # Parameters grow with width squared: 1024 is already ~400 M; larger is a typo, and allocating it hangs a machine.
    width = _get(cfg, "model.width")
    check(not _finite(width) or width <= 1024, "model.width", "must be <= 1024")
    if _get(cfg, "features.kind") == "mfcc":
        check(_get(cfg, "features.n_mfcc") <= _get(cfg, "features.n_mels"), "features.n_mfcc",
              "must be <= features.n_mels")
    window, n_fft = win or _get(cfg, "features.n_fft"), _get(cfg, "features.n_fft")
    if _get(cfg, "features.kind") == "fbank" and isinstance(window, int) and window > 0:
        # Kaldi pads each window to the next power of two; n_fft says so rather than being silently ignored.
        padded = 1 << (window - 1).bit_length()
        check(n_fft == padded, "features.n_fft", f"must be {padded} for features.kind=fbank (the window, "
              f"{window} samples, zero-padded to a power of two as Kaldi does)")

    layer_decay = _get(cfg, "optimizer.layer_decay")
    check(_finite(layer_decay) and 0 < layer_decay <= 1, "optimizer.layer_decay", "must be in (0, 1]")
    head_scale = _get(cfg, "optimizer.head_lr_scale")
    check(_finite(head_scale) and head_scale > 0, "optimizer.head_lr_scale", "must be > 0")
    if _get(cfg, "model.finetune") == "freeze_then_unfreeze":
        unfreeze = _get(cfg, "model.unfreeze_epoch")
        check(isinstance(unfreeze, int) and 1 <= unfreeze < _get(cfg, "trainer.epochs"), "model.unfreeze_epoch",
              "must be between 1 and trainer.epochs - 1 for model.finetune=freeze_then_unfreeze")
    sha = _get(cfg, "model.weights_sha256")
    check(sha is None or bool(re.fullmatch(r"(sha256:)?[0-9a-fA-F]{64}", str(sha).strip())), "model.weights_sha256",
          "must be a sha256 hex digest (64 hex digits)")
    problems += _front_end_problems(cfg)
    problems += _distill_problems(cfg)
    problems += _waveform_problems(cfg)

    if problems:
        raise ConfigError("invalid config:\n  " + "\n  ".join(problems))


# The kinds whose data can carry a train/test split, and those that have folds.
_HOLDOUT_KINDS = ("folder", "fsdkaggle2018")
_CV_KINDS = ("esc50", "synthetic", "folder", "urbansound8k")


def _dataset_problems(cfg: Any) -> list[str]:
    """dataset.protocol, variable_length and their neighbours, before any file is read."""
    kind, protocol = _get(cfg, "dataset.kind"), _get(cfg, "dataset.protocol")
    problems = []
    if protocol == "holdout" and kind not in _HOLDOUT_KINDS:
        problems.append(f"dataset.protocol=holdout: dataset.kind={kind} has no train/test split, only folds; "
                        f"use dataset.protocol=cv (holdout: {', '.join(_HOLDOUT_KINDS)} with a split column)")
    if protocol == "holdout" and kind == "folder" and not _get(cfg, "dataset.csv"):
        problems.append("dataset.protocol=holdout: set dataset.csv to a CSV with columns filename,label,split "
                        "(split = train or test); class sub-folders have no split")
    if protocol == "cv" and kind not in _CV_KINDS:
        problems.append(f"dataset.protocol=cv: dataset.kind={kind} has an official train/test split and no folds; "
                        f"use dataset.protocol=holdout")
    folds = list(_get(cfg, "trainer.folds") or [])
    if protocol == "holdout" and folds != [1]:
        problems.append(f"trainer.folds={folds}: a holdout has one test split, fold 1; drop the override "
                        f"(the default is every fold of the data set) or set trainer.folds=[1]")
    variable = bool(_get(cfg, "dataset.variable_length"))
    if variable and kind == "synthetic":
        problems.append("dataset.variable_length=true: generated tones all have dataset.clip_seconds; set it false")
    if variable and int(_get(cfg, "trainer.tta_crops") or 0) > 1:
        problems.append("trainer.tta_crops: with dataset.variable_length=true every clip is already scored over "
                        "all its windows (predict's); set trainer.tta_crops=0")
    if variable and _get(cfg, "trainer.distill") is not None and _get(cfg, "trainer.distill.teacher"):
        problems.append("trainer.distill.teacher: distillation needs fixed-length clips; set "
                        "dataset.variable_length=false")
    if variable and float(_get(cfg, "augmentation.crop_seconds") or 0) > 0:
        problems.append("augmentation.crop_seconds: with dataset.variable_length=true the training crops are "
                        "dataset.clip_seconds long already; set augmentation.crop_seconds=0")
    if not variable and _get(cfg, "dataset.short_clips") == "repeat":
        problems.append("dataset.short_clips=repeat: only variable-length clips are repeated (fixed-length ones "
                        "are zero-padded when decoded); set dataset.variable_length=true or short_clips=pad")
    if kind == "fsdkaggle2018":
        weight = _get(cfg, "dataset.unverified_weight")
        if not (_finite(weight) and 0 <= weight <= 1):
            problems.append(f"dataset.unverified_weight={weight!r}: must be between 0 and 1")
    return problems


# Models whose input is the waveform (features.kind=waveform), and only they.
WAVEFORM_MODELS = ("envnet_v2",)


def _waveform_problems(cfg: Any) -> list[str]:
    """features.kind=waveform goes with the waveform models only; PCEN's values."""
    problems = []
    kind, model = _get(cfg, "features.kind"), str(_get(cfg, "model.name"))
    if kind == "waveform" and model not in WAVEFORM_MODELS:
        problems.append(f"features.kind=waveform: model.name={model} takes a spectrogram; use "
                        f"model={'/'.join(WAVEFORM_MODELS)} or another features.kind")
    if model in WAVEFORM_MODELS and kind != "waveform":
        problems.append(f"model.name={model}: takes the waveform; features.kind={kind} must be waveform "
                        f"(drop the features override)")
    if kind == "pcen":
        for key in ("pcen_alpha", "pcen_delta", "pcen_r", "pcen_time_constant", "pcen_eps"):
            value = _get(cfg, f"features.{key}")
            if not (_finite(value) and value > 0):
                problems.append(f"features.{key}={value!r}: must be > 0")
    return problems


def _distill_problems(cfg: Any) -> list[str]:
    """trainer.distill's values; the teacher itself (a bundle, its folds and classes) is checked by
    esc_sweep.training.distill before any data is read."""
    if _get(cfg, "trainer.distill") is None or _get(cfg, "trainer.distill.teacher") is None:
        return []
    problems = []
    alpha, temperature = _get(cfg, "trainer.distill.alpha"), _get(cfg, "trainer.distill.temperature")
    if not (_finite(alpha) and 0 <= alpha <= 1):
        problems.append(f"trainer.distill.alpha={alpha!r}: must be between 0 and 1")
    if not (_finite(temperature) and temperature > 0):
        problems.append(f"trainer.distill.temperature={temperature!r}: must be > 0")
    if not str(_get(cfg, "trainer.distill.teacher")).strip():
        problems.append("trainer.distill.teacher='': give a bundle folder or a fold ensemble folder, or null")
    return problems


def front_end_mismatches(cfg: Any) -> dict[str, tuple[Any, Any]]:
    """features.* values that differ from what the weights expect (model.front_end): {key: (have, want)}."""
    expected = _get(cfg, "model.front_end") or {}
    mismatches = {}
    for key, want in dict(expected).items():
        have = _get(cfg, f"features.{key}")
        same = have == want or (_finite(have) and _finite(want) and math.isclose(float(have), float(want)))
        if not same:
            mismatches[key] = (have, want)
    return mismatches


def _front_end_problems(cfg: Any) -> list[str]:
    """A front end the weights were not trained with is the classic silent failure: refuse it, or warn loudly."""
    if not _get(cfg, "model.weights"):
        return []  # random initialisation: any front end is as good as another
    mismatches = front_end_mismatches(cfg)
    if not mismatches:
        return []
    have = ", ".join(f"features.{k}={v[0]!r}" for k, v in mismatches.items())
    want = ", ".join(f"{k}={v[1]!r}" for k, v in mismatches.items())
    line = (f"{have}: model.weights={_get(cfg, 'model.weights')} expects {want} (model.front_end); "
            f"drop the features overrides or set model.front_end_check=warn")
    if _get(cfg, "model.front_end_check") == "warn":
        logging.getLogger("esc_sweep").warning("front end mismatch: %s", line)
        return []
    return [line]


def _finite(value: Any) -> bool:
    try:
        return math.isfinite(float(value))
    except (TypeError, ValueError):
        return False
