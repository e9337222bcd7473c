"""Producers beside the flows: they write datasets (SynthScenes, COCO-Object label maps); nothing reads through them."""
