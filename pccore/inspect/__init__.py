"""Looking inside a recipe without training it: `pccore bench`, `schedule`, `diagnose` and the figures
they draw. Imports the core, recipes, runs and `pccore.parallel`."""
