"""Hyperparameter search with Optuna (`pccore tune`): study files, storages, workers, results.

The modules, by responsibility: `study` (the study file and its checks against the recipe), `storage`
(Optuna storages named by one string, heartbeats, lost trials), `worker` (one worker process running
trials), `results` (summary.json, best.toml, `tune show`, figures) and `command` (the command line).
This package's own namespace imports nothing heavy, so that building the command-line parser stays fast.
"""

DEFAULT_GRACE_PERIOD = 120
"""Seconds without a heartbeat after which a running trial counts as lost (its worker killed or cut off)."""
