"""Alignment: global steps (features, random search, SimpleITK) and their pipeline."""
