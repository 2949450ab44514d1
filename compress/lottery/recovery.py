"""The run dir's files for ``LotteryRun``: loaded, recovered when lost or truncated, and the derived ones written.

Every stage writes its output atomically and is skipped when that output exists; a truncated file is moved
aside (``<name>.corrupt``) and recomputed bit for bit when it can be (a ticket training is redone, a mask
recomputed from the previous round), else refused with what to delete. ``summary.json``, ``ticket.pt`` and
``report.md`` are derived from the round files and rewritten only when they differ.
"""

from __future__ import annotations

import sys
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from compress import distributed, paths
from compress.errors import UserError
from compress.io import CorruptArtifactError, load_json, load_torch, save_json, save_torch
from compress.lottery.experiment import read_result
from compress.lottery.report import write_report
from compress.lottery.summary import build_summary
from compress.recipe import recipe_to_dict
from compress.ticket import save_ticket


class RunFiles:
    """The files half of ``LotteryRun`` (which provides ``run_dir``, ``device``, ``search``, ``recipe``,
    ``begin``, ``init_state``, ``shape``, ``run_ticket``, ``_place_search`` and ``_level_start``)."""

    # -- files that can be recomputed -----------------------------------------------------------
    def _load(self, path: Path, recompute: Callable[[], None] | None = None, also: tuple[Path, ...] = ()):
        """Load a run file; a truncated one is moved aside (with ``also``) and recomputed when possible."""
        try:
            return load_torch(path, map_location=self.device)
        except CorruptArtifactError as error:
            if recompute is None or not distributed.is_main() or distributed.active():
                raise UserError(f"{error}; delete it and run the same command again to recompute it") from None
            for stale in (path, *also):
                if stale.exists():
                    stale.replace(stale.with_name(stale.name + ".corrupt"))
            print(f"warning: {error}; moved aside as {path.name}.corrupt and recomputing it", file=sys.stderr)
            recompute()
            return load_torch(path, map_location=self.device)

    def _retrain(self, round_index: int) -> Callable[[], None]:
        """Redo the ticket training of ``round_index`` (bit for bit what the run did the first time)."""
        def redo() -> None:
            folder = paths.round_dir(self.run_dir, round_index)
            for name in (paths.RESULT, paths.FINAL, paths.CHECKPOINT):
                (folder / name).unlink(missing_ok=True)
            self.run_ticket(round_index, self.masks_for_round(round_index))
        return redo

    def _saved_init(self, generated: dict) -> dict:
        """``rewind_to: 0`` rewinds to the initial weights: saved once (``init.pt``) and read back on a resume,
        so a resume never depends on regenerating them from the seed (another torch may draw others)."""
        path = self.run_dir / paths.INIT
        if path.exists():
            saved = self._load(path)
            return {key: value.to(generated[key].device) if key in generated else value for key, value in saved.items()}
        if distributed.is_main() and not (self.lock is not None and self.lock.read_only):
            save_torch({key: value.detach().cpu() for key, value in generated.items()}, path)
        return generated

    def rewind_state(self) -> dict:
        if self.begin == 0:
            return self.init_state
        return self._load(self.run_dir / paths.REWIND, recompute=self._retrain(0))

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
            try:
                return load_torch(mask_path, map_location=self.device)
            except CorruptArtifactError as error:
                if round_index > 0 and not (paths.round_dir(self.run_dir, round_index - 1) / paths.FINAL).exists():
                    raise UserError(f"{error}; delete {mask_path.parent} and run again to recompute it") from None
                mask_path.replace(mask_path.with_name(mask_path.name + ".corrupt"))
                print(f"warning: {error}; moved aside and recomputed from the previous round", file=sys.stderr)
        early_bird = paths.round_dir(self.run_dir, round_index - 1) / paths.EARLY_BIRD
        if round_index > 0 and early_bird.exists():  # the previous round's converged draw (You et al. 2020)
            masks = {name: mask.to(self.device) for name, mask in load_torch(early_bird)["masks"].items()}
        elif round_index == 0:
            masks = {name: torch.ones_like(mask) for name, mask in self.search.masks.items()}
        else:
            previous = paths.round_dir(self.run_dir, round_index - 1)
            trained = self._load(previous / paths.FINAL, recompute=self._retrain(round_index - 1),
                                 also=(previous / paths.RESULT,))
            # the search stands where the previous round ended, then takes the same transition a user's
            # loop takes: prune the trained weights (and rewind, which the ticket then starts from)
            self._place_search(round_index - 1, _masks_in(trained, self.search.names), self.recipe.train.iterations)
            self.search.model.load_state_dict(trained)
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")  # every round's, not only the first of each message
                self.search.prune_and_rewind()
            self._keep_mask_warnings(round_index, caught)
            masks = self.search.masks
        if (mask_path.parent / paths.RESULT).exists():  # a finished round whose mask.pt was lost: restore it
            save_torch({name: mask.cpu() for name, mask in masks.items()}, mask_path)
        return masks

    def _keep_mask_warnings(self, round_index: int, caught: list[warnings.WarningMessage]) -> None:
        """Show them as ever, and keep them beside the round: a mask a scorer computed another way (GraSP's
        finite-difference fallback) or ranked by ties (uniform scores) says so in summary.json."""
        for warning in caught:
            warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno)
        path = paths.round_dir(self.run_dir, round_index) / paths.MASK_WARNINGS
        messages = list(dict.fromkeys(str(warning.message) for warning in caught))
        if messages:
            save_json(messages, path)
        else:
            path.unlink(missing_ok=True)

    def mask_warnings(self, round_index: int) -> list[str]:
        path = paths.round_dir(self.run_dir, round_index) / paths.MASK_WARNINGS
        return load_json(path) if path.exists() else []

    def _finished(self, round_index: int) -> bool:
        names = ["ticket", *(self.recipe.lottery.controls if round_index > 0 else ())]
        return all(read_result(paths.experiment_dir(self.run_dir, round_index, name) / paths.RESULT) is not None
                   for name in names)

    def write_summary(self, rounds: list[dict]) -> dict:
        summary = build_summary(self.recipe, rounds)
        chosen = next(entry for entry in rounds if entry["round"] == summary["ticket"]["round"])
        summary_path = self.run_dir / paths.SUMMARY
        written = (summary_path.exists() and (self.run_dir / paths.TICKET).exists()
                   and (self.run_dir / paths.REPORT).exists() and _json_or_none(summary_path) == summary)
        if not written:  # a finished run on read-only media reruns without writing
            self.save_ticket(chosen)
            save_json(summary, summary_path)
            write_report(self.run_dir, summary, self.recipe)
        return summary

    def save_ticket(self, chosen: dict) -> None:
        folder = paths.round_dir(self.run_dir, chosen["round"])
        masks = load_torch(folder / paths.MASK)
        trained = self._load(folder / paths.FINAL, recompute=self._retrain(chosen["round"]),
                             also=(folder / paths.RESULT,))
        # folded (pruned entries exactly zero): each loads into a fresh, unpruned model as it is
        self._level_start(chosen["round"], masks)
        rewind_state = _cpu(self.search.folded_state_dict())
        self.search.model.load_state_dict(trained)
        save_ticket(self.run_dir / paths.TICKET, model_config={**recipe_to_dict(self.recipe)["model"]},
                    shape=self.shape, masks={k: v.cpu() for k, v in masks.items()},
                    rewind_state=rewind_state, trained_state=_cpu(self.search.folded_state_dict()),
                    info={**chosen, "recipe": self.recipe.name})


def _masks_in(state: dict, names: list[str]) -> dict:
    """The mask buffers of a pruned model's state dict, by module name."""
    return {name: state[f"{name}.weight_mask" if name else "weight_mask"] for name in names}


def _json_or_none(path: Path):
    """A run file derived from the round files (``summary.json``): None when empty or cut, so it is rewritten."""
    try:
        return load_json(path)
    except (ValueError, UnicodeDecodeError):
        return None


def _cpu(state: dict) -> dict:
    return {key: value.cpu() for key, value in state.items()}
