"""Catalog entries: what a dataset is, where it lives, and how to ingest it (``catalog/*.yaml``)."""

from neurobridge.catalog.entry import AnyEntry, CatalogEntry, CatalogError
from neurobridge.catalog.kinds import (
    AlfEntry,
    ChannelRange,
    DandiConfig,
    DataladSource,
    EcephysCache,
    NwbEntry,
    NwbOptions,
    OneConfig,
    PileConfig,
    PileEntry,
    TvsdConfig,
    TvsdEntry,
    TvsdFiles,
)
from neurobridge.catalog.load import catalog_dir, load_catalog, load_file, parse_entries, resolve
from neurobridge.catalog.options import IngestConfig, Selection, SourceStorage, SplitConfig, UnitRule, WindowConfig

__all__ = [
    "AlfEntry",
    "AnyEntry",
    "CatalogEntry",
    "CatalogError",
    "ChannelRange",
    "DandiConfig",
    "DataladSource",
    "EcephysCache",
    "IngestConfig",
    "NwbEntry",
    "NwbOptions",
    "OneConfig",
    "PileConfig",
    "PileEntry",
    "Selection",
    "SourceStorage",
    "SplitConfig",
    "TvsdConfig",
    "TvsdEntry",
    "TvsdFiles",
    "UnitRule",
    "WindowConfig",
    "catalog_dir",
    "load_catalog",
    "load_file",
    "parse_entries",
    "resolve",
]
