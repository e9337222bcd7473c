"""Dataset readers for real on-disk layouts, the SynthScenes world and training pairs."""
