"""pccore: a plugin-based PyTorch framework for training deep predictive coding networks.

The Python API (the command line `pccore` runs on the same functions):

Recipes
    load_recipe(source, overrides)      a checked Recipe from a TOML path, a dict or a Recipe
    train(recipe, overrides, ...)       train as `pccore run` does; returns the summary dict
    resume(run_dir)                     continue an interrupted run (`pccore run --resume`)
    load_engine(run_dir)                the trained engine of a run (best or last checkpoint)

Your own blocks
    make_engine(blocks, num_classes=..., precision=..., update=..., normalization=..., ...)
                                        a PCEngine around a list of nn.Module blocks; call
                                        engine.train_step(x, y), then your optimizer's step()
    PCEngine, StepOutput                the engine and what its training step returns

Looking inside
    precision_schedule(recipe)          the precision table `pi[t][l]` (`pccore schedule --json`)
    diagnose_recipe(recipe)             one batch's energies per step and cosines to backprop
    diagnose_batch(engine, x, y)        the same for your engine and batch
    benchmark(recipe)                   step time and memory against backprop (`pccore bench --json`)

Experiments at scale
    search_study(study_file)            an Optuna search (`pccore tune`); returns the study's summary
    sweep_recipes(recipes, out=...)     every recipe for every seed, one process each (`pccore sweep`)
    report_runs(run_dirs)               the paper's table shape as data (`pccore report --json`)

Figures (pip install "pccore[plot]")
    plot_diagnosis(report), plot_schedule(schedule), plot_depth(report) -> matplotlib Figure;
    save_png(figure, path)

Plugins
    Component, hookimpl                 what a plugin registers; plugins import them, and every other
                                        name they need, from `pccore.plugin` (see docs/plugins.md)

Errors a user can cause raise pccore.PccoreError subclasses whose message says what to change.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

from pccore.core.version import __version__

# name -> the module that defines it; each is imported on first use (PEP 562), so that `import pccore`
# (and so `pccore --help`) loads no torch, Optuna, TensorBoard or matplotlib.
_LAZY = {
    "benchmark": "pccore.api",
    "diagnose_recipe": "pccore.api",
    "load_engine": "pccore.api",
    "load_recipe": "pccore.api",
    "make_engine": "pccore.api",
    "precision_schedule": "pccore.api",
    "report_runs": "pccore.api",
    "resume": "pccore.api",
    "search_study": "pccore.api",
    "sweep_recipes": "pccore.api",
    "train": "pccore.api",
    "Component": "pccore.core.components",
    "diagnose_batch": "pccore.inspect.diagnose",
    "PCEngine": "pccore.core.engine",
    "StepOutput": "pccore.core.engine",
    "PccoreError": "pccore.core.errors",
    "plot_depth": "pccore.inspect.figures",
    "plot_diagnosis": "pccore.inspect.figures",
    "plot_schedule": "pccore.inspect.figures",
    "save_png": "pccore.inspect.figures",
    "hookimpl": "pccore.core.hookspecs",
    "Recipe": "pccore.recipe",
}

# Old module paths that third-party plugins may import: kept as thin re-exports that warn.
_MOVED = {"components": "pccore.core.components", "hookspecs": "pccore.core.hookspecs"}

__all__ = [
    "Component",
    "PCEngine",
    "PccoreError",
    "Recipe",
    "StepOutput",
    "__version__",
    "benchmark",
    "diagnose_batch",
    "diagnose_recipe",
    "hookimpl",
    "load_engine",
    "load_recipe",
    "make_engine",
    "plot_depth",
    "plot_diagnosis",
    "plot_schedule",
    "precision_schedule",
    "report_runs",
    "resume",
    "save_png",
    "search_study",
    "sweep_recipes",
    "train",
]


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value  # later lookups skip this function
        return value
    if name in _MOVED:
        return importlib.import_module(f"pccore.{name}")
    raise AttributeError(f"module 'pccore' has no attribute '{name}'")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})


if TYPE_CHECKING:  # what static checkers and IDEs see: the same names, eagerly
    from pccore.api import (
        benchmark,
        diagnose_recipe,
        load_engine,
        load_recipe,
        make_engine,
        precision_schedule,
        report_runs,
        resume,
        search_study,
        sweep_recipes,
        train,
    )
    from pccore.core.components import Component
    from pccore.core.engine import PCEngine, StepOutput
    from pccore.core.errors import PccoreError
    from pccore.core.hookspecs import hookimpl
    from pccore.inspect.diagnose import diagnose_batch
    from pccore.inspect.figures import plot_depth, plot_diagnosis, plot_schedule, save_png
    from pccore.recipe import Recipe
