"""Hydra's own Optuna sweeper test suite, run against ``hydra/sweeper=esc_optuna``.

esc_optuna claims to be a superset of the official ``hydra-optuna-sweeper``;
this runs the official ``tests/test_optuna_sweeper_plugin.py`` to check it:

* the hydra-optuna-sweeper sdist is downloaded with pip (cached in
  ``.cache/official-optuna-suite/``) and extracted to a temporary folder;
* the sdist has no ``example/`` and ``tests/conf/`` folders, which the suite
  needs: they come from hydra's repository at ``ASSETS_COMMIT`` (or from
  ``$OFFICIAL_OPTUNA_ASSETS``, a hydra checkout or a folder holding the two),
  checked against pinned SHA-256 digests and cached next to the sdist;
* for esc_optuna, only the sweeper is renamed: ``hydra/sweeper=optuna`` and
  ``override hydra/sweeper: optuna`` become ``esc_optuna``, and the
  ``OptunaSweeper`` class that ``test_discovery`` looks for becomes the class
  of the esc_optuna entry point. Impl-level tests (search-space parsing, grid
  choices, sampler configs) stay on the official functions, which esc_optuna
  imports and uses unchanged;
* pytest runs in a subprocess in the extracted folder (the suite uses
  relative paths), once per sweeper; outcomes are read from its JUnit XML;
* the official examples (sphere with TPE and with random sampling, the
  multi-objective one with NSGA-II, the custom search space, the grid) run once
  per sweeper on the same seed into SQLite studies: esc_optuna (compat mode, its
  default for apps without esc_sweep's ``sweep`` node) must give the official
  sweeper's trials, the same parameters in the same order.

Slow (``pytest -m slow tests/sweep/test_official_optuna_suite.py -rA``). Without the
pip registry, or without the assets, the tests skip. Run outside pytest with
``scripts/official_optuna_suite.sh`` (or ``python`` on this file).
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import urllib.request
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from importlib.metadata import entry_points
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
CACHE = REPO / ".cache" / "official-optuna-suite"

OFFICIAL_VERSION = "1.4.0rc3"
SDIST_NAME = f"hydra_optuna_sweeper-{OFFICIAL_VERSION}.tar.gz"
SDIST_SHA256 = "a3fb42c5dee7d35247d411cbd701805af884a6de2eb08a4b45d388500fd473f8"
SUITE = "tests/test_optuna_sweeper_plugin.py"

# Newest hydra commit we could read (hydra-ecosystem/hydra main); its example/
# and tests/conf/ were last changed by 94be5d1414. The 1.4.0rc3 release commit
# itself was not available, hence the known drift below.
ASSETS_REPO = "hydra-ecosystem/hydra"
ASSETS_COMMIT = "2c03d1b925fe239e0b67b923699d4027685f198f"
ASSETS_PREFIX = "plugins/hydra_optuna_sweeper"
ASSETS = {
    "example/conf/config.yaml": "d4016a35aeb6c6dda4a00cde802dbc7329d5fafb912d45601c8f311849d0ffce",
    "example/custom-search-space-objective.py": "6245c30151c107f33ca55d2e1301e5ef54bc46614a538e2d1c168d9c4d4de477",
    "example/custom-search-space/config.yaml": "a4ed1ffa82fe9d40d241c1934f3ed9a3f74997de6d94c545fbad7b33e451d629",
    "example/multi-objective-conf/config.yaml": "f5bae518ba7dd5cf404a5a2610621fea6a3f7631c8db247d766b6fd4a5a398a2",
    "example/multi-objective.py": "aa70daf78ffa8077f69e4cf5e010e6c23e7a1c827575670ebbc977fe7a4d97e1",
    "example/sphere.py": "5afd89cd8b051ab2f9879267a98a50541702f49239ce7e46d51e2c405334808a",
    "tests/conf/test_grid.yaml": "b0bbaf5daa50ada68b3beb654772ab1e56b80b6101b8dee465e04c76cfbb8df1",
    "tests/conf/test_motpe.yaml": "ded18d99e8b570995b240c1c7656e0dbe66ae67ec72d712204a17560c03ce651",
}

# Tests that fail with the official sweeper too, because of the assets, not the sweeper.
# They are forgiven for esc_optuna only while they also fail in the control run.
KNOWN_ASSET_DRIFT = {
    # The example names custom_search_space without an execution whitelist; 1.4.0rc3's
    # instantiate warns about that, and the suite runs the example with -Werror.
    "test_optuna_custom_search_space_example":
        "example/custom-search-space predates 1.4.0rc3's execution whitelist (UserWarning under -Werror)",
}
# What the drift's failure message says, for both sweepers: a failure that says something
# else is not forgiven.
DRIFT_SIGNATURE = {"test_optuna_custom_search_space_example": "UserWarning: hydra.utils.instantiate() resolved"}

# Two inner pytest runs: ~2.5 min while esc_optuna fails fast, ~3-5 min once its trials
# run (2 CPUs); plus ~40 s for the first sdist download.
pytestmark = pytest.mark.slow

SUITE_TIMEOUT_S = 1500  # the whole inner run
TEST_TIMEOUT_S = 300  # one inner test (pytest-timeout), so a hung sweep cannot hang the run


class Unavailable(Exception):
    """The official suite cannot be fetched here (no registry, no assets)."""


# ---------------------------------------------------------------- fetching


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def fetch_sdist() -> Path:
    """The hydra-optuna-sweeper sdist, from the cache or pip (``pip download``)."""
    target = CACHE / SDIST_NAME
    if not target.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=CACHE) as tmp:
            cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
                   f"hydra-optuna-sweeper=={OFFICIAL_VERSION}", "-d", tmp]
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
            found = list(Path(tmp).glob("hydra_optuna_sweeper-*.tar.gz"))
            if proc.returncode != 0 or not found:
                tail = " | ".join((proc.stdout + proc.stderr).strip().splitlines()[-3:])
                raise Unavailable(f"pip could not download hydra-optuna-sweeper=={OFFICIAL_VERSION} "
                                  f"(registry unreachable?): {tail}")
            shutil.move(str(found[0]), target)
    digest = _sha256(target)
    if digest != SDIST_SHA256:  # not a skip: the file is not the release we pinned
        raise AssertionError(f"{target} has SHA-256 {digest}, expected {SDIST_SHA256}; delete it to re-download")
    return target


def _assets_from(folder: Path) -> Path | None:
    for root in (folder, folder / ASSETS_PREFIX):
        if all((root / name).is_file() for name in ASSETS):
            return root
    return None


def fetch_assets() -> Path:
    """A folder holding the suite's ``example/`` and ``tests/conf/`` (see the module docstring)."""
    given = os.environ.get("OFFICIAL_OPTUNA_ASSETS")
    if given:
        root = _assets_from(Path(given))
        if root is None:
            raise AssertionError(f"$OFFICIAL_OPTUNA_ASSETS={given} lacks some of {sorted(ASSETS)}")
        return root  # the caller's choice: not checked against the pinned digests
    cached = CACHE / f"assets-{ASSETS_COMMIT[:12]}"
    missing = [n for n, digest in ASSETS.items()
               if not (cached / n).is_file() or _sha256(cached / n) != digest]
    for name in missing:
        url = f"https://raw.githubusercontent.com/{ASSETS_REPO}/{ASSETS_COMMIT}/{ASSETS_PREFIX}/{name}"
        try:
            with urllib.request.urlopen(url, timeout=30) as response:
                data = response.read()
        except OSError as err:
            raise Unavailable(
                f"the sdist has no example/ and tests/conf/; could not fetch {url} ({err}). "
                "Set OFFICIAL_OPTUNA_ASSETS to a hydra checkout (plugins/hydra_optuna_sweeper) instead."
            ) from err
        digest = hashlib.sha256(data).hexdigest()
        if digest != ASSETS[name]:
            raise AssertionError(f"{url} has SHA-256 {digest}, expected {ASSETS[name]}")
        (cached / name).parent.mkdir(parents=True, exist_ok=True)
        (cached / name).write_bytes(data)
    return cached


