"""Label-map conventions shared by the readers, the producers and the segmentation metrics (mmseg's)."""

IGNORE_INDEX = 255  # pixels with this label count in no metric and no loss
