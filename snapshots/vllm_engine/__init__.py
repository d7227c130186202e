"""The vLLM side of thawline snapshots, one file per role.

    plugin.py          the `vllm.general_plugins` entry point: registers the two load formats
    loader.py          load_format="thawline": a TP worker restores its rank (ThawlineLoader)
    capture_loader.py  load_format="thawline_capture": a TP worker writes its rank (ThawlineCaptureLoader)
    options.py         the loaders' `model_loader_extra_config` schemas
    parallel.py        the worker's TP position and the TP-group all-gather
    load_errors.py     the loader's failure reason, worker -> starter (EngineStartError)
    load_timing.py     the loader's per-rank timing, worker -> starter (RankLoad events)
    worker_ext.py      worker_extension_cls: thawline_engine_info over collective_rpc
    engine_state.py    engine/engine_state.json schema and the pure restore checks
    engine_dir.py      where a snapshot's engine dir lives on a node
    capture.py         make a snapshot by booting vLLM once (EngineCapture, create_engine_snapshot)
    start.py           start vLLM from a snapshot (prepare_engine_start, start_engine)

Importing this package imports nothing: vLLM loads the plugin entry point in every process it
starts, and most of these modules import vLLM only where they run inside its workers.
"""
