"""One dense training shared by a suite's run dirs, where each experiment would train the same one again.

Round 0 of a lottery run is the dense training. It depends on the model, the data, the training, the seed and
the rewind point, not on the keys that act only after it (``AFTER_ROUND_0``: how the later rounds prune, how
they retrain, which controls run). The methods suite runs ~25 experiments per model and seed that differ only
there (open_lth shares a trunk between branches the same way). Before a run starts, ``adopt_trunk`` copies the
finished round 0 of another run dir of the suite with the same seed and ``trunk_key`` (and the rewind point that
round saved), and the run resumes from it as from its own round 0: the same files a killed run leaves.
``round_00/trunk.json`` records where it came from. ``tests/reproduce/test_trunks.py`` checks that a run built
on an adopted round 0 equals, bit for bit, one that trained it.
"""

from __future__ import annotations

import hashlib
import json
import secrets
import shutil
import sys
from pathlib import Path

import yaml

from compress import paths
from compress.io import load_json, save_bytes, save_json
from compress.lottery.rundir import IDENTITY
from compress.recipe import Recipe, recipe_from_dict, result_fields, results_hash

# (section, key): what only the rounds after the dense one read
AFTER_ROUND_0 = (("lottery", "rounds"), ("lottery", "one_shot"), ("lottery", "controls"), ("lottery", "strategy"),
                 ("lottery", "retrain"), ("prune", "method"))
TRUNK = "trunk.json"


def trunk_key(recipe: Recipe) -> str:
    """16 hex digits over ``result_fields(recipe)`` without ``AFTER_ROUND_0``: equal keys, equal round 0."""
    fields = result_fields(recipe)
    for section, key in AFTER_ROUND_0:
        fields.get(section, {}).pop(key, None)
    text = json.dumps(fields, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _recorded_recipe(run_dir: Path) -> Recipe | None:
    try:
        return recipe_from_dict(yaml.safe_load((run_dir / paths.RECIPE).read_text()))
    except Exception:  # noqa: BLE001 -- a run dir of another version or a damaged one is just not a donor
        return None


def find_trunk(recipe: Recipe, run_dir: Path, runs_root: Path) -> Path | None:
    """A run dir under ``runs_root`` (``<experiment>/<seed dir>``) with the same seed dir and key whose round 0
    is finished (and whose rewind point is saved, when the recipe rewinds past 0); None if there is none."""
    key, run_dir = trunk_key(recipe), Path(run_dir).resolve()
    for candidate in sorted(Path(runs_root).glob(f"*/{run_dir.name}")):
        if candidate.resolve() == run_dir or not (paths.round_dir(candidate, 0) / paths.RESULT).exists():
            continue
        if recipe.lottery.rewind_to > 0 and not (candidate / paths.REWIND).exists():
            continue
        donor = _recorded_recipe(candidate)
        if donor is not None and trunk_key(donor) == key:
            return candidate
    return None


def adopt_and_report(recipe: Recipe, run_dir: Path, runs_root: Path, label: str) -> None:
    """``adopt_trunk``, saying on stderr which run the round 0 of ``label`` came from."""
    donor = adopt_trunk(recipe, run_dir, runs_root)
    if donor is not None:
        print(f"{label}: round 0 (dense) adopted from {donor.parent.name}: the same training "
              "(compress.reproduce.trunks)", file=sys.stderr, flush=True)


def adopt_trunk(recipe: Recipe, run_dir: Path, runs_root: Path) -> Path | None:
    """Copy a matching finished round 0 into ``run_dir`` (when its own is not finished); returns the donor.

    The copied ``identity.json`` names this run's recipe and keeps the donor's data and torch, so a round 0 made
    from other data is still refused when the run resumes. Round 0 arrives whole or not at all (a folder
    renamed into place last), so a kill here leaves a run that simply trains its own.
    """
    run_dir = Path(run_dir)
    target = paths.round_dir(run_dir, 0)
    if (target / paths.RESULT).exists():
        return None
    donor = find_trunk(recipe, run_dir, runs_root)
    if donor is None:
        return None
    run_dir.mkdir(parents=True, exist_ok=True)
    for name in (paths.INIT, paths.REWIND):
        if (donor / name).exists() and not (run_dir / name).exists():
            save_bytes((donor / name).read_bytes(), run_dir / name)
    partial = run_dir / f".{target.name}.{secrets.token_hex(4)}.adopting"
    shutil.copytree(paths.round_dir(donor, 0), partial)
    identity = load_json(partial / IDENTITY)
    save_json({**identity, "recipe": results_hash(recipe)}, partial / IDENTITY)
    save_json({"adopted_from": str(donor.resolve()), "trunk_key": trunk_key(recipe)}, partial / TRUNK)
    if target.exists():  # an unfinished round 0 of this run (a kill mid-training): the finished one replaces it
        shutil.rmtree(target)
    partial.rename(target)
    return donor
