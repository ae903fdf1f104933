"""Key and config maps between checkpoint layouts."""
