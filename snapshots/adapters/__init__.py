"""LoRA adapters in the snapshot store, next to the model they were trained for.

    <store>/<model>/adapters/<name>/adapter.json                   commit marker, written last
    <store>/<model>/adapters/<name>/<push-id>/adapter_config.json  the PEFT config
    <store>/<model>/adapters/<name>/<push-id>/adapter_model.safetensors

One file per role:
    errors.py    AdapterError and its subclasses (all SnapshotErrors)
    layout.py    the layout above, adapter names (no ':'), push ids
    peft.py      a PEFT LoRA dir checked and described (config + safetensors header; no torch)
    record.py    adapter.json: AdapterInfo / AdapterBase, encode and the checked decode
    base.py      does an adapter fit a base: at push (the base's snapshot config), `check_base`
    transfer.py  one file to or from the store, hashed on the way (xxh3_64)
    store.py     AdapterStore: push, list, names, get, rm, fetch, gc
    fetch.py     the node's verified copy (adapter_cache_root)
    gc.py        removing the push dirs of pushes that died

No Ray, vLLM or torch here.
"""
from .base import check_base
from .errors import AdapterBaseMismatch, AdapterCorrupt, AdapterError, AdapterExists, AdapterNotFound
from .fetch import adapter_cache_root
from .record import AdapterBase, AdapterInfo
from .store import AdapterStore

__all__ = ["AdapterBase", "AdapterBaseMismatch", "AdapterCorrupt", "AdapterError", "AdapterExists", "AdapterInfo",
           "AdapterNotFound", "AdapterStore", "adapter_cache_root", "check_base"]
