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
    precision_schedule(recipe)          the precision table pi[t][l] (`pccore schedule --json`)
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
    Component, hookimpl                 what a plugin registers (see docs/plugins.md)

Errors a user can cause raise pccore.errors.PccoreError subclasses whose message says what to change.
"""

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
from pccore.components import Component
from pccore.diagnose import diagnose_batch
from pccore.engine import PCEngine, StepOutput
from pccore.errors import PccoreError
from pccore.figures import plot_depth, plot_diagnosis, plot_schedule, save_png
from pccore.hookspecs import hookimpl
from pccore.recipe import Recipe

__version__ = "0.2.0"

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
