"""The `pccore recipe check|show` command: a recipe validated, its model built on the meta device and
measured, or the resolved recipe printed."""

from __future__ import annotations

import argparse
import json
import sys

from pccore.core.errors import UsageError
from pccore.recipe import COMPONENT_KINDS, load_recipe, recipe_to_toml
from pccore.recipe.render import render_value
from pccore.run.assemble import model_summary


def recipe_command(args: argparse.Namespace) -> int:
    """`pccore recipe check RECIPE` validates the recipe, builds its components and its model on the meta
    device, and prints one OK line and one line on the model (L and its exact parameter count), or, with
    --json, both as one JSON object; `show` prints the resolved TOML."""
    recipe = load_recipe(args.recipe, args.overrides or ())
    if args.recipe_command == "show":
        sys.stdout.write(recipe_to_toml(recipe))
        return 0
    if args.recipe_command == "check":
        model = model_summary(recipe)
        if getattr(args, "json", False):
            print(json.dumps({
                "recipe": str(args.recipe),
                "name": recipe.run.name,
                "components": {section: getattr(recipe, section).name for section in COMPONENT_KINDS},
                "inference_steps": recipe.inference.steps,
                "epochs": recipe.train.epochs,
                "seeds": list(recipe.run.seeds),
                "model": model.to_dict(),
            }, indent=2))
            return 0
        parts = ", ".join(f"{section} {getattr(recipe, section).name}" for section in COMPONENT_KINDS)
        print(f"OK {args.recipe} ({recipe.run.name}): {parts}; {recipe.inference.steps} inference steps, "
              f"{recipe.train.epochs} epochs, seeds {render_value(recipe.run.seeds)}")
        print(model.text())
        return 0
    raise UsageError(f"unknown recipe action {args.recipe_command!r}; choose check or show")
