"""Generations: the lifecycle, a run's pipeline, parser, validation, providers."""
