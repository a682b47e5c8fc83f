"""Image classification with distillation: loss terms from `vitkd.losses`, teachers live or cached."""
