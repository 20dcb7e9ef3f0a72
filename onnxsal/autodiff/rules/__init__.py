"""Backward rules by op family; importing a module registers its rules (see ..registry)."""