# ---------------------------------------------------------------- preparing


def esc_plugin_class() -> tuple[str, str]:
    """(module, class) of the esc_optuna plugin, from its Hydra entry point."""
    (ep,) = [e for e in entry_points(group="hydra.plugins") if e.name == "esc_optuna"]
    module, _, name = ep.value.partition(":")
    return module, name


def _replace(text: str, pattern: str, replacement: str, where: str, *, at_least: int = 1) -> str:
    new, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    if count < at_least:
        raise AssertionError(f"{where}: expected {pattern!r} at least {at_least}x, found {count}x "
                             "(the official suite changed: adapt the rewrite)")
    return new


def point_at_esc_optuna(root: Path) -> None:
    """Rewrite the extracted suite so every test uses esc_optuna, and nothing else changes."""
    suite = root / SUITE
    text = suite.read_text()
    text = _replace(text, r'"hydra/sweeper=optuna"', '"hydra/sweeper=esc_optuna"', SUITE, at_least=2)
    module, name = esc_plugin_class()
    text = _replace(text, r"^from hydra_plugins\.hydra_optuna_sweeper\.optuna_sweeper import OptunaSweeper$",
                    f"from {module} import {name} as OptunaSweeper", SUITE)
    suite.write_text(text)
    for config in sorted([*root.glob("example/**/*.yaml"), *root.glob("tests/conf/**/*.yaml")]):
        text = config.read_text()
        if "hydra/sweeper:" in text:
            config.write_text(_replace(text, r"^(\s*-\s*override\s+hydra/sweeper:\s*)optuna\s*$",
                                       r"\1esc_optuna", str(config.relative_to(root))))
    leftovers = [str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() and p.suffix in (".py", ".yaml")
                 and not p.is_relative_to(root / "hydra_plugins")
                 and re.search(r"hydra/sweeper(=|:\s*)optuna\b", p.read_text())]
    assert not leftovers, f"still pointing at the official sweeper: {leftovers}"


