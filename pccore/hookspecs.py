"""Deprecated: `pccore.hookspecs` moved to `pccore.core.hookspecs`; plugins import from `pccore.plugin`.

Kept as a thin re-export so that third-party plugins written against pccore 0.2 keep working.
"""

import importlib
import warnings

warnings.warn(
    "pccore.hookspecs is deprecated: import from pccore.plugin (plugins) or pccore.core.hookspecs",
    DeprecationWarning,
    stacklevel=2,
)
_moved = importlib.import_module("pccore.core.hookspecs")
globals().update({k: v for k, v in vars(_moved).items() if not k.startswith("__")})
