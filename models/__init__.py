"""models"""
import os as _os

# TFRS needs Keras 2 (tf-keras); set before TensorFlow is imported anywhere below.
_os.environ.setdefault("TF_USE_LEGACY_KERAS", "1")
_os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
