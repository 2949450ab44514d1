"""One experiment of a reproduction suite (a shipped recipe, overrides, seeds) and where its run dirs go.

A leaf of ``compress.reproduce``: the suite and the round-interleaved runner both use it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
RECIPES = REPO / "recipes"
# Without it every run dir would try an ONNX export of its ticket: not what is being measured here.
NO_EXPORT = ("export.onnx=false",)


@dataclass(frozen=True)
class Experiment:
    """One row of the reproduction: a shipped recipe plus --set-style overrides, over several seeds."""

    name: str
    title: str
    recipe: str
    overrides: tuple[str, ...]
    seeds: tuple[int, ...]
    budget: str
    paper: str = ""
    extra: dict = field(default_factory=dict)

    def overrides_for(self, seed: int) -> list[str]:
        return [*self.overrides, *NO_EXPORT, f"seed={seed}"]

    def iterations(self) -> int:
        """Iterations per training (the early-stop budget), as the recipe and overrides resolve it."""
        from compress.recipe import load_recipe

        return load_recipe(RECIPES / self.recipe, overrides=self.overrides_for(self.seeds[0])).train.iterations

    def command(self, seed: int, runs_root: Path) -> str:
        """The equivalent single-run command line, for the record."""
        sets = " ".join(f"--set '{item}'" for item in self.overrides_for(seed))
        return (f"python tools/find_ticket.py --recipe recipes/{self.recipe} {sets} "
                f"--out {run_dir(runs_root, self.name, seed)}")


def run_dir(runs_root: Path, experiment: str, seed: int) -> Path:
    return Path(runs_root) / experiment / f"seed{seed}"
