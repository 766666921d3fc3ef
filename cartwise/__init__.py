"""cartwise: a declarative, feature-store-centric recommender for online shops.

The package holds the command line (`cartwise.cli`), the orchestration that
needs both pipelines and serving (`cartwise.demo`, `cartwise.batch`) at the
top, and at the bottom the typed config (`cartwise.config`) and the bundle
format (`cartwise.bundle`) every layer shares.
"""
import os as _os

# TFRS needs Keras 2 (tf-keras); this must be set before TensorFlow is imported.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

__version__ = "0.1.0"
