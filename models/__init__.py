"""TensorFlow Recommenders towers and models (no Feast, no file I/O).

Feature names and vocabularies are arguments; `pipelines/train_retrieval.py`
feeds them. Importing this package selects Keras 2 (tf-keras), which TFRS needs.
"""
import os as _os

_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
