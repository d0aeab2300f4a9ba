"""Pictures: previews, montages and plots, drawn from arrays (numpy and matplotlib only).

A task describes its montage as :class:`PanelSpec` values (what to show, in which window);
:func:`draw_panels` turns them into images, for training previews and evaluation montages alike.
A :class:`ReviewSpec` says what the review notebook adds (:mod:`medp2p.viz.review`: three planes
at true aspect, a strip of slices, a slice browser, histograms).

Example:
    >>> from medp2p.viz import PanelSpec, draw_panels
    >>> spec = (PanelSpec("CT (HU)", "reference", "hu"),)
    >>> save_preview("ct.png", draw_panels(spec, {"reference": ct.array}, z=40))
"""

from medp2p.viz.panels import (
    HU_DIFF_DISPLAY,
    HU_DISPLAY,
    Panel,
    PanelSpec,
    display_window,
    draw_panels,
    middle_slice,
    panel_images,
    save_preview,
)
from medp2p.viz.review import ReviewSpec, ReviewVolumes

__all__ = [
    "HU_DIFF_DISPLAY",
    "HU_DISPLAY",
    "Panel",
    "PanelSpec",
    "ReviewSpec",
    "ReviewVolumes",
    "display_window",
    "draw_panels",
    "middle_slice",
    "panel_images",
    "save_preview",
]
