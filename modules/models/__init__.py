"""Everything that owns weights: registry, family detection, offline loaders, ModelManager."""
