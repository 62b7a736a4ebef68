"""Converters from other demonstration formats into the zarr replay-buffer layout.

    convert_lerobot(src_dir, out)       LeRobotDataset v2.0/v2.1/v3.0 (parquet + mp4)  -> zarr   (pyarrow, av)
    convert_robomimic(src_hdf5, out)    robomimic hdf5 (data/demo_<i>/obs, actions)     -> zarr   (h5py)

The readers are optional (``pip install "diffpolicy[convert]"``) and imported only when a converter runs. Outputs
are written atomically and refused if they exist unless ``overwrite=True``; sources are only read.
"""

from diffpolicy.data.convert.lerobot import convert_lerobot
from diffpolicy.data.convert.robomimic import convert_robomimic

__all__ = ["convert_lerobot", "convert_robomimic"]
