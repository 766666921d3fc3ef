"""Online serving: online features -> retrieval -> response, over HTTP (FastAPI).

Loads exported bundles and the Feast online store; never imports pipelines/ or
validation/. Importing this package selects Keras 2 (tf-keras) for the towers.

It also imports `prometheus_client` before anything in serving imports
`feast` (the one place this is done). The reason: `import feast`
(feast/metrics.py) sets `PROMETHEUS_MULTIPROC_DIR` and
`PROMETHEUS_MULTIPROCESS_DIR` to a temp directory when they are unset, and
prometheus_client chooses its value storage once, when it is first imported:
imported after that, every `Counter` / `Gauge` value lives in mmap'ed files
keyed by metric name and labels, so two metric objects of one name in two
registries of one process share a value (two apps, or the override trackers
of two bundles, would count each other's requests). Imported here first, it
keeps plain in-process values; Feast's own metrics are then process-local
too, which only Feast's feature server (not used here) would notice.

The guard only helps when `serving` is imported before `feast` (a test or a
script may import `pipelines` first), so serving does not rely on it: the
app (`serving/app.py`) and the override tracker (`serving/overrides.py`)
keep their counts in their own objects and expose them through custom
collectors, which read the same in either mode. The guard is for any other
prometheus_client metric a custom source, rule or ranker may create.
"""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import prometheus_client as _prometheus_client  # noqa: E402,F401  (before feast: see above)
