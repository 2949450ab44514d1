"""The recipe schema: frozen dataclasses whose field metadata carries the help text.

Key paths (``train.optimizer.lr``) are a contract shared by the YAML files, ``--set`` overrides,
tools and users' code. The loader (``compress.recipe.loader``) validates types and ranges.

A field marked ``results=False`` (where files go, which device, what is exported) cannot change
trained weights or accuracies; ``recipe_hash`` leaves it out, so changing it keeps the run dir.
"""

from __future__ import annotations

from dataclasses import MISSING, dataclass, field
from typing import Any

LAYER_KINDS = ("conv", "linear", "output")
SCOPES = ("layerwise", "global")
STRATEGIES = ("imp", "at_init")
RETRAINS = ("rewind", "lr_rewind", "finetune")
GRANULARITIES = ("weight", "channel")
OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("constant", "step", "cosine")
DEVICES = ("auto", "cpu", "cuda")
# experiment trackers (compress.tracking registers one logger under each name)


def field_default(f: Any) -> Any:
    """A dataclass field's default value (a fresh one for ``default_factory``), or ``dataclasses.MISSING``."""
    if f.default is not MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not MISSING else MISSING


def doc(text: str, *, results: bool = True, **kwargs: Any) -> Any:
    """A dataclass field with help text (``field(metadata={"help": ..., "results": ...})``).

    ``results=False``: the field cannot change training results, so it is left out of the run hash.
    """
    return field(metadata={"help": text, "results": results, **kwargs.pop("metadata", {})}, **kwargs)


@dataclass(frozen=True)
class ModelConfig:
    name: str = doc("registered model name (compress.list_models()) or timm/<name>", default="lenet300_100")
    num_classes: int | None = doc("output classes; null = taken from the dataset", default=None)
    pretrained: bool = doc("timm only: load pretrained weights (must already be cached locally)", default=False)
    kwargs: dict[str, Any] = doc("extra keyword arguments for the model factory", default_factory=dict)


@dataclass(frozen=True)
class DataConfig:
    name: str = doc("dataset name (compress.list_datasets())", default="fashion_mnist")
    root: str | None = doc("data folder or tarball; null = $COMPRESS_DATA, then the user cache", default=None,
                           results=False)
    validation_size: int = doc("examples held out of the training set for early stopping", default=5000)
    augment: bool = doc("CIFAR-style random crop (pad 4) + horizontal flip during training", default=False)
    image_size: int | None = doc("resize images to this side (e.g. for timm models); null = native", default=None)
    train_subset: int | None = doc("use only the first N training examples (after the split); null = all",
                                   default=None)
    test_subset: int | None = doc("evaluate on a seeded random N of the test set (quick smoke runs); "
                                  "null = all", default=None)
    download: bool = doc("let torchvision download missing files when the network allows", default=True,
                         results=False)


@dataclass(frozen=True)
class OptimizerConfig:
    name: str = doc(f"one of {', '.join(OPTIMIZERS)}", default="adam")
    lr: float = doc("learning rate", default=1.2e-3)
    momentum: float = doc("SGD momentum", default=0.0)
    nesterov: bool = doc("SGD Nesterov momentum", default=False)
    weight_decay: float = doc("L2 weight decay", default=0.0)


@dataclass(frozen=True)
class ScheduleConfig:
    name: str = doc(f"learning-rate schedule: one of {', '.join(SCHEDULES)}", default="constant")
    warmup: int = doc("linear warm-up iterations", default=0)
    milestones: tuple[int, ...] = doc("step schedule: iterations at which lr is multiplied by gamma",
                                      default=())
    gamma: float = doc("step schedule factor", default=0.1)


