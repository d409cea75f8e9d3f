"""A training run, top to bottom: its configuration (`config`, `checks`), its parts, one
step, the collapse guard, run state, the run folder, validation and the loop (`run`)."""
