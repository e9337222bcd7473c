"""Shared task machinery: prompt ensembling, sliding windows, segmentation metrics, trained heads, probes."""
