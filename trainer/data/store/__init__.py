"""The on-disk feature store (issue 12): data decoded once, in parallel, read by training without
decoding or holding it in memory.

    layout    the on-disk format: file names, recipe, shards, rows, durable writes, manifest
    reader    FeatureStore.open(store_dir) and its splits (os.pread, a small LRU of open files)
    changes   a store's summary as a run records it, and what changed between two stores
    prepare   prepare(cfg, ...) and store_status(cfg): the parallel decoding (imported on first use)

layout, reader and changes are numpy + stdlib only (no torch).
"""
import importlib
import sys
import types

from .changes import describe_change, recipe_changes, summary
from .layout import ItemKey, StoreError, StorePaths
from .reader import FeatureStore, StoreSplit

__all__ = ["FeatureStore", "ItemKey", "StoreError", "StorePaths", "StoreSplit", "describe_change", "prepare", "recipe_changes",
           "store_status", "summary"]



class _Package(types.ModuleType):
    """`prepare` and `store_status` are the functions of the prepare module, imported on first use
    (they need the decoders, hence torch). The module is named `prepare` too, and importing a
    submodule sets it as its package's attribute: these properties keep the names on the
    functions whichever is imported first."""

    @property
    def prepare(self):
        return importlib.import_module(f"{__name__}.prepare").prepare

    @prepare.setter
    def prepare(self, _module) -> None:
        pass

    @property
    def store_status(self):
        return importlib.import_module(f"{__name__}.prepare").store_status


sys.modules[__name__].__class__ = _Package
