"""Training: optimizer/schedule from the recipe, the loop, evaluation."""

from compress.training.evaluate import evaluate
from compress.training.loop import TrainingDiverged, TrainResult, train
from compress.training.optim import build_optimizer, build_schedule, lr_factor

__all__ = ["TrainResult", "TrainingDiverged", "build_optimizer", "build_schedule", "evaluate", "lr_factor", "train"]
