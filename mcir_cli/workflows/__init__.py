"""Commands that orchestrate the layers below: compare, study (units, shards, submit),
demo, restore, data degrade, and the visual sources that re-run models for pictures."""
