"""The `pccore recipe check|show` command."""

from __future__ import annotations

import argparse
import sys

from pccore.core.errors import UsageError
from pccore.recipe.load import load_recipe
from pccore.recipe.render import recipe_to_toml, render_value
from pccore.recipe.schema import COMPONENT_KINDS


def recipe_command(args: argparse.Namespace) -> int:
    """`pccore recipe check RECIPE` validates and prints one OK line; `show` prints the resolved TOML."""
    recipe = load_recipe(args.recipe, args.overrides or ())
    if args.recipe_command == "show":
        sys.stdout.write(recipe_to_toml(recipe))
        return 0
    if args.recipe_command == "check":
        parts = ", ".join(f"{section} {getattr(recipe, section).name}" for section in COMPONENT_KINDS)
        print(f"OK {args.recipe} ({recipe.run.name}): {parts}; {recipe.inference.steps} inference steps, "
              f"{recipe.train.epochs} epochs, seeds {render_value(recipe.run.seeds)}")
        return 0
    raise UsageError(f"unknown recipe action {args.recipe_command!r}; choose check or show")