@dataclass(frozen=True)
class TrainConfig:
    iterations: int = doc("training budget per round, in iterations (optimizer steps)", default=3000)
    batch_size: int = doc("examples per iteration", default=60)
    optimizer: OptimizerConfig = doc("optimizer settings", default_factory=OptimizerConfig)
    schedule: ScheduleConfig = doc("learning-rate schedule", default_factory=ScheduleConfig)
    eval_every: int = doc("evaluate validation and test sets every N iterations", default=100)
    eval_batch_size: int = doc("batch size for evaluation", default=1000)
    checkpoint_every: int = doc("write a resumable checkpoint every N iterations", default=500, results=False)
    device: str = doc(f"one of {', '.join(DEVICES)} (auto = CUDA when present)", default="auto", results=False)
    bf16: bool = doc("bf16 autocast for training and evaluation, on CUDA or the CPU (fast where the CPU has "
                     "bf16 instructions, e.g. AVX512_BF16 / AMX; slow elsewhere)", default=False)
    compile: bool = doc("wrap the model in torch.compile for training (masks stay on the module it wraps)",
                        default=False, results=False)
    channels_last: bool = doc("channels_last memory format for the model and 4-D inputs, on CUDA or the CPU "
                              "(convolutions: Conv-2 trains ~1.3x faster on an AVX-512 CPU)", default=False)
    sync_batchnorm: bool = doc("under torchrun, convert BatchNorm to SyncBatchNorm so N processes match one", default=True)
    log: tuple[str, ...] = doc(
        "experiment trackers, registered loggers (compress.registry.LOGGERS: tensorboard, csv, mlflow, wandb, or "
        "a plugin's; [] = none): per-iteration loss and lr, every "
        "evaluation, per-round weights / MACs remaining, each ticket and control its own run, written into the "
        "run dir (tensorboard --logdir runs/; mlflow: a local file store <run dir>/mlruns unless "
        "MLFLOW_TRACKING_URI is set; wandb: offline unless WANDB_MODE is set)",
        default=("tensorboard",), results=False)


@dataclass(frozen=True)
class PruneConfig:
    method: str = doc("a registered pruning method (compress.registry.PRUNING_METHODS: magnitude, random) or "
                      "at-init scorer (SCORERS: snip, grasp, synflow, random_erk), or a plugin's", default="magnitude")
    scope: str = doc(f"one of {', '.join(SCOPES)}; global pools all parameters that share a rate", default="layerwise")
    granularity: str = doc(f"one of {', '.join(GRANULARITIES)}", default="weight")
    global_normalize: bool = doc(
        "scope global only: divide each layer's scores (each channel group's, on any graph) by their mean over "
        "its survivors before ranking the pool, so layers of different fan-in compete on one scale (as "
        "Torch-Pruning does); false ranks raw |w| across layers, as the lottery-ticket paper's global pruning, "
        "where small-fan-in layers (larger weights) keep more", default=False)
    rates: dict[str, float] = doc(
        "fraction of surviving weights pruned per round, by layer kind (conv / linear / output) "
        "or by selector; a selector key wins over a kind",
        default_factory=lambda: {"conv": 0.1, "linear": 0.2, "output": 0.1},
    )
    output: str | None = doc(
        "selector of the output layer (the classifier: role output, rates.output, @classifier); "
        "null = inferred (timm's get_classifier(), else the last Linear / 1x1 conv that feeds no other; "
        "ambiguity is an error naming the candidates)",
        default=None,
    )
    keep: tuple[str, ...] = doc(
        "selectors of modules never pruned: a glob on the module name (a parent module covers its "
        "children, e.g. head), 're:<regex>', 'type:<ClassName>', '@stem' or '@classifier' (quoted in YAML)",
        default=(),
    )
    exclude: tuple[str, ...] = doc("older name of prune.keep; both lists are never pruned", default=())
    channel_multiple: Any = doc(
        "granularity channel: every pruned width (channels, hidden units, heads) a multiple of this int >= 1 "
        "(the kept count rounded to the nearest multiple, never below it); 'auto' = onnxruntime's block on "
        "this CPU: 16 with AVX-512, 8 with AVX2, else 1",
        default=1,
    )
    score_batches: int = doc("lottery.strategy at_init with snip / grasp / synflow: the first N training batches "
                             "(train.batch_size each) the scorer reads (synflow only their shape)", default=1)


@dataclass(frozen=True)
class EarlyBirdConfig:
    every: int = doc("early-bird tickets (You et al. 2020): every N steps of a level, draw the mask the next "
                     "prune would give; 0 = off", default=0)
    distance: float = doc("a level's mask has converged when the normalised Hamming distance between "
                          "consecutive draws stays below this", default=0.1)
    patience: int = doc("consecutive draws below distance that end the level's search", default=3)


