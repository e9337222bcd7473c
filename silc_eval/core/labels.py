"""Label-map conventions shared by the readers, the producers and the segmentation metrics (mmseg's)."""

IGNORE_INDEX = 255  # pixels with this label count in no metric and no loss
# The ignore value of label sets with more than 255 classes (ADE-847, PC-459), where 255 is a class: stored in
# 16-bit label maps, as detectron2's registrations of ADE20K-full and Pascal Context-459 do (SAN, CAT-Seg).
WIDE_IGNORE_INDEX = 65535


def ignore_index_for(num_classes: int) -> int:
    """Return the ignore label of a label set of num_classes classes: 255, or 65535 when 255 is itself a class."""
    return IGNORE_INDEX if num_classes <= IGNORE_INDEX else WIDE_IGNORE_INDEX