def prepare(dest: Path, sweeper: str) -> Path:
    """Extract the sdist and assets into ``dest``; for esc_optuna, rewrite the sweeper name."""
    sdist, assets = fetch_sdist(), fetch_assets()
    with tarfile.open(sdist) as tar:
        top = tar.getnames()[0].split("/")[0]
        try:
            tar.extractall(dest, filter="data")
        except TypeError:  # Python < 3.10.12: no extraction filters (the archive's digest is pinned)
            tar.extractall(dest)
    root = dest / top
    for name in ASSETS:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(assets / name, root / name)
    # An empty ini: the inner run takes no settings from any folder above it.
    (root / "pytest.ini").write_text("[pytest]\n")
    if sweeper == "esc_optuna":
        point_at_esc_optuna(root)
    return root


# ---------------------------------------------------------------- running


@dataclass
class SuiteResult:
    sweeper: str
    seconds: float
    outcomes: dict[str, str] = field(default_factory=dict)  # test id -> passed|failed|error|skipped
    messages: dict[str, str] = field(default_factory=dict)  # test id -> first line of its error
    output: str = ""

    def ids(self, *outcomes: str) -> set[str]:
        return {t for t, o in self.outcomes.items() if o in outcomes}

    @property
    def failed(self) -> set[str]:
        return self.ids("failed", "error")

    def summary(self) -> str:
        counts = {o: len(self.ids(o)) for o in ("passed", "failed", "error", "skipped")}
        return (f"{self.sweeper}: {counts['passed']} passed, {counts['failed']} failed, {counts['error']} errors, "
                f"{counts['skipped']} skipped of {len(self.outcomes)} in {self.seconds:.0f}s")

    def report(self) -> str:
        lines = [self.summary()]
        lines += [f"  FAILED {t}: {self.messages.get(t, '')}" for t in sorted(self.failed)]
        return "\n".join(lines)


_ERROR_LINE = re.compile(r"^error: .*$", re.MULTILINE)
_EXCEPTION_LINE = re.compile(r"^(?:[A-Za-z_][\w.]*\.)?[A-Z]\w*(?:Error|Exception|Warning): .*$", re.MULTILINE)


def _parse_junit(path: Path) -> tuple[dict[str, str], dict[str, str]]:
    outcomes, messages = {}, {}
    for case in ET.parse(path).getroot().iter("testcase"):
        test = case.get("name", "")
        outcome = "passed"
        for child in case:
            if child.tag in ("failure", "error", "skipped"):
                outcome = {"failure": "failed"}.get(child.tag, child.tag)
                text = (child.get("message") or child.text or "").strip()
                if text.startswith("subprocess.CalledProcessError"):
                    # The example app failed: its own last exception, from the captured stderr, says why.
                    stderr = "\n".join(e.text or "" for e in case.iter("system-err"))
                    # esc_optuna's one-line "error: ..." first, else the last exception line.
                    found = _ERROR_LINE.findall(stderr) or _EXCEPTION_LINE.findall(stderr)
                    text = f"example app failed: {found[-1]}" if found else text
                messages[test] = " ".join(text.split())[:300]
                break
        outcomes[test] = outcome
    return outcomes, messages


