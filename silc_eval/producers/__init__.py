"""Producers beside the flows: they write datasets (SynthScenes; COCO-Object, ADE-847 and PC-459 label maps from
the releases' own annotations); nothing reads through them."""
