"""Image and text features of a model: computed in batches (sharded under torchrun) and cached on disk."""

from silc_eval.features.encode import (
                                      OrderedLoader,
                                      autocast_context,
                                      compute_image_features,
                                      encode_images,
                                      encode_instance_images,
                                      encode_texts,
                                      precision_label,
)

__all__ = ["OrderedLoader", "autocast_context", "compute_image_features", "encode_images", "encode_instance_images",
           "encode_texts", "precision_label"]
