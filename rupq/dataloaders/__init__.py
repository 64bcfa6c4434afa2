"""Dataloader tags: one file per dataset."""

from rupq.dataloaders.base import DataModule
from rupq.dataloaders.coco import COCODataloader
from rupq.dataloaders.div2k import DIV2KDataloader
from rupq.dataloaders.fashion_mnist import FashionMNISTDataloader
from rupq.dataloaders.imagenet import ImageNet2012Dataloader
from rupq.dataloaders.set14 import Set14Dataloader

__all__ = ["COCODataloader", "DataModule", "DIV2KDataloader", "FashionMNISTDataloader", "ImageNet2012Dataloader", "Set14Dataloader"]
