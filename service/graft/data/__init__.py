"""Datasets: resolving a DatasetRef to local files, uploads, scanning and checking images,
splitting, and THE preprocessing shared by training and Predict. See docs/DATA.md."""

from graft.data.dataset import ImageDataset
from graft.data.images import ImageDecodeError, load_image
from graft.data.resolve import locate_dataset, open_dataset, resolve_dataset
from graft.data.scan import Sample, ScannedDataset, scan_dataset
from graft.data.split import split_dataset
from graft.data.transforms import eval_transform, train_transform
from graft.data.uploads import UploadInfo, UploadReceiver, check_upload, save_upload

__all__ = [
    "ImageDataset",
    "ImageDecodeError",
    "Sample",
    "ScannedDataset",
    "UploadInfo",
    "UploadReceiver",
    "check_upload",
    "eval_transform",
    "load_image",
    "locate_dataset",
    "open_dataset",
    "resolve_dataset",
    "save_upload",
    "scan_dataset",
    "split_dataset",
    "train_transform",
]
