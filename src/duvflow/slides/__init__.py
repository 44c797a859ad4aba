"""Whole-slide images: reading, tissue detection, tiling, the packed patch store, demo cohort."""
