from rupq.dataloaders.transforms.classification import IMAGENET_MEAN, IMAGENET_STD, imagenet_train, imagenet_val

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "imagenet_train", "imagenet_val"]
