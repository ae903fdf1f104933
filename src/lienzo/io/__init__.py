"""Checkpoint readers and writers, family detection and key maps."""
