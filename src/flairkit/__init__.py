"""flairkit: read FLAIR-HUB, train multimodal land-cover and crop-type models, map France."""

__version__ = "0.1.0"
