"""Dataloader tags: one file per dataset."""

from rupq.dataloaders.base import DataModule
from rupq.dataloaders.fashion_mnist import FashionMNISTDataloader
from rupq.dataloaders.imagenet import ImageNet2012Dataloader

__all__ = ["DataModule", "FashionMNISTDataloader", "ImageNet2012Dataloader"]
