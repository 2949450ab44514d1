"""``tools/reproduce.py --suite methods``: IMP against the cheap alternatives, at equal budgets.

Every method is an ordinary run dir (``compress.reproduce.suite.Experiment``), so the suite runs, resumes and
parallelises like the full one. Chained methods (IMP reset / rewind / early-bird / lr_rewind / finetune) run
all their rounds once and are read at the rounds that reach the target densities; one-step methods (one-shot
magnitude after training, and the pruning-at-init scorers) get one run per target density
(``lottery.one_shot``: a dense round, then one pruned round at that density).
"""

from __future__ import annotations

from dataclasses import dataclass

from compress.reproduce.experiment import Experiment

SEEDS = (0, 1, 2)
AT_INIT = ("snip", "grasp", "synflow", "random_erk", "magnitude")
CONTROLS = "lottery.controls=[reinit, shuffle]"
# the sparsity at which the invert control also runs (Frankle et al. 2021 invert at one sparsity)
INVERT_ROUND = {"lenet300": 12, "conv2": 7}


@dataclass(frozen=True)
class Model:
    key: str
    title: str
    recipe: str
    base: tuple[str, ...]
    targets: dict[int, str]  # rounds of the recipe's rates -> the nominal fraction of weights left
    rewind_to: int
    budget: str


def models(cifar_root: str) -> list[Model]:
    # the full suite's CPU budgets; a step schedule (x0.1 at 70%) so finetune (final lr) differs from
    # lr_rewind (schedule replayed), as in Renda et al. 2020 -- with a constant lr the two are the same run
    schedule = ("train.schedule.name=step", "train.schedule.milestones=[700]", "train.schedule.gamma=0.1")
    lenet = Model("lenet300", "LeNet-300-100 on Fashion-MNIST", "lth_lenet300_fashion.yaml",
                  ("train.iterations=1000", "train.eval_every=100", "train.checkpoint_every=1000", *schedule),
                  {3: "51%", 7: "21%", 12: "6.9%", 15: "3.6%"}, 50,
                  "1,000 iterations of batch 60 per training, Adam 1.2e-3 x0.1 at 700, validation 5,000")
    conv_schedule = ("train.schedule.name=step", "train.schedule.milestones=[350]", "train.schedule.gamma=0.1")
    conv2 = Model("conv2", "Conv-2 on CIFAR-10 (JPEG copy)", "lth_conv2.yaml",
                  (f"data.root={cifar_root}", "train.iterations=500", "train.eval_every=250",
                   "train.checkpoint_every=250", *conv_schedule),
                  {3: "51%", 7: "21%", 11: "9%"}, 25,
                  "500 iterations of batch 60 per training, Adam 2e-4 x0.1 at 350, evaluated every 250")
    return [lenet, conv2]


def method_experiments(model: Model, seeds: tuple[int, ...] = SEEDS) -> list[Experiment]:
    """Every (method, target) experiment of one model; ``extra`` says how to read each one."""
    last = max(model.targets)
    k = f"lottery.rewind_to={model.rewind_to}"
    chained = {
        # IMP's own reinit / random-prune controls at every round are the full suite's (reproduction/);
        # here the controls go to the one-step methods, where Frankle et al. 2021 ask the question
        "imp_reset": ("IMP, reset to init", ()),
        "imp_rewind": (f"IMP, rewind to {model.rewind_to}", (k,)),
        "imp_early_bird": ("IMP + early-bird (reset)", ("lottery.early_bird.every=50", "lottery.early_bird.distance=0.1",
                                                        "lottery.early_bird.patience=3")),
        "lr_rewind": (f"IMP, lr_rewind to {model.rewind_to}", (k, "lottery.retrain=lr_rewind")),
        "finetune": ("IMP, finetune", (k, "lottery.retrain=finetune")),
    }
    experiments = []
    # the recipes' own controls (reinit, random_prune every round) would triple each chain
    chained = {method: (title, ("lottery.controls=[]", *extra)) for method, (title, extra) in chained.items()}
    for method, (title, extra) in chained.items():
        experiments.append(Experiment(
            name=f"methods_{model.key}_{method}", title=f"{model.title}: {title}", recipe=model.recipe,
            overrides=(*model.base, f"lottery.rounds={last}", *extra), seeds=seeds, budget=model.budget,
            extra={"model": model.key, "method": method, "read": "chain", "targets": dict(model.targets)}))
    one_step = {"oneshot_magnitude": ("one-shot magnitude after training", ("lottery.strategy=imp",))}
    one_step.update({f"init_{name}": (f"{name} at init", ("lottery.strategy=at_init", f"prune.method={name}"))
                     for name in AT_INIT})
    for method, (title, extra) in one_step.items():
        for rounds, label in model.targets.items():
            controls = CONTROLS if method.startswith("init_") else "lottery.controls=[]"
            if method.startswith("init_") and rounds == INVERT_ROUND[model.key]:
                controls = "lottery.controls=[reinit, shuffle, invert]"
            experiments.append(Experiment(
                name=f"methods_{model.key}_{method}_r{rounds}", title=f"{model.title}: {title} at {label}",
                recipe=model.recipe, overrides=(*model.base, f"lottery.rounds={rounds}", "lottery.one_shot=true",
                                                controls, *extra),
                seeds=seeds, budget=model.budget,
                extra={"model": model.key, "method": method, "read": "one_step", "targets": {rounds: label}}))
    return experiments


def methods_suite(cifar_root: str) -> list[Experiment]:
    """LeNet-300-100 first (cheapest), then Conv-2; within a model the cheap one-step methods come first."""
    out: list[Experiment] = []
    for model in models(cifar_root):
        found = method_experiments(model)
        out += [e for e in found if e.extra["read"] == "one_step"] + [e for e in found if e.extra["read"] == "chain"]
    return out
