"""Training tags: the task and its loops."""

from rupq.tools.training.detection import ObjectDetectionTrainingLoop
from rupq.tools.training.loops import TrainingLoop
from rupq.tools.training.task import Task

__all__ = ["ObjectDetectionTrainingLoop", "Task", "TrainingLoop"]
