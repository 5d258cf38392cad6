"""Training: the plain loop (:mod:`.loop`), one phase of epochs (:mod:`.phase`), and
what runs around it as callbacks (:mod:`.callbacks`, :mod:`.checkpointing`)."""

from .callbacks import (
    Callback,
    CallbackList,
    EarlyStopping,
    EpochEndHook,
    History,
    InputWait,
    Interruption,
    ProgressReport,
    TrainingInterrupted,
    stateful,
)
from .checkpointing import Checkpoint, ResumeFromCheckpoint
from .loop import (
    SCHEDULES,
    EpochStats,
    Evaluation,
    Objective,
    Runtime,
    create_scheduler,
    evaluate,
    train_one_epoch,
)
from .phase import PhaseConfig, PhaseData, PhaseResult, PhaseState, fit_phase

__all__ = [
    "SCHEDULES",
    "Callback",
    "CallbackList",
    "Checkpoint",
    "EarlyStopping",
    "EpochEndHook",
    "EpochStats",
    "Evaluation",
    "History",
    "InputWait",
    "Interruption",
    "Objective",
    "PhaseConfig",
    "PhaseData",
    "PhaseResult",
    "PhaseState",
    "ProgressReport",
    "ResumeFromCheckpoint",
    "Runtime",
    "TrainingInterrupted",
    "create_scheduler",
    "evaluate",
    "fit_phase",
    "stateful",
    "train_one_epoch",
]