@dataclass(frozen=True)
class LotteryConfig:
    rounds: int = doc("pruning rounds after the dense round (round 0)", default=5)
    rewind_to: int = doc("iteration whose weights survivors are rewound to; 0 = the original init", default=0)
    strategy: str = doc("imp (train, prune, rewind, repeat) or at_init (each round's mask scored at the "
                        "initialization by prune.method, at that round's density, then trained once)",
                        default="imp")
    retrain: str = doc(f"imp: how each pruned round retrains (Renda et al. 2020): {', '.join(RETRAINS)}; rewind = "
                       "weights and schedule back to rewind_to; lr_rewind = trained weights kept, schedule from "
                       "rewind_to; finetune = trained weights kept, final learning rate for the same steps",
                       default="rewind")
    early_bird: EarlyBirdConfig = doc("early-bird mask draws during each level (imp)",
                                      default_factory=EarlyBirdConfig)
    controls: tuple[str, ...] = doc("control experiments per round, registered controls (compress.registry.CONTROLS): "
                                    "reinit, random_prune, shuffle (permutes each layer's mask), invert (keeps the "
                                    "lowest-scored weights), or a plugin's", default=())
    one_shot: bool = doc("prune to the final sparsity in one step after the dense round", default=False)
    ticket_tolerance: float = doc(
        "winning ticket = the sparsest round whose early-stop validation accuracy (test accuracy when "
        "data.validation_size is 0) is within this fraction of the dense round's (0.005 = 0.5 points)",
        default=0.005,
    )
    executor: str = doc(
        "where each round's control trainings run while the ticket chain goes on: inline (one process, in "
        "order), local[:N] (N trainings at a time: this process's ticket chain plus N-1 worker processes; "
        "controls wait for a free one), ray[:N] (Ray tasks), or auto (local:2 for CPU runs with controls, 2+ "
        "cores and 1000+ iterations, inline otherwise); with the same torch threads per training the results "
        "are identical bit for bit",
        default="auto", results=False)


QAT_MODES = ("auto", "off", "on")


@dataclass(frozen=True)
class ExportConfig:
    onnx: bool = doc("export the winning ticket to ONNX and verify it with onnxruntime", default=True,
                     results=False)
    compact: bool = doc("also export an exactly compacted model (dead units removed)", default=False,
                        results=False)
    opset: int = doc("ONNX opset version", default=17, results=False)
    preprocess: str = doc("metadata or embed: record the input normalisation (mean, std, "
                          "shape, classes) in the ONNX metadata_props, or embed it in the graph, which then "
                          "takes pixel / 255", default="metadata", results=False)
    quantize: str = doc("none, int8, int8-static or int8-dynamic: also write an int8 ticket (onnxruntime "
                        "quantization, symmetric per-channel weights); int8 = dynamic for Linear-only nets, "
                        "static QDQ otherwise", default="none", results=False)
    calibration_size: int = doc("training images that calibrate static int8 activations", default=256,
                                results=False)
    qat: str = doc(f"one of {', '.join(QAT_MODES)}: quantization-aware fine-tuning of the ticket before the "
                   "int8 export; auto = only when post-training int8 loses more than qat_tolerance",
                   default="auto", results=False)
    qat_tolerance: float = doc("accuracy (a fraction; 0.005 = 0.5 points) post-training int8 may lose against "
                               "fp32 before qat: auto fine-tunes", default=0.005, results=False)
    qat_iterations: int = doc("fake-quant fine-tuning iterations (masks kept)", default=300, results=False)


@dataclass(frozen=True)
class Recipe:
    name: str = doc("experiment name; the default run dir is runs/<name>-<hash>", default="experiment",
                    results=False)  # already part of the folder name
    seed: int = doc("seed for init, data split and order", default=0)
    model: ModelConfig = doc("the network", default_factory=ModelConfig)
    data: DataConfig = doc("the dataset", default_factory=DataConfig)
    train: TrainConfig = doc("the training loop", default_factory=TrainConfig)
    prune: PruneConfig = doc("what is pruned each round and how", default_factory=PruneConfig)
    lottery: LotteryConfig = doc("iterative magnitude pruning with rewinding", default_factory=LotteryConfig)
    export: ExportConfig = doc("export of the winning ticket", default_factory=ExportConfig)
