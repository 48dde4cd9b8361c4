"""Quality-control figures: orthogonal mid-slices, overlays, checkerboards, block maps, fields.

Every function returns a matplotlib Figure drawn outside pyplot (nothing to show or close) and
can also write it as a PNG. matplotlib is optional (``pip install 'lazyreg[plot]'``): this
package imports without it, and each function raises a clear error when it is missing.

* :mod:`lazyreg.plot.images`: :func:`orthoslices`, :func:`overlay`, :func:`checkerboard`;
* :mod:`lazyreg.plot.fields`: :func:`field_slices`;
* :mod:`lazyreg.plot.reports`: :func:`block_map`;
* :mod:`lazyreg.plot.viewer`: :func:`napari_layers`, :func:`view_in_napari` (images, field and
  block report as napari layers in physical space; napari itself is optional);
* :mod:`lazyreg.plot.figures`: what they share (figures, PNG files, mid-planes, display ranges).
"""

from .fields import field_slices
from .images import checkerboard, orthoslices, overlay
from .reports import block_map
from .viewer import napari_layers, view_in_napari

__all__ = ["orthoslices", "overlay", "checkerboard", "block_map", "field_slices", "napari_layers", "view_in_napari"]
