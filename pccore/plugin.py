"""What a plugin author needs, and nothing more: `from pccore.plugin import Component, hookimpl, ...`.

A plugin is a module (or any object) registered in the `pccore` entry-point group whose functions carry
`@hookimpl` and are named after the hook of their kind (`pccore_register_precision`, ...; see
`pccore.core.hookspecs`). Each returns `Component` records; the object a record's factory builds
implements the protocol of its kind, listed here with the types those protocols use. This namespace
imports only `pccore.core`, so importing a plugin never loads the training loop, the search or the
figures; the names here are the stable surface plugins are written against (see docs/plugins.md).
"""

from pccore.core.components import (
    KINDS,
    Architecture,
    Augmentation,
    Component,
    Dataset,
    DataSpec,
    ImageData,
    InferenceAlgorithm,
    InferenceSettings,
    LearningBatch,
    MultiPartBlock,
    NoParams,
    NormalizationPolicy,
    Nudging,
    Phase,
    PrecisionSchedule,
    PrecisionTable,
    State,
    UpdateRule,
    WeightStep,
)
from pccore.core.engine import InferenceTrace, PCEngine
from pccore.core.errors import DatasetUnavailable, MissingDependency, PccoreError, UsageError
from pccore.core.hookspecs import hookimpl
from pccore.core.replicas import Replicas, current_replicas

__all__ = [
    "KINDS",
    "Architecture",
    "Augmentation",
    "Component",
    "DataSpec",
    "Dataset",
    "DatasetUnavailable",
    "ImageData",
    "InferenceAlgorithm",
    "InferenceSettings",
    "InferenceTrace",
    "LearningBatch",
    "MissingDependency",
    "MultiPartBlock",
    "NoParams",
    "NormalizationPolicy",
    "Nudging",
    "PCEngine",
    "PccoreError",
    "Phase",
    "PrecisionSchedule",
    "PrecisionTable",
    "Replicas",
    "State",
    "UpdateRule",
    "UsageError",
    "WeightStep",
    "current_replicas",
    "hookimpl",
]
