"""The GPU room: what renders jobs in this process, and the only room that imports `engine/` at run time.

- runner.py: `JobRunner` loads the engine once per process and renders jobs on it, writing each image and
  its records to the store; the local queue and the GPU worker both run jobs through it.
- engine_thread.py: the one thread every call that touches the model runs on.
- heap.py: freed heap handed back to the OS between jobs.
- worker.py: `noisett-mcp worker`, a GPU worker on the Azure queue, with its own health app.

The front reaches a runner only through `jobs.base.Runner`; whoever composes the service hands the
`JobRunner` to the local queue as a `jobs.base.JobExecutor`.
"""
