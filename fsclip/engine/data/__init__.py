"""Datasets, transforms, samplers and the DataManager."""
