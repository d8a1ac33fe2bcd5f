"""napari plugin: open a xanestrack output folder as layers.

Installed with ``pip install xanestrack[napari]`` and found by napari through the npe2
manifest ``napari.yaml`` (entry point ``napari.manifest``). The reader builds plain
layer-data tuples with numpy and h5py; nothing here imports napari, so the core package
and its tests never need it.
"""

from ._reader import get_reader, read_output

__all__ = ["get_reader", "read_output"]