def run_suite(root: Path, sweeper: str) -> SuiteResult:
    junit = root / "junit.xml"
    cmd = [sys.executable, "-m", "pytest", SUITE, "-q", "-rfE", "-p", "no:cacheprovider",
           f"--basetemp={root / '.pytest-tmp'}", f"--junitxml={junit}", "-o", "junit_logging=all"]
    if importlib.util.find_spec("pytest_timeout") is not None:
        cmd.append(f"--timeout={TEST_TIMEOUT_S}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    start = time.monotonic()
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=SUITE_TIMEOUT_S)
    result = SuiteResult(sweeper, time.monotonic() - start, output=proc.stdout + proc.stderr)
    if not junit.exists():
        raise AssertionError(f"the {sweeper} suite did not run (exit {proc.returncode}):\n{result.output[-4000:]}")
    result.outcomes, result.messages = _parse_junit(junit)
    return result


def run(sweeper: str, workdir: Path) -> SuiteResult:
    workdir.mkdir(parents=True, exist_ok=True)
    return run_suite(prepare(workdir, sweeper), sweeper)


# ---------------------------------------------------------------- same seed, same trials

# The official examples, each run by both sweepers with the same seed (12 trials, one at a time).
EXAMPLE_CASES = {
    "sphere-tpe": ["example/sphere.py", "hydra/sweeper/sampler=tpe"],
    "sphere-random": ["example/sphere.py", "hydra/sweeper/sampler=random"],
    "multi-objective-nsgaii": ["example/multi-objective.py"],
    "custom-search-space-random": ["example/custom-search-space-objective.py", "hydra/sweeper/sampler=random"],
    "grid": ["example/sphere.py", "--config-dir=tests/conf", "--config-name=test_grid"],
}
EXAMPLE_TRIALS = 12


