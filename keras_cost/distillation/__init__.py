"""distillation."""
