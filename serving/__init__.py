"""Online serving: online features -> retrieval -> response, over HTTP (FastAPI).

Loads exported bundles and the Feast online store; never imports pipelines/ or
validation/. Importing this package selects Keras 2 (tf-keras) for the towers.
"""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
