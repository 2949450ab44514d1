"""The full IMP experiment behind ``tools/find_ticket.py``: rounds, controls, run dir, resume.

Every stage writes its output atomically and is skipped when that output exists, so running the
same command again after a kill resumes: finished experiments are skipped, an interrupted one
continues from its last checkpoint, and masks come out identical to an uninterrupted run.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from tqdm.auto import tqdm

from compress import distributed, paths
from compress.data import load_dataset
from compress.errors import UserError
from compress.io import load_json, save_json, save_text, save_torch
from compress.lottery.experiment import RESULT_FIELDS, run_experiment
from compress.lottery.report import write_report
from compress.lottery.search import LotterySearch
from compress.lottery.ticket import save_ticket
from compress.models import build_model
from compress.pruning import plain_state_dict, random_masks_like
from compress.recipe import Recipe, dump_recipe, recipe_hash, recipe_to_dict
from compress.runtime import resolve_device, seed_everything, set_threads

REINIT_SEED_STRIDE = 10_007


def default_run_dir(recipe: Recipe, base: Path = Path("runs")) -> Path:
    """Derived from the settings: the same recipe always lands in the same folder (and resumes)."""
    return Path(base) / f"{recipe.name}-{recipe_hash(recipe)}"


def prepare_run_dir(recipe: Recipe, run_dir: Path) -> Path:
    """Create the run dir with the resolved recipe, or check that an existing one holds this recipe."""
    run_dir = Path(run_dir)
    recorded = run_dir / paths.RECIPE
    text = dump_recipe(recipe)
    if recorded.exists():
        if recorded.read_text() != text:
            raise UserError(f"{run_dir} holds a run of a different recipe ({recorded}); pass another --out "
                             "or delete that folder")
    elif distributed.is_main():
        save_text(text, recorded)
    if distributed.is_main():
        # a kill -9 in the middle of an atomic write leaves its temporary file behind (the target is intact)
        for stale in run_dir.rglob(".*.tmp"):
            stale.unlink(missing_ok=True)
    distributed.barrier()
    return run_dir


def choose_ticket(rounds: list[dict], tolerance: float) -> dict:
    """The sparsest round whose early-stop test accuracy is within ``tolerance`` of the dense round."""
    dense = rounds[0]["early_stop_test_accuracy"]
    eligible = [entry for entry in rounds if entry["early_stop_test_accuracy"] >= dense - tolerance]
    return min(eligible, key=lambda entry: entry["weights_remaining"])


def ticket_rule(tolerance: float) -> str:
    return (f"the sparsest round whose early-stop test accuracy is within {tolerance * 100:.2f} points "
            "of the dense round (round 0)")


class LotteryRun:
    """Owns data, model factory and the run dir for one recipe."""

    def __init__(self, recipe: Recipe, run_dir: Path | None = None, progress: bool = True, where=None) -> None:
        self.recipe = recipe
        self.run_dir = prepare_run_dir(recipe, run_dir or default_run_dir(recipe))
        self.progress = progress
        self.device = resolve_device(recipe.train.device)
        set_threads()  # COMPRESS_THREADS pins torch's threads (e.g. 1 per process when seeds run in parallel)
        seed_everything(recipe.seed)
        self.data = load_dataset(recipe.data, recipe.seed, self.device)
        self.search = LotterySearch(self.make_model(recipe.seed), recipe, where)
        self.init_state = plain_state_dict(self.search.model)
        self.begin = recipe.lottery.rewind_to

    @property
    def shape(self) -> dict:
        return {"num_classes": self.data.num_classes, "in_channels": self.data.in_channels,
                "image_size": self.recipe.data.image_size or self.data.image_size}

    def make_model(self, seed: int | None = None) -> torch.nn.Module:
        model = build_model(self.recipe.model, self.data.num_classes, self.data.in_channels,
                            self.recipe.data.image_size or self.data.image_size, seed=seed)
        return model.to(self.device)

    # -- stages ---------------------------------------------------------------------------------
    def rewind_state(self) -> dict:
        if self.begin == 0:
            return self.init_state
        return torch.load(self.run_dir / paths.REWIND, map_location=self.device, weights_only=False)

    def masks_for_round(self, round_index: int) -> dict:
        """Computed (or read) on rank 0 only, then broadcast and verified identical on every rank."""
        masks = self._masks_for_round(round_index) if distributed.is_main() else self.search.masks
        masks = distributed.broadcast_masks(masks)
        if distributed.active():
            print(f"[rank {distributed.rank()}/{distributed.world_size()}] round {round_index} masks verified "
                  f"identical, checksum {distributed.mask_checksum(masks).item():.1f}", file=sys.stderr)
        return masks

    def _masks_for_round(self, round_index: int) -> dict:
        mask_path = paths.round_dir(self.run_dir, round_index) / paths.MASK
        if mask_path.exists():
            return {k: v.to(self.device) for k, v in torch.load(mask_path, weights_only=False).items()}
        if round_index == 0:
            return {name: torch.ones_like(mask) for name, mask in self.search.masks.items()}
        previous = paths.round_dir(self.run_dir, round_index - 1) / paths.FINAL
        self.search.model.load_state_dict(torch.load(previous, map_location=self.device, weights_only=False))
        self.search.level = round_index - 1
        return self.search.next_masks()

    def run_round(self, round_index: int) -> dict:
        masks = self.masks_for_round(round_index)
        folder = paths.round_dir(self.run_dir, round_index)
        on_step = self._save_rewind_point if round_index == 0 and self.begin > 0 else None
        start = self.init_state if round_index == 0 else self.rewind_state()
        entry = {"round": round_index}
        ticket = run_experiment(folder, make_model=self.make_model, start_state=start, masks=masks,
                                recipe=self.recipe, data=self.data, begin=0 if round_index == 0 else self.begin,
                                desc=f"round {round_index} ticket", progress=self.progress, on_step=on_step)
        entry.update({key: ticket[key] for key in ("weights_remaining", "macs_remaining", *RESULT_FIELDS)})
        if round_index > 0:
            entry["controls"] = {name: self.run_control(name, round_index, masks, start)
                                 for name in self.recipe.lottery.controls}
        return entry

    def _save_rewind_point(self, iteration: int, model: torch.nn.Module) -> None:
        """During the dense round, keep the weights at iteration ``rewind_to`` (atomic, once)."""
        target = self.run_dir / paths.REWIND
        if iteration == self.begin and not target.exists() and distributed.is_main():
            save_torch(plain_state_dict(model), target)

    def run_control(self, name: str, round_index: int, masks: dict, start: dict) -> dict:
        folder = paths.experiment_dir(self.run_dir, round_index, name)
        seed = self.recipe.seed + REINIT_SEED_STRIDE * round_index + 1
        if name == "reinit":
            start = plain_state_dict(self.make_model(seed))
        elif name == "random_prune":
            masks = random_masks_like({k: v.cpu() for k, v in masks.items()}, torch.Generator().manual_seed(seed))
            masks = distributed.broadcast_masks({k: v.to(self.device) for k, v in masks.items()})
        result = run_experiment(folder, make_model=self.make_model, start_state=start, masks=masks,
                                recipe=self.recipe, data=self.data, begin=self.begin,
                                desc=f"round {round_index} {name}", progress=self.progress)
        return {key: result[key] for key in ("weights_remaining", "macs_remaining", *RESULT_FIELDS)}

    # -- the whole run --------------------------------------------------------------------------
    def run(self) -> dict:
        rounds: list[dict] = []
        total = self.search.rounds + 1
        main = distributed.is_main()
        bar = tqdm(range(total), desc=self.recipe.name, disable=not self.progress or not main, unit="round")
        summary: dict = {}
        for round_index in bar:
            entry = self.run_round(round_index)
            rounds.append(entry)
            if main:
                summary = self.write_summary(rounds)
                tqdm.write(self._round_line(entry))
            bar.set_postfix(remaining=f"{entry['weights_remaining']:.3f}", refresh=False)
        bar.close()
        distributed.barrier()
        return summary if main else {"rounds": rounds}

    def _round_line(self, entry: dict) -> str:
        line = (f"round {entry['round']:2d}  remaining {entry['weights_remaining'] * 100:6.2f}%  "
                f"ticket acc {entry['early_stop_test_accuracy']:.4f} (early stop @ {entry['early_stop_iteration']})")
        for name, control in entry.get("controls", {}).items():
            line += f"  {name} {control['early_stop_test_accuracy']:.4f}"
        return line

    def write_summary(self, rounds: list[dict]) -> dict:
        tolerance = self.recipe.lottery.ticket_tolerance
        chosen = choose_ticket(rounds, tolerance)
        summary = {"name": self.recipe.name, "recipe_hash": recipe_hash(self.recipe), "rounds": rounds,
                   "ticket": {"round": chosen["round"], "weights_remaining": chosen["weights_remaining"],
                              "early_stop_test_accuracy": chosen["early_stop_test_accuracy"],
                              "rule": ticket_rule(tolerance)}}
        self.save_ticket(chosen)
        save_json(summary, self.run_dir / paths.SUMMARY)
        write_report(self.run_dir, summary, self.recipe)
        return summary

    def save_ticket(self, chosen: dict) -> None:
        folder = paths.round_dir(self.run_dir, chosen["round"])
        masks = torch.load(folder / paths.MASK, map_location="cpu", weights_only=False)
        self.search.model.load_state_dict(torch.load(folder / paths.FINAL, map_location=self.device,
                                                     weights_only=False))
        trained = {k: v.cpu() for k, v in plain_state_dict(self.search.model).items()}
        start = self.init_state if chosen["round"] == 0 else self.rewind_state()
        save_ticket(self.run_dir / paths.TICKET, model_config=recipe_to_dict(self.recipe)["model"],
                    shape=self.shape, masks=masks, rewind_state={k: v.cpu() for k, v in start.items()},
                    trained_state=trained, info={**chosen, "recipe": self.recipe.name})


def find_ticket(recipe: Recipe, out: Path | None = None, progress: bool = True, where=None) -> dict:
    """Run (or resume) the lottery-ticket search of ``recipe``; returns the summary."""
    distributed.init_from_env()
    run = LotteryRun(recipe, out, progress, where)
    summary = run.run()
    summary["run_dir"] = str(run.run_dir)
    return summary


def read_summary(run_dir: Path) -> dict:
    path = Path(run_dir) / paths.SUMMARY
    if not path.exists():
        raise UserError(f"{run_dir}: no {paths.SUMMARY} (not a finished or started run dir)")
    return load_json(path)