def example_trials(root: Path, args: list[str], out: Path) -> list[tuple]:
    """(state, sorted params) of each trial of one example run, in trial order."""
    import optuna

    out.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{out / 'study.db'}"
    cmd = [sys.executable, *args[:1], "--multirun", *args[1:], f"hydra.sweep.dir={out}",
           f"hydra.sweeper.storage={storage}", "hydra.sweeper.study_name=same-seed",
           f"hydra.sweeper.n_trials={EXAMPLE_TRIALS}", "hydra.sweeper.n_jobs=1", "hydra.sweeper.sampler.seed=123"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST_")}
    proc = subprocess.run(cmd, cwd=root, env=env, capture_output=True, text=True, timeout=TEST_TIMEOUT_S)
    assert proc.returncode == 0, f"{' '.join(args)} failed in {root}:\n{proc.stderr[-3000:]}"
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    study = optuna.load_study(study_name="same-seed", storage=storage)
    return [(t.state.name, tuple(sorted((k, round(v, 9) if isinstance(v, float) else v)
                                        for k, v in t.params.items()))) for t in study.trials]


def compare_examples(workdir: Path) -> dict[str, tuple[list, list]]:
    """case -> (official trials, esc_optuna trials)."""
    roots = {s: prepare(workdir / f"examples-{s}", s) for s in ("optuna", "esc_optuna")}
    return {case: tuple(example_trials(roots[s], args, workdir / f"out-{case}-{s}")  # type: ignore[misc]
                        for s in ("optuna", "esc_optuna"))
            for case, args in EXAMPLE_CASES.items()}


def describe_comparison(compared: dict[str, tuple[list, list]]) -> list[str]:
    lines = []
    for case, (official, esc) in compared.items():
        if official == esc:
            lines.append(f"  same trials: {case} ({len(official)} trials)")
        else:
            first = next((i for i, (a, b) in enumerate(zip(official, esc)) if a != b), min(len(official), len(esc)))
            lines.append(f"  DIFFERENT: {case}: first at trial {first}: "
                         f"official {official[first:first + 1]}, esc_optuna {esc[first:first + 1]}")
    return lines


# ---------------------------------------------------------------- tests

_results: dict[str, SuiteResult] = {}


def _result(sweeper: str, tmp_path_factory: pytest.TempPathFactory) -> SuiteResult:
    if sweeper not in _results:
        try:
            _results[sweeper] = run(sweeper, tmp_path_factory.mktemp(f"official-suite-{sweeper}"))
        except Unavailable as err:
            pytest.skip(str(err))
    return _results[sweeper]


def test_official_suite_on_official_sweeper(tmp_path_factory):
    """Control: the unmodified suite on hydra-optuna-sweeper itself."""
    control = _result("optuna", tmp_path_factory)
    print(control.report())
    assert control.outcomes, control.output[-4000:]
    unexpected = control.failed - set(KNOWN_ASSET_DRIFT)
    assert not unexpected, f"the official sweeper fails its own suite here:\n{control.report()}"


def test_official_suite_on_esc_optuna(tmp_path_factory):
    """esc_optuna passes every test of the official suite that the official sweeper passes."""
    control = _result("optuna", tmp_path_factory)
    esc = _result("esc_optuna", tmp_path_factory)
    print(control.summary())
    print(esc.report())
    assert set(esc.outcomes) == set(control.outcomes), "the two runs collected different tests"
    forgiven = {t for t in control.failed & set(KNOWN_ASSET_DRIFT)
                if DRIFT_SIGNATURE[t] in control.messages.get(t, "") and DRIFT_SIGNATURE[t] in esc.messages.get(t, "")}
    unexpected = esc.failed - forgiven
    assert not unexpected, (
        f"esc_optuna fails {len(unexpected)} official test(s) (control: {control.summary()}):\n{esc.report()}"
    )
    # Every test the official sweeper passes, esc_optuna passes; none is skipped on one side only.
    assert control.ids("passed") <= esc.ids("passed")
    assert esc.ids("skipped") == control.ids("skipped")


def test_official_examples_give_the_same_trials_on_esc_optuna(tmp_path_factory):
    """Same example, same seed: esc_optuna's trials are the official sweeper's, in order."""
    try:
        compared = compare_examples(tmp_path_factory.mktemp("same-seed"))
    except Unavailable as err:
        pytest.skip(str(err))
    lines = describe_comparison(compared)
    print("\n".join(lines))
    for case, (official, esc) in compared.items():
        expected = 8 if case == "grid" else EXAMPLE_TRIALS  # the test grid has 2 x 2 x 2 points
        assert len(official) == expected, (case, official)
    assert all(official == esc for official, esc in compared.values()), "\n".join(lines)


# ---------------------------------------------------------------- command line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sweeper", choices=["both", "optuna", "esc_optuna"], default="both")
    parser.add_argument("--keep", type=Path, help="extract and run here, and keep it (default: a temp folder)")
    parser.add_argument("-v", "--verbose", action="store_true", help="print the inner pytest output")
    parser.add_argument("--compare", action="store_true",
                        help="also run the official examples with both sweepers on one seed and compare their trials")
    args = parser.parse_args(argv)
    sweepers = ["optuna", "esc_optuna"] if args.sweeper == "both" else [args.sweeper]
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="official-optuna-suite-"))
    results = []
    compared: dict[str, tuple[list, list]] = {}
    try:
        for sweeper in sweepers:
            result = run(sweeper, workdir / sweeper)
            if args.verbose:
                print(result.output)
            results.append(result)
        if args.compare:
            compared = compare_examples(workdir / "compare")
    except Unavailable as err:
        print(f"SKIPPED: {err}")
        return 0
    finally:
        if args.keep is None:
            shutil.rmtree(workdir, ignore_errors=True)
    print(f"\nOfficial hydra-optuna-sweeper {OFFICIAL_VERSION} suite ({SUITE}):")
    for result in results:
        print(result.report())
    drift = [t for t in KNOWN_ASSET_DRIFT if any(t in r.failed for r in results)]
    for test in drift:
        print(f"  (known asset drift, fails on both: {test}: {KNOWN_ASSET_DRIFT[test]})")
    if compared:
        print(f"\nOfficial examples, seed 123, {EXAMPLE_TRIALS} trials, optuna vs esc_optuna:")
        print("\n".join(describe_comparison(compared)))
    bad = [r for r in results if r.failed - set(KNOWN_ASSET_DRIFT)]
    different = [case for case, (official, esc) in compared.items() if official != esc]
    return 1 if bad or different else 0


if __name__ == "__main__":
    sys.exit(main())
