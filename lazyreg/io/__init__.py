"""Reading and writing images and transforms: N5, zarr, OME-Zarr, TIFF, transform files."""
