"""Mechanism layers, one per file. Importing this package imports (and so registers) them all."""

import importlib
import pkgutil

for _m in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_m.name}")
