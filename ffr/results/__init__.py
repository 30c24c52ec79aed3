"""Results for people: the grid's tables (:mod:`~ffr.results.tables`: selection by validation WGA,
mean ± std in Markdown and CSV), the group table and HTML reports (:mod:`~ffr.results.views`) and
the PNG plots (:mod:`~ffr.results.plots`)."""
