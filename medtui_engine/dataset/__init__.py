"""The data set workbench's engine: load, map, validate, measure, preview and split cases."""

from .findings import ERROR, INFO, KINDS, WARNING, Finding
from .load import Case, FieldMapping, LoadedDataset, load_cases, mapping_from, split_cases, split_record
from .report import ValidationReport
from .validate import DEFAULT_MAX_SEQ_LENGTH, validate_file, validate_loaded

__all__ = [
    "Case", "FieldMapping", "LoadedDataset", "load_cases", "mapping_from", "split_cases", "split_record",
    "ValidationReport", "validate_file", "validate_loaded", "DEFAULT_MAX_SEQ_LENGTH", "Finding", "KINDS", "ERROR", "WARNING", "INFO",
]
