"""Checkpoint readers and writers, family detection and key maps."""

from .checkpoints import format_for_path, read_model, write_model
from .detect import detect_checkpoint_family, detect_folder_family
from .formats import read_safetensors_metadata, read_state_dict, write_safetensors
from .model_files import ModelFiles

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
