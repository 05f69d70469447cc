"""Generated configs: every sampled value either passes validation and the dry run (and trains one step),
or is refused with one ConfigError line that names a key. Never a traceback, a hang or a huge allocation.

The keys and their types come from the structured-config schema itself, so a new key is covered
without editing this file.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import typing
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from esc_sweep.config import _CHOICES, Config, validate
from esc_sweep.errors import EscSweepError
from esc_sweep.safety import check_targets
from esc_sweep.training.dry_run import dry_run
from tests.conftest import compose_config

# Keys that point at files, stores or the network, or only change bookkeeping: not the dry run's business.
SKIP = {"dataset.root", "dataset.download", "dataset.url", "dataset.archive_sha256", "dataset.download_dir",
        "dataset.cache_dir", "dataset.csv", "dataset.synthetic_seed", "trainer.checkpoint_dir", "trainer.resume",
        "trainer.progress", "trainer.dry_run", "trainer.final_fit", "trainer.num_threads", "model.init_from",
        "model.pretrained", "model.kwargs", "features.cache", "dataset.kind", "dataset.name", "augmentation.name",
        "trainer.compile", "trainer.folds", "dataset.classes", "trainer.distill",  # distill: a teacher folder
        "trainer.max_memory_gb"}  # fixed in BASE: the dry run refuses what would not fit under the cap below
BASE = ["dataset=synthetic", "dataset.clips_per_class=10", "dataset.clip_seconds=0.5", "features.n_mels=32",
        "features.n_fft=256", "model.width=8", "tracking.enabled=false", "trainer.device=cpu",
        "trainer.max_memory_gb=4"]


def _schema_keys() -> dict[str, type]:
    keys = {}
    for section in dataclasses.fields(Config):
        schema = section.type if isinstance(section.type, type) else typing.get_type_hints(Config)[section.name]
        if not dataclasses.is_dataclass(schema) or section.name in ("tracking", "sweep"):
            continue
        hints = typing.get_type_hints(schema)
        for field in dataclasses.fields(schema):
            key = f"{section.name}.{field.name}"
            if key not in SKIP:
                keys[key] = hints[field.name]
    return keys


KEYS = _schema_keys()


def _values(kind: type) -> st.SearchStrategy:
    kind = next((a for a in typing.get_args(kind) if a is not type(None)), kind)  # Optional[X] -> X
    if kind is bool:
        return st.booleans()
    if kind is int:
        return st.one_of(st.integers(-3, 3), st.integers(0, 4096), st.sampled_from([2**31, -(2**31)]))
    if kind is float:
        return st.one_of(st.floats(-2, 2), st.floats(0, 100), st.sampled_from([0.0, 1e-9, 1e9, math.inf, math.nan]))
    if typing.get_origin(kind) in (list, typing.List):
        return st.lists(st.floats(-1, 2, allow_nan=False), min_size=0, max_size=3)
    return st.text(alphabet="abcdefghijklmnopqrstuvwxyz_.", min_size=0, max_size=12)


@st.composite
def overrides(draw) -> dict[str, typing.Any]:
    chosen = draw(st.lists(st.sampled_from(sorted(KEYS)), min_size=1, max_size=3, unique=True))
    values = {}
    for key in chosen:
        if key in _CHOICES and draw(st.booleans()):
            values[key] = draw(st.sampled_from(_CHOICES[key]))
        else:
            values[key] = draw(_values(KEYS[key]))
    return values


OUTCOMES: Counter = Counter()
MEMORY_HEADROOM = 6 * 2**30  # what one dry run may add to the process's address space (> max_memory_gb=4)


@contextlib.contextmanager
def _memory_cap(headroom: int = MEMORY_HEADROOM):
    """Lower the address-space limit to the current size plus ``headroom`` for the block (Linux).

    Over it an allocation fails at once (torch raises), where without it the kernel's OOM killer
    ended the whole session (a 24 GB dry run). The old limit is restored afterwards.
    """
    try:
        import resource  # deferred: POSIX only
        with open("/proc/self/statm") as statm:
            address_space = int(statm.read().split()[0]) * resource.getpagesize()
    except (ImportError, OSError):
        yield
        return
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    cap = address_space + headroom
    if hard != resource.RLIM_INFINITY:
        cap = min(cap, hard)
    resource.setrlimit(resource.RLIMIT_AS, (cap, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def _override(key: str, value: typing.Any) -> str:
    if isinstance(value, str):
        return f"{key}='{value}'"
    if isinstance(value, float) and not math.isfinite(value):
        return f"{key}={'nan' if math.isnan(value) else ('inf' if value > 0 else '-inf')}"
    if isinstance(value, list):
        return f"{key}=[{','.join(map(repr, value))}]"
    return f"{key}={str(value).lower() if isinstance(value, bool) else value}"


def test_schema_walk_finds_the_numeric_and_choice_keys():
    assert {"features.n_fft", "features.hop_length", "model.width", "optimizer.lr", "augmentation.mixup_alpha",
            "trainer.batch_size", "features.kind", "scheduler.name"} <= set(KEYS)


@settings(max_examples=120, deadline=None, suppress_health_check=list(HealthCheck))
@given(overrides())
def test_sampled_config_is_proven_or_refused_in_one_line(values):
    try:
        with _memory_cap():  # composing resolves nothing yet; validate() resolves the interpolations
            cfg = compose_config(BASE + [_override(k, v) for k, v in values.items()])
    except MemoryError:
        pytest.fail(f"composing {values} ran out of memory")
    except Exception as err:  # Hydra refuses a value of the wrong type: the CLI prints it as one line, exit 1
        OUTCOMES["refused by Hydra's type check"] += 1
        assert "\n" not in str(err).strip().splitlines()[0]
        return
    try:
        # The whole check under the cap: dataset.num_folds=2**31 once built a 2**31-fold list inside
        # validate() (trainer.folds' default), outside the cap, and the kernel killed the session at 20 GB.
        with _memory_cap():
            validate(cfg)
            check_targets(cfg)
            proof = dry_run(cfg)
    except MemoryError:
        pytest.fail(f"{values} ran out of memory before it was refused")
    except EscSweepError as err:
        message = str(err)
        # "Never a huge allocation": a case over the cap is a failure that names its config, not a
        # refusal (and not an out-of-memory kill of the whole test session).
        assert "can't allocate memory" not in message, (values, message)
        OUTCOMES["refused: " + ("validate" if message.startswith("invalid config") else "dry run")] += 1
        if not message.startswith("invalid config"):
            assert "\n" not in message, message
        assert any(key.split(".")[0] in message for key in values) or "." in message, message
        return
    OUTCOMES["passed the dry run (one training step)"] += 1
    assert proof.num_parameters > 0 and proof.feature_shape[1] > 0


def test_generated_cases_reach_every_outcome():
    """The generator is not degenerate: its cases both pass the dry run and get refused.

    A generator whose every case Hydra refused (a wrong type everywhere) would let the property above
    pass while proving nothing about validate() or the dry run. Runs after the property test (file
    order); it skips only when that test was deselected (``-k``).
    """
    if not OUTCOMES:
        pytest.skip("the property test did not run in this session")
    print("generated config cases:", dict(OUTCOMES), "total", sum(OUTCOMES.values()))
    total = sum(OUTCOMES.values())
    passed = OUTCOMES["passed the dry run (one training step)"]
    refused_by_us = OUTCOMES["refused: validate"] + OUTCOMES["refused: dry run"]
    assert passed >= 0.05 * total, dict(OUTCOMES)
    assert refused_by_us >= 0.05 * total, dict(OUTCOMES)


def test_a_step_over_the_memory_limit_is_refused_before_it_allocates():
    """model.width=1000 (378 M parameters) once grew the test process to 20 GB until the kernel killed it.

    The estimate on the meta device refuses it in one line naming the limit; under a 1 GiB cap any real
    allocation of the model (1.4 GB of weights alone) would raise MemoryError instead.
    """
    from esc_sweep.errors import ConfigError

    cfg = compose_config(BASE + ["model.width=1000"])
    with _memory_cap(headroom=2**30), pytest.raises(ConfigError) as refused:
        dry_run(cfg)
    message = str(refused.value)
    assert "\n" not in message and "trainer.max_memory_gb=4" in message and "378 M parameters" in message, message


@settings(max_examples=12, deadline=None)
@given(batch=st.integers(1, 128), width=st.integers(4, 64))
def test_the_memory_estimate_grows_with_batch_and_width_and_covers_the_weights(batch, width):
    from esc_sweep.training.dry_run import estimated_step_bytes

    def estimate(b, w):
        cfg = compose_config(BASE + [f"trainer.batch_size={b}", f"model.width={w}"])
        return estimated_step_bytes(cfg, 5, (1, 32, 51))

    need, parameters = estimate(batch, width)
    assert need >= 16 * parameters  # weights, gradients, two optimizer moments (float32)
    assert estimate(batch + 1, width)[0] > need
    assert estimate(batch, width + 4)[0] > need
