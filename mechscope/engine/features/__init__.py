"""Sparse dictionaries (SAEs) on a model's sites: load, train, evaluate, read and edit features."""
