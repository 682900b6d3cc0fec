"""Where the model's weights come from, torch-free: `files.py` (a pipeline's files in a folder or under
`blob://CONTAINER/PREFIX`, read by ranged reads, with an ETag cache; `WeightsSource`, the plain values
the engine reads them with), `manifest.py` (a prepared model's manifest, checked before any weight is
read) and `stages.py` (the stages of a cold start, for /healthz, progress and the cold-start metric)."""
