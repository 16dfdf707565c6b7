"""GGUF files: the validating reader (reader.py: the format, trusting nothing) and the model
schema (schema.py: which architecture, hyper-parameters and tensors a file holds)."""
from .constants import FILE_TYPES, GGML_TYPES, ValueType
from .reader import GGUFFile, TensorInfo, read_metadata
from .schema import SUPPORTED_ARCHS, HParams, validate_model

__all__ = ["FILE_TYPES", "GGML_TYPES", "GGUFFile", "TensorInfo", "ValueType", "read_metadata", "HParams",
           "validate_model", "SUPPORTED_ARCHS"]
