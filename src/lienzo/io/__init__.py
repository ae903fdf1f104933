"""Checkpoint readers and writers, family detection and key maps."""

from lienzo.io.checkpoints import format_for_path, read_model, write_model
from lienzo.io.detect import detect_checkpoint_family, detect_folder_family
from lienzo.io.formats import read_safetensors_metadata, read_state_dict, write_safetensors
from lienzo.io.model_files import ModelFiles

__all__ = [
    "ModelFiles",
    "detect_checkpoint_family",
    "detect_folder_family",
    "format_for_path",
    "read_model",
    "read_safetensors_metadata",
    "read_state_dict",
    "write_model",
    "write_safetensors",
]
