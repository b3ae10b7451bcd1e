"""Everything that changes upstream behaviour: CPU measures, upstream fixes, private upstream helpers."""
