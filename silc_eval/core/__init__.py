"""Leaves every layer may use: errors, atomic io, paths, schema checks, logging, hashing, provenance, torchrun."""
